//! Debian control-file syntax: deb822 paragraphs, version ordering and
//! dependency fields. Pure parsing of mirror- and package-supplied text, so
//! every function returns an error (never panics) on malformed input.
#![forbid(unsafe_code)]
use std::cmp::Ordering;

/// One deb822 paragraph: fields in file order; values keep continuation lines
/// (joined with `\n`, leading space kept as in the file).
#[derive(Debug, Clone, Default)]
pub(crate) struct Paragraph<'a> {
    pub fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Paragraph<'a> {
    /// Field value by case-insensitive name, trimmed.
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }
}

/// Splits deb822 text into paragraphs without copying. Comment lines (`#`)
/// are skipped; a line without `:` that is not a continuation is an error.
pub(crate) fn paragraphs(text: &str) -> Result<Vec<Paragraph<'_>>, String> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    // (name, value start offset, value end offset)
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0usize;
    for (lineno, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            if let Some((k, s, e)) = open.take() {
                cur.fields.push((k, &text[s..e]));
            }
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            match open.as_mut() {
                Some((_, _, e)) => *e = start + line.len(),
                None => return Err(format!("line {}: continuation line without a field", lineno + 1)),
            }
            continue;
        }
        let Some(colon) = line.find(':') else {
            return Err(format!("line {}: expected `Field: value`", lineno + 1));
        };
        if let Some((k, s, e)) = open.take() {
            cur.fields.push((k, &text[s..e]));
        }
        let vstart = start + colon + 1;
        open = Some((&line[..colon], vstart, start + line.len()));
    }
    if let Some((k, s, e)) = open.take() {
        cur.fields.push((k, &text[s..e]));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Compares two Debian versions (`[epoch:]upstream[-revision]`) as dpkg does.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb).then_with(|| cmp_part(ua, ub)).then_with(|| cmp_part(ra, rb))
}

fn split_version(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) && !e.is_empty() => (e.parse().unwrap_or(u64::MAX), r),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn cmp_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared with dpkg's character order.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = if i < a.len() && !a[i].is_ascii_digit() { Some(a[i]) } else { None };
            let cb = if j < b.len() && !b[j].is_ascii_digit() { Some(b[j]) } else { None };
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            i += 1;
            j += 1;
        }
        // Numeric part.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (na, nb) = (&a[si..i], &b[sj..j]);
        let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// A version relation in a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }
    /// Whether `have OP want` holds.
    pub(crate) fn holds(self, have: &str, want: &str) -> bool {
        let c = compare_versions(have, want);
        match self {
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
            Op::Eq => c == Ordering::Equal,
            Op::Ge => c != Ordering::Less,
            Op::Gt => c == Ordering::Greater,
        }
    }
}

/// `name[:arch] [(op version)]`; the arch qualifier (`:any`, `:native`) is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dep {
    pub name: String,
    pub constraint: Option<(Op, String)>,
}

impl std::fmt::Display for Dep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some((op, v)) => write!(f, "{} ({} {})", self.name, op.as_str(), v),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Parses a `Depends`-style field: comma-separated clauses of `|` alternatives.
pub(crate) fn parse_deps(field: &str) -> Result<Vec<Vec<Dep>>, String> {
    let mut out = Vec::new();
    for clause in field.split(',') {
        let clause = clause.trim();
        if clause.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in clause.split('|') {
            alts.push(parse_one(alt.trim())?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_one(s: &str) -> Result<Dep, String> {
    // Drop architecture restrictions `[...]` and build profiles `<...>`
    // (outside the version relation, which may itself contain `<<`).
    let cut = |x: &'_ str| -> usize { x.find(['[', '<']).unwrap_or(x.len()) };
    let (name_part, rest) = match s.find('(') {
        Some(i) => {
            let close = s[i..].find(')').map(|j| i + j + 1).unwrap_or(s.len());
            (s[..i].trim(), Some(s[i..close].trim()))
        }
        None => (s[..cut(s)].trim(), None),
    };
    let name_part = name_part[..cut(name_part)].trim();
    let name = name_part.split(':').next().unwrap_or("").trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err(format!("bad package name in dependency {s:?}"));
    }
    let constraint = match rest {
        None => None,
        Some(r) => {
            let inner = r
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("bad version relation in {s:?}"))?
                .trim();
            let op_len = inner.bytes().take_while(|b| b"<>=".contains(b)).count();
            let op = Op::parse(&inner[..op_len]).ok_or_else(|| format!("bad relation operator in {s:?}"))?;
            let v = inner[op_len..].trim();
            if v.is_empty() {
                return Err(format!("missing version in {s:?}"));
            }
            Some((op, v.to_string()))
        }
    };
    Ok(Dep { name: name.to_string(), constraint })
}

/// Debian priorities in the order debootstrap prefers them (lower is preferred).
pub(crate) fn priority_rank(p: Option<&str>) -> u8 {
    match p.unwrap_or("") {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        "extra" => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn versions_order_like_dpkg() {
        let lt = |a, b| assert_eq!(compare_versions(a, b), Ordering::Less, "{a} < {b}");
        lt("1.0", "1.1");
        lt("1.0~rc1", "1.0");
        lt("1.0", "1.0-1");
        lt("1:0.1", "2:0.0");
        lt("2.30", "2.36-9+deb12u4");
        lt("9", "10");
        lt("1.0a", "1.0b");
        lt("1.0", "1.0a");
        lt("1.0+b1", "1.0.1");
        lt("7.88.1-10+deb12u5", "7.88.1-10+deb12u12");
        assert_eq!(compare_versions("1.02", "1.2"), Ordering::Equal);
        assert_eq!(compare_versions("0:1.0", "1.0"), Ordering::Equal);
    }
    #[test]
    fn deps_parse() {
        let d = parse_deps("libc6 (>= 2.34), perl:any, usrmerge | usr-is-merged, awk [amd64], x (<< 2) <!nocheck>")
            .unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d[4][0], Dep { name: "x".into(), constraint: Some((Op::Lt, "2".into())) });
        assert_eq!(d[0][0], Dep { name: "libc6".into(), constraint: Some((Op::Ge, "2.34".into())) });
        assert_eq!(d[1][0].name, "perl");
        assert_eq!(d[2].iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["usrmerge", "usr-is-merged"]);
        assert_eq!(d[3][0].name, "awk");
        assert!(parse_deps("foo (>= )").is_err());
        assert!(parse_deps("fo/o").is_err());
        assert!(Op::Lt.holds("1.0", "1.1") && !Op::Gt.holds("1.0", "1.1"));
    }
    #[test]
    fn paragraphs_parse() {
        let t = "Package: a\nDescription: x\n more\n .\nVersion: 1\n\n# c\n\nPackage: b\n";
        let p = paragraphs(t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("package"), Some("a"));
        assert_eq!(p[0].get("Description"), Some("x\n more\n ."));
        assert_eq!(p[0].get("Version"), Some("1"));
        assert_eq!(p[1].get("Package"), Some("b"));
        assert!(paragraphs("nocolon\n").is_err());
    }
}
