//! How the console looks: the tab bar, the four tabs (sandboxes, live
//! egress, pending approvals with their details, policy diff), the status
//! and key lines, and the help and scope picker popups, drawn with ratatui
//! for any size down to 80x24. Guards the operator's terminal against the
//! sandbox: every text a sandbox chose (binary paths, hosts, paths, an
//! agent's words) is shown escaped (`visible::field`), never as control
//! characters; and without colour (`NO_COLOR`, `--no-color`) every mark is
//! still there, as text or reverse video.
#![forbid(unsafe_code)]
use crate::model::{policy_diff, short_binary, Model, Tab};
use crate::ui::{Field, Mode, Picker, Ui};
use moat_supervisor::gateway::events::Decision;
use moat_supervisor::visible::field as shown;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

/// Colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    fn head(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
    fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }
    fn alert(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
    fn decision(&self, d: Decision) -> Style {
        match d {
            Decision::Allow => self.fg(Color::Green),
            Decision::Audit => self.fg(Color::Yellow),
            Decision::Deny => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Decision::Revoke => self.fg(Color::Magenta).add_modifier(Modifier::BOLD),
        }
    }
}

fn decision_word(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Audit => "audit",
        Decision::Deny => "DENY",
        Decision::Revoke => "REVOKE",
    }
}

/// Draws the whole screen.
pub fn render(f: &mut Frame, m: &Model, ui: &Ui, t: Theme) {
    let [bar, body, status, keys] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(2), Constraint::Length(1)])
            .areas(f.area());
    tabs(f, bar, m, ui, t);
    match ui.tab {
        Tab::Sandboxes => sandboxes(f, body, m, ui, t),
        Tab::Egress => egress(f, body, m, ui, t),
        Tab::Approvals => approvals(f, body, m, ui, t),
        Tab::Policy => policy(f, body, m, ui, t),
    }
    let mut st = vec![Span::raw(shown(&m.status).into_owned())];
    if m.lagged > 0 {
        st.push(Span::styled(format!("  [{} records missed: see `moat events`]", m.lagged), t.alert()));
    }
    if m.unreadable > 0 {
        st.push(Span::styled(format!("  [{} feed lines unreadable]", m.unreadable), t.alert()));
    }
    f.render_widget(Paragraph::new(Line::from(st)).wrap(Wrap { trim: true }), status);
    f.render_widget(Paragraph::new(key_line(ui)).style(t.dim()), keys);
    match &ui.mode {
        Mode::Help => help(f, t),
        Mode::Pick(p) => picker(f, p, ui, t),
        Mode::Input(field, text) => input(f, *field, text, t),
        Mode::ConfirmDeny(sandbox, id, dest) => {
            let area = centered(f.area(), 60, 3);
            f.render_widget(Clear, area);
            let block = Block::default().borders(Borders::ALL).title(" deny ").border_style(t.head());
            let text = format!("deny {id} ({} -> {})? y: deny", shown(sandbox), shown(dest));
            f.render_widget(Paragraph::new(text).block(block), area);
        }
        Mode::Normal => {}
    }
}

fn tabs(f: &mut Frame, area: Rect, m: &Model, ui: &Ui, t: Theme) {
    let mut spans = vec![Span::styled(" moat term ", t.head())];
    for (i, tab) in Tab::ALL.iter().enumerate() {
        let count = match tab {
            Tab::Sandboxes => format!(" ({})", m.sandboxes.len()),
            Tab::Approvals => format!(" ({})", m.approval_rows().len()),
            _ => String::new(),
        };
        let label = format!(" {} {}{count} ", i + 1, tab.title());
        let style = if *tab == ui.tab {
            t.selected()
        } else if *tab == Tab::Approvals && !m.approval_rows().is_empty() {
            t.alert()
        } else {
            Style::new()
        };
        spans.push(Span::styled(label, style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn key_line(ui: &Ui) -> &'static str {
    match (&ui.mode, ui.tab) {
        (Mode::Pick(_), _) => "1-9/↑↓ scope  i addresses  w also into policy file  Enter approve  Esc cancel",
        (Mode::Input(..), _) => "type, Enter keep, Esc cancel",
        (Mode::Help, _) => "any key closes help",
        (Mode::ConfirmDeny(..), _) => "y deny   any other key: keep it pending",
        (_, Tab::Sandboxes) => "Tab/1-4 tabs  ↑↓ select  Enter policy  ? help  q quit",
        (_, Tab::Egress) => "f decision  b binary  h host  c clear  ↑↓ scroll  G newest  ? help  q quit",
        (_, Tab::Approvals) => "a approve (scope)  d deny  ↑↓ select  ? help  q quit",
        (_, Tab::Policy) => "↑↓ sandbox  PgUp/PgDn scroll  ? help  q quit",
    }
}

fn table_state(sel: usize, rows: usize) -> TableState {
    TableState::default().with_selected((rows > 0).then_some(sel))
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{}M", b >> 20),
        b => format!("{}K", b >> 10),
    }
}

fn human_secs(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn sandboxes(f: &mut Frame, area: Rect, m: &Model, ui: &Ui, t: Theme) {
    let header = Row::new(["NAME", "IMAGE", "STATE", "UPTIME", "CPU", "MEM", "REV", "PORTS"]).style(t.head());
    let rows: Vec<Row> = m
        .sandboxes
        .iter()
        .map(|s| {
            let rev = m.policies.get(&s.name).map(|p| p.revision.to_string()).unwrap_or_else(|| "-".into());
            let state = match m.disconnected.get(&s.name) {
                Some(_) if s.state == "running" => "running?".to_string(),
                _ => s.state.clone(),
            };
            Row::new([
                Cell::from(shown(&s.name).into_owned()),
                Cell::from(shown(&s.image).into_owned()),
                Cell::from(state),
                Cell::from(s.uptime_secs.map(human_secs).unwrap_or_else(|| "-".into())),
                Cell::from(s.cpu_percent.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "-".into())),
                Cell::from(s.memory_bytes.map(human_bytes).unwrap_or_else(|| "-".into())),
                Cell::from(rev),
                Cell::from(shown(&s.published.join(" ")).into_owned()),
            ])
        })
        .collect();
    let n = rows.len();
    let widths = [
        Constraint::Length(14),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Min(8),
    ];
    let table = Table::new(rows, widths).header(header).row_highlight_style(t.selected());
    let [list, note] = Layout::vertical([Constraint::Min(2), Constraint::Length(2)]).areas(area);
    f.render_stateful_widget(table, list, &mut table_state(ui.selection(m), n));
    let gone: Vec<String> = m.disconnected.iter().map(|(s, why)| format!("{}: {}", shown(s), shown(why))).collect();
    let text = if n == 0 { "no sandboxes (moat run -d ...)".to_string() } else { gone.join("; ") };
    f.render_widget(Paragraph::new(text).style(t.dim()).wrap(Wrap { trim: true }), note);
}

fn egress(f: &mut Frame, area: Rect, m: &Model, ui: &Ui, t: Theme) {
    let [filter_line, list] = Layout::vertical([Constraint::Length(1), Constraint::Min(2)]).areas(area);
    let fl = &ui.filter;
    let d = fl.decision.map(decision_word).unwrap_or("all");
    let star = |s: &str| if s.is_empty() { "*".to_string() } else { shown(s).into_owned() };
    let follow = if ui.follow { "following newest" } else { "paused (G: newest)" };
    let text = format!("filter: decision={d} binary={} host={}   {follow}", star(&fl.binary), star(&fl.host));
    f.render_widget(Paragraph::new(text).style(t.dim()), filter_line);
    // Only the rows that fit are built: the list holds thousands.
    let total = m.filtered(fl).count();
    let sel = ui.selection(m);
    let height = list.height.saturating_sub(1).max(1) as usize;
    let start = (sel + 1).saturating_sub(height);
    let rows: Vec<Row> = m
        .filtered(fl)
        .skip(start)
        .take(height)
        .map(|(s, e)| {
            let time = e.time.get(11..19).unwrap_or(&e.time).to_string();
            let what =
                if e.method.is_empty() { String::new() } else { format!("{} {}", shown(&e.method), shown(&e.path)) };
            Row::new([
                Cell::from(time),
                Cell::from(Span::styled(decision_word(e.decision), t.decision(e.decision))),
                Cell::from(shown(s).into_owned()),
                Cell::from(shown(short_binary(&e.binary)).into_owned()),
                Cell::from(shown(&format!("{}:{}", e.host, e.port)).into_owned()),
                Cell::from(what),
            ])
        })
        .collect();
    let header = Row::new(["TIME", "DEC", "SANDBOX", "BINARY", "DESTINATION", "REQUEST"]).style(t.head());
    let widths = [
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(22),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths).header(header).row_highlight_style(t.selected());
    f.render_stateful_widget(table, list, &mut table_state(sel - start, total));
}

fn approvals(f: &mut Frame, area: Rect, m: &Model, ui: &Ui, t: Theme) {
    let rows = m.approval_rows();
    let sel = ui.selection(m);
    let [list, details] = Layout::vertical([Constraint::Percentage(45), Constraint::Min(4)]).areas(area);
    let header = Row::new(["ID", "SANDBOX", "BINARY", "DESTINATION", "COUNT", "AGE"]).style(t.head());
    let now = time::OffsetDateTime::now_utc();
    let age = |rfc: &str| {
        time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339)
            .map(|at| human_secs((now - at).whole_seconds().max(0) as u64))
            .unwrap_or_else(|_| "-".into())
    };
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let p = r.pending;
            let who = if p.agent_request.is_some() { " (asked)" } else { "" };
            Row::new([
                Cell::from(p.id.clone()),
                Cell::from(shown(r.sandbox).into_owned()),
                Cell::from(format!("{}{who}", shown(short_binary(&p.binary)))),
                Cell::from(shown(&format!("{}:{}", p.host, p.port)).into_owned()),
                Cell::from(p.count.to_string()),
                Cell::from(age(&p.first_seen)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(16),
        Constraint::Min(20),
        Constraint::Length(6),
        Constraint::Length(5),
    ];
    let table = Table::new(table_rows, widths).header(header).row_highlight_style(t.selected());
    f.render_stateful_widget(table, list, &mut table_state(sel, rows.len()));
    let mut lines: Vec<Line> = Vec::new();
    let dropped = m.approvals_dropped();
    if dropped > 0 {
        lines.push(Line::styled(format!("{dropped} older entries were dropped (the list is bounded)"), t.alert()));
    }
    match rows.get(sel) {
        None => lines.push(Line::styled("nothing pending", t.dim())),
        Some(r) => {
            let p = r.pending;
            lines.push(Line::from(vec![Span::styled("binary  ", t.head()), Span::raw(shown(&p.binary).into_owned())]));
            lines.push(Line::raw(format!("sha256  {}", shown(&p.hash))));
            let chain: Vec<String> = p.ancestors.iter().map(|a| shown(short_binary(&a.binary)).into_owned()).collect();
            if !chain.is_empty() {
                lines.push(Line::raw(format!("started by  {}", chain.join(" <- "))));
            }
            lines.push(Line::raw(format!("seen {} times since {}", p.count, shown(&p.first_seen))));
            if let Some(a) = &p.agent_request {
                lines.push(Line::styled("the agent asked; in its own words (unverified):", t.alert()));
                lines.push(Line::raw(format!("  \"{}\"", shown(&a.reason))));
            }
            let seen = m.seen_requests(r.sandbox, p);
            if !seen.is_empty() {
                let s: Vec<String> = seen.iter().take(4).map(|(m, p)| format!("{m} {}", shown(p))).collect();
                lines.push(Line::raw(format!("requests refused: {}", s.join(", "))));
            }
        }
    }
    let block = Block::default().borders(Borders::TOP).title("details");
    f.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), details);
}

fn policy(f: &mut Frame, area: Rect, m: &Model, ui: &Ui, t: Theme) {
    let names = m.policy_names();
    let sel = ui.selection(m);
    let Some(name) = names.get(sel) else {
        f.render_widget(Paragraph::new("no running sandbox reported a policy yet").style(t.dim()), area);
        return;
    };
    let Some(p) = m.policies.get(*name) else { return };
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{} ", shown(name)), t.head()),
        Span::raw(format!(
            "({}/{})  revision {} in force, sha256 {}",
            sel + 1,
            names.len(),
            p.revision,
            p.sha256.get(..12).unwrap_or(&p.sha256)
        )),
    ])];
    match &p.previous {
        None => {
            lines.push(Line::styled("the first revision (nothing to compare with):", t.dim()));
            lines.extend(p.text.lines().map(|l| Line::raw(shown(l).into_owned())));
        }
        Some(prev) => {
            lines.push(Line::styled(format!("changes since revision {}:", p.revision.saturating_sub(1)), t.dim()));
            for (tag, text) in policy_diff(prev, &p.text) {
                let style = match tag {
                    '+' => t.fg(Color::Green),
                    '-' => t.fg(Color::Red),
                    _ => t.dim(),
                };
                lines.push(Line::styled(format!("{tag} {}", shown(&text)), style));
            }
        }
    }
    let scroll = ui.policy_scroll.min(lines.len().saturating_sub(1)) as u16;
    f.render_widget(Paragraph::new(lines).scroll((scroll, 0)), area);
}

/// A box of `w`x`h` in the middle of the screen (clipped to it).
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

fn help(f: &mut Frame, t: Theme) {
    let text = [
        "Tab / Shift-Tab / 1-4   switch tabs",
        "↑ ↓ j k PgUp PgDn g G   move",
        "Sandboxes: Enter        the selected one's policy",
        "Egress: f               cycle decision: all/DENY/allow/audit/REVOKE",
        "        b / h / c       filter binary / host, clear",
        "Approvals: a or Enter   approve: pick the scope",
        "           d            deny (it stays refused)",
        "Scope picker: 1-9       scope; i opt addresses in (CIDR);",
        "              w         also write the rule into the policy file",
        "Policy: ↑ ↓             sandbox; PgUp PgDn scroll",
        "q / Ctrl-C              quit (sandboxes keep running)",
    ];
    let area = centered(f.area(), 76, text.len() as u16 + 2);
    f.render_widget(Clear, area);
    let block = Block::default().borders(Borders::ALL).title(" help ").border_style(t.head());
    f.render_widget(Paragraph::new(text.map(Line::raw).to_vec()).block(block), area);
}

fn picker(f: &mut Frame, p: &Picker, ui: &Ui, t: Theme) {
    let mut lines: Vec<Line> = p
        .options
        .iter()
        .enumerate()
        .map(|(i, (what, _))| {
            let mark = if i == p.selected { ">" } else { " " };
            let line = format!("{mark} {} {}", i + 1, shown(what));
            if i == p.selected {
                Line::styled(line, t.selected())
            } else {
                Line::raw(line)
            }
        })
        .collect();
    let ips = if p.allowed_ips.is_empty() && !p.editing_ips {
        "none (private/reserved addresses stay refused)".to_string()
    } else {
        format!("{}{}", p.allowed_ips, if p.editing_ips { "_" } else { "" })
    };
    lines.push(Line::raw(""));
    lines.push(Line::raw(format!("i  allowed addresses: {ips}")));
    lines.push(Line::raw(match &ui.policy_file {
        Some(file) => format!("w  [{}] also write into {}", if p.write { "x" } else { " " }, file.display()),
        None => "   this sandbox only (moat term --policy-file FILE to also keep it)".to_string(),
    }));
    lines.push(Line::styled("Enter approve   Esc cancel", t.dim()));
    let title = format!(" approve {} -> {} ", p.id, shown(&p.destination));
    let area = centered(f.area(), 78, lines.len() as u16 + 2);
    f.render_widget(Clear, area);
    let block = Block::default().borders(Borders::ALL).title(title).border_style(t.head());
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn input(f: &mut Frame, field: Field, text: &str, t: Theme) {
    let what = match field {
        Field::Binary => "binary contains",
        Field::Host => "host contains",
    };
    let area = centered(f.area(), 60, 3);
    f.render_widget(Clear, area);
    let block = Block::default().borders(Borders::ALL).title(format!(" filter: {what} ")).border_style(t.head());
    f.render_widget(Paragraph::new(format!("{}_", shown(text))).block(block), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Update;
    use moat_supervisor::gateway::events::Event;
    use moat_supervisor::gateway::revisions::{AgentRequest, Pending};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen as text, row by row.
    fn draw(m: &Model, ui: &Ui) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| render(f, m, ui, Theme { color: false })).unwrap();
        let buf = t.backend().buffer().clone();
        (0..24).map(|y| (0..80).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
    }

    #[test]
    fn text_a_sandbox_chose_is_shown_escaped_on_every_tab() {
        let evil = "/tmp/\u{1b}[2J\u{202e}gnp.exe";
        let mut m = Model::default();
        let mut e = Event::new(None, "h.test", 80, "GET", evil, Decision::Deny, "", "");
        e.binary = evil.into();
        m.apply(Update::Event { sandbox: "s".into(), seq: None, event: Box::new(e) });
        let p = Pending {
            id: "ab12".into(),
            binary: evil.into(),
            hash: "00".into(),
            ancestors: Vec::new(),
            host: "h.test".into(),
            port: 80,
            first_seen: String::new(),
            last_seen: String::new(),
            count: 1,
            agent_request: Some(AgentRequest { reason: format!("please {evil}"), method: None, path: None }),
        };
        m.apply(Update::Approvals { sandbox: "s".into(), pending: vec![p], dropped: 0 });
        let mut ui = Ui::new(None);
        for tab in Tab::ALL {
            ui.tab = tab;
            let screen = draw(&m, &ui);
            assert!(!screen.contains('\u{1b}') && !screen.contains('\u{202e}'), "{tab:?}:\n{screen}");
        }
        ui.tab = Tab::Approvals;
        let screen = draw(&m, &ui);
        assert!(screen.contains(r"/tmp/\u{1b}[2J\u{202e}gnp.exe"), "the path is shown escaped:\n{screen}");
        assert!(screen.contains("own words (unverified)"), "{screen}");
    }

    #[test]
    fn every_tab_and_popup_fits_80x24() {
        let m = Model::default();
        let mut ui = Ui::new(None);
        for tab in Tab::ALL {
            ui.tab = tab;
            for mode in [Mode::Normal, Mode::Help, Mode::Input(Field::Host, "x".into())] {
                ui.mode = mode;
                let screen = draw(&m, &ui);
                assert!(screen.contains("moat term"), "{screen}");
            }
        }
        ui.mode = Mode::Help;
        let screen = draw(&m, &ui);
        assert!(screen.contains("quit (sandboxes keep running)"), "help is whole at 80x24:\n{screen}");
    }
}
