//! What the operator is doing in the console: the tab, selections, the
//! egress filter, help, text input, and the scope picker of an approval,
//! and what each key does to them. Pure (keys in, an effect out), so every
//! binding is tested without a terminal. Guards against an approval wider
//! than meant: the picker starts on the narrowest scope that fits, names
//! what each choice opens, and nothing is sent until Enter.
#![forbid(unsafe_code)]
use crate::act::Action;
use crate::model::{Filter, Model, Tab};
use moat_supervisor::gateway::scope::Scope;
use moat_supervisor::policy::schema::Access;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::PathBuf;

/// What a key asks of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Quit,
    Act(Action),
}

/// Which filter a text input edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Binary,
    Host,
}

/// The scope picker of one pending approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picker {
    pub sandbox: String,
    pub id: String,
    pub destination: String,
    /// (what it opens, the scope).
    pub options: Vec<(String, Scope)>,
    pub selected: usize,
    /// CIDRs typed by the operator, space or comma separated.
    pub allowed_ips: String,
    pub editing_ips: bool,
    /// Also write the rule into the console's policy file.
    pub write: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Help,
    Input(Field, String),
    Pick(Picker),
    /// Deny this entry? (sandbox, id, destination): `y` denies it.
    ConfirmDeny(String, String, String),
}

#[derive(Debug)]
pub struct Ui {
    pub tab: Tab,
    pub mode: Mode,
    /// Selected row per tab (sandboxes, egress, approvals, policy sandbox).
    pub selected: [usize; 4],
    /// The egress list follows the newest record (off once the operator scrolls).
    pub follow: bool,
    pub filter: Filter,
    /// Lines the policy diff is scrolled by.
    pub policy_scroll: usize,
    /// Where "write into a policy file" writes (`moat term --policy-file`).
    pub policy_file: Option<PathBuf>,
    /// The selected approval by (sandbox, id), not by row: rows move when
    /// entries are evicted or decided, the entry the operator chose does not.
    pub approval: Option<(String, String)>,
}

fn index(tab: Tab) -> usize {
    Tab::ALL.iter().position(|t| *t == tab).unwrap_or(0)
}

impl Ui {
    pub fn new(policy_file: Option<PathBuf>) -> Ui {
        Ui {
            tab: Tab::Sandboxes,
            mode: Mode::Normal,
            selected: [0; 4],
            follow: true,
            filter: Filter::default(),
            policy_scroll: 0,
            policy_file,
            approval: None,
        }
    }

    /// How many rows the current tab selects among.
    fn rows(&self, m: &Model) -> usize {
        match self.tab {
            Tab::Sandboxes => m.sandboxes.len(),
            Tab::Egress => m.filtered(&self.filter).count(),
            Tab::Approvals => m.approval_rows().len(),
            Tab::Policy => m.policies.len(),
        }
    }

    /// The selected row of the current tab, kept within its rows.
    pub fn selection(&self, m: &Model) -> usize {
        let n = self.rows(m);
        if self.tab == Tab::Egress && self.follow {
            return n.saturating_sub(1);
        }
        if let (Tab::Approvals, Some((sandbox, id))) = (self.tab, &self.approval) {
            let at = m.approval_rows().iter().position(|r| r.sandbox == sandbox && r.pending.id == *id);
            if let Some(i) = at {
                return i;
            }
        }
        self.selected[index(self.tab)].min(n.saturating_sub(1))
    }

    fn select(&mut self, m: &Model, to: usize) {
        let n = self.rows(m);
        let to = to.min(n.saturating_sub(1));
        self.selected[index(self.tab)] = to;
        if self.tab == Tab::Egress {
            self.follow = to >= n.saturating_sub(1);
        }
        if self.tab == Tab::Approvals {
            self.approval = m.approval_rows().get(to).map(|r| (r.sandbox.to_string(), r.pending.id.clone()));
        }
        if self.tab == Tab::Policy {
            self.policy_scroll = 0;
        }
    }

    /// Applies one key.
    pub fn key(&mut self, k: KeyEvent, m: &Model) -> Option<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Effect::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal(k, m),
            Mode::Help => None, // any key closes help
            Mode::Input(field, text) => {
                self.input(field, text, k);
                None
            }
            Mode::Pick(p) => self.pick(p, k),
            Mode::ConfirmDeny(sandbox, id, _) => {
                (k.code == KeyCode::Char('y')).then_some(Effect::Act(Action::Deny { sandbox, id }))
            }
        }
    }

    fn normal(&mut self, k: KeyEvent, m: &Model) -> Option<Effect> {
        let sel = self.selection(m);
        match k.code {
            KeyCode::Char('q') => return Some(Effect::Quit),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Tab | KeyCode::Right => self.tab = Tab::ALL[(index(self.tab) + 1) % 4],
            KeyCode::BackTab | KeyCode::Left => self.tab = Tab::ALL[(index(self.tab) + 3) % 4],
            KeyCode::Char(c @ '1'..='4') => self.tab = Tab::ALL[c as usize - '1' as usize],
            KeyCode::Up | KeyCode::Char('k') => self.select(m, sel.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.select(m, sel + 1),
            KeyCode::PageUp if self.tab == Tab::Policy => self.policy_scroll = self.policy_scroll.saturating_sub(10),
            KeyCode::PageDown if self.tab == Tab::Policy => self.policy_scroll += 10,
            KeyCode::PageUp => self.select(m, sel.saturating_sub(10)),
            KeyCode::PageDown => self.select(m, sel + 10),
            KeyCode::Home | KeyCode::Char('g') => self.select(m, 0),
            KeyCode::End | KeyCode::Char('G') => self.select(m, usize::MAX),
            KeyCode::Enter if self.tab == Tab::Sandboxes => {
                // The policy of the selected sandbox.
                if let Some(row) = m.sandboxes.get(sel) {
                    if let Some(i) = m.policy_names().iter().position(|n| *n == row.name) {
                        self.selected[index(Tab::Policy)] = i;
                        self.policy_scroll = 0;
                    }
                    self.tab = Tab::Policy;
                }
            }
            KeyCode::Char('f') if self.tab == Tab::Egress => self.filter.next_decision(),
            KeyCode::Char('b') if self.tab == Tab::Egress => {
                self.mode = Mode::Input(Field::Binary, self.filter.binary.clone())
            }
            KeyCode::Char('h') if self.tab == Tab::Egress => {
                self.mode = Mode::Input(Field::Host, self.filter.host.clone())
            }
            KeyCode::Char('c') if self.tab == Tab::Egress => self.filter = Filter::default(),
            KeyCode::Char('a') | KeyCode::Enter if self.tab == Tab::Approvals => {
                if let Some(p) = self.picker(m, sel) {
                    self.mode = Mode::Pick(p);
                }
            }
            KeyCode::Char('d') if self.tab == Tab::Approvals => {
                if let Some(r) = m.approval_rows().get(sel) {
                    let dest = format!("{}:{}", r.pending.host, r.pending.port);
                    self.mode = Mode::ConfirmDeny(r.sandbox.into(), r.pending.id.clone(), dest);
                }
            }
            _ => {}
        }
        None
    }

    fn input(&mut self, field: Field, mut text: String, k: KeyEvent) {
        match k.code {
            KeyCode::Enter => match field {
                Field::Binary => self.filter.binary = text,
                Field::Host => self.filter.host = text,
            },
            KeyCode::Esc => {}
            KeyCode::Backspace => {
                text.pop();
                self.mode = Mode::Input(field, text);
            }
            KeyCode::Char(c) if !c.is_control() && text.len() < 256 => {
                text.push(c);
                self.mode = Mode::Input(field, text);
            }
            _ => self.mode = Mode::Input(field, text),
        }
    }

    /// The picker for the `sel`-th pending approval: exact host and port,
    /// inspected read-only or read-write, or one request as seen.
    fn picker(&self, m: &Model, sel: usize) -> Option<Picker> {
        let rows = m.approval_rows();
        let r = rows.get(sel)?;
        let dest = format!("{}:{}", r.pending.host, r.pending.port);
        let mut options = vec![
            (
                format!("inspected, read-only: GET/HEAD/OPTIONS to {dest}"),
                Scope::Inspected { access: Access::ReadOnly },
            ),
            (
                format!("inspected, read-write: also POST/PUT/PATCH to {dest}"),
                Scope::Inspected { access: Access::ReadWrite },
            ),
        ];
        // A path as seen is allowed as that path only: the sandbox chose it,
        // and glob characters in it (`/**`) must not widen the rule.
        for (method, path) in m.seen_requests(r.sandbox, r.pending) {
            let plain_method = (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase());
            if plain_method {
                let literal = moat_supervisor::gateway::revisions::glob_literal(&path);
                options.push((format!("only {method} {path} (as seen)"), Scope::Request { method, path: literal }));
            }
        }
        options.push((format!("exact host and port, all traffic at L4: {dest}"), Scope::Exact));
        Some(Picker {
            sandbox: r.sandbox.to_string(),
            id: r.pending.id.clone(),
            destination: dest,
            options,
            selected: 0,
            allowed_ips: String::new(),
            editing_ips: false,
            write: false,
        })
    }

    fn pick(&mut self, mut p: Picker, k: KeyEvent) -> Option<Effect> {
        if p.editing_ips {
            match k.code {
                KeyCode::Enter | KeyCode::Esc => p.editing_ips = false,
                KeyCode::Backspace => {
                    p.allowed_ips.pop();
                }
                KeyCode::Char(c) if (c.is_ascii_hexdigit() || ".:/, ".contains(c)) && p.allowed_ips.len() < 512 => {
                    p.allowed_ips.push(c)
                }
                _ => {}
            }
            self.mode = Mode::Pick(p);
            return None;
        }
        match k.code {
            KeyCode::Esc | KeyCode::Char('q') => return None,
            KeyCode::Up | KeyCode::Char('k') => p.selected = p.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => p.selected = (p.selected + 1).min(p.options.len().saturating_sub(1)),
            KeyCode::Char(c @ '1'..='9') => {
                let i = c as usize - '1' as usize;
                if i < p.options.len() {
                    p.selected = i;
                }
            }
            KeyCode::Char('i') => p.editing_ips = true,
            KeyCode::Char('w') if self.policy_file.is_some() => p.write = !p.write,
            KeyCode::Enter => {
                let scope = p.options.get(p.selected).map(|(_, s)| s.clone()).unwrap_or_default();
                let allowed_ips =
                    p.allowed_ips.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_string).collect();
                let write = if p.write { self.policy_file.clone() } else { None };
                return Some(Effect::Act(Action::Approve { sandbox: p.sandbox, id: p.id, scope, allowed_ips, write }));
            }
            _ => {}
        }
        self.mode = Mode::Pick(p);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Update;
    use moat_supervisor::gateway::events::{Decision, Event};
    use moat_supervisor::gateway::revisions::Pending;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn model() -> Model {
        let mut m = Model::default();
        let p = Pending {
            id: "ab12".into(),
            binary: "/usr/bin/curl".into(),
            hash: "00".into(),
            ancestors: Vec::new(),
            host: "other.test".into(),
            port: 80,
            first_seen: String::new(),
            last_seen: String::new(),
            count: 1,
            agent_request: None,
        };
        m.apply(Update::Approvals { sandbox: "s".into(), pending: vec![p], dropped: 0 });
        let mut e = Event::new(None, "other.test", 80, "GET", "/x", Decision::Deny, "", "");
        e.binary = "/usr/bin/curl".into();
        m.apply(Update::Event { sandbox: "s".into(), seq: None, event: Box::new(e) });
        m
    }

    #[test]
    fn approve_read_only_with_an_address_opted_in() {
        let m = model();
        let mut ui = Ui::new(None);
        assert_eq!(ui.key(key(KeyCode::Char('3')), &m), None);
        assert_eq!(ui.tab, Tab::Approvals);
        ui.key(key(KeyCode::Char('a')), &m);
        let Mode::Pick(p) = &ui.mode else { panic!("{:?}", ui.mode) };
        assert_eq!(p.options[0].1, Scope::Inspected { access: Access::ReadOnly }, "narrowest first");
        assert!(p.options.iter().any(|(_, s)| *s == Scope::Request { method: "GET".into(), path: "/x".into() }));
        assert_eq!(p.options.last().map(|o| &o.1), Some(&Scope::Exact));
        ui.key(key(KeyCode::Char('w')), &m); // no policy file: nothing to toggle
        ui.key(key(KeyCode::Char('i')), &m);
        for c in "198.18.0.0/15x".chars() {
            ui.key(key(KeyCode::Char(c)), &m);
        }
        ui.key(key(KeyCode::Enter), &m); // ends the address input
        let effect = ui.key(key(KeyCode::Enter), &m);
        let want = Action::Approve {
            sandbox: "s".into(),
            id: "ab12".into(),
            scope: Scope::Inspected { access: Access::ReadOnly },
            allowed_ips: vec!["198.18.0.0/15".into()],
            write: None,
        };
        assert_eq!(effect, Some(Effect::Act(want)));
        assert_eq!(ui.mode, Mode::Normal);
    }

    #[test]
    fn escape_sends_nothing_and_deny_names_the_selected_entry() {
        let m = model();
        let mut ui = Ui::new(Some("p.toml".into()));
        ui.key(key(KeyCode::Char('3')), &m);
        ui.key(key(KeyCode::Enter), &m);
        ui.key(key(KeyCode::Char('w')), &m);
        let Mode::Pick(p) = &ui.mode else { panic!() };
        assert!(p.write);
        assert_eq!(ui.key(key(KeyCode::Esc), &m), None);
        assert_eq!(ui.mode, Mode::Normal);
        assert_eq!(ui.key(key(KeyCode::Char('d')), &m), None, "asks first");
        assert!(matches!(&ui.mode, Mode::ConfirmDeny(_, id, dest) if id == "ab12" && dest == "other.test:80"));
        assert_eq!(ui.key(key(KeyCode::Char('n')), &m), None, "anything but y sends nothing");
        ui.key(key(KeyCode::Char('d')), &m);
        let d = ui.key(key(KeyCode::Char('y')), &m);
        assert_eq!(d, Some(Effect::Act(Action::Deny { sandbox: "s".into(), id: "ab12".into() })));
    }

    #[test]
    fn a_path_as_seen_is_allowed_literally_and_odd_methods_are_not_offered() {
        let mut m = model();
        for (method, path) in [("GET", "/**"), ("*", "/x"), ("get", "/y")] {
            let mut e = Event::new(None, "other.test", 80, method, path, Decision::Deny, "", "");
            e.binary = "/usr/bin/curl".into();
            m.apply(Update::Event { sandbox: "s".into(), seq: None, event: Box::new(e) });
        }
        let mut ui = Ui::new(None);
        ui.key(key(KeyCode::Char('3')), &m);
        ui.key(key(KeyCode::Char('a')), &m);
        let Mode::Pick(p) = &ui.mode else { panic!() };
        let requests: Vec<&Scope> =
            p.options.iter().map(|o| &o.1).filter(|s| matches!(s, Scope::Request { .. })).collect();
        assert_eq!(
            requests,
            [
                &Scope::Request { method: "GET".into(), path: "/[*][*]".into() },
                &Scope::Request { method: "GET".into(), path: "/x".into() },
            ]
        );
    }

    #[test]
    fn the_selected_approval_stays_the_same_entry_when_rows_move() {
        let mut m = model();
        let mut ui = Ui::new(None);
        ui.key(key(KeyCode::Char('3')), &m);
        ui.key(key(KeyCode::Down), &m);
        assert_eq!(ui.approval, Some(("s".into(), "ab12".into())));
        // Another sandbox's entry sorts first now: the row moves, the choice stays.
        let mut other = m.approval_rows()[0].pending.clone();
        other.id = "ffff".into();
        m.apply(Update::Approvals { sandbox: "a".into(), pending: vec![other], dropped: 0 });
        assert_eq!(ui.selection(&m), 1);
        ui.key(key(KeyCode::Char('d')), &m);
        assert!(matches!(&ui.mode, Mode::ConfirmDeny(s, id, _) if s == "s" && id == "ab12"));
    }

    #[test]
    fn end_follows_the_newest_record() {
        let m = model();
        let mut ui = Ui::new(None);
        ui.key(key(KeyCode::Char('2')), &m);
        ui.key(key(KeyCode::Up), &m);
        ui.key(key(KeyCode::Char('G')), &m);
        assert!(ui.follow);
        ui.key(key(KeyCode::End), &m);
        assert!(ui.follow);
    }

    #[test]
    fn egress_filters_are_typed_and_cleared() {
        let m = model();
        let mut ui = Ui::new(None);
        ui.key(key(KeyCode::Char('2')), &m);
        ui.key(key(KeyCode::Char('f')), &m);
        assert_eq!(ui.filter.decision, Some(Decision::Deny));
        ui.key(key(KeyCode::Char('h')), &m);
        for c in "other".chars() {
            ui.key(key(KeyCode::Char(c)), &m);
        }
        ui.key(key(KeyCode::Enter), &m);
        assert_eq!(ui.filter.host, "other");
        assert_eq!(m.filtered(&ui.filter).count(), 1);
        ui.key(key(KeyCode::Char('c')), &m);
        assert_eq!(ui.filter, Filter::default());
        assert_eq!(ui.key(key(KeyCode::Char('q')), &m), Some(Effect::Quit));
    }
}
