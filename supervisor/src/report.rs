//! An error as text with every cause, for the places that turn an error into
//! a string (logs, refusal bodies, control-socket answers). Each error type's
//! Display shows only its own level (its cause is its `source()`), so text
//! made from `{e}` alone would drop the cause; `chain` walks the sources.
//! The CLI gets the same from anyhow's `{:#}`. Guards against an operator or
//! an agent being told "reading /x" without the "permission denied".
#![forbid(unsafe_code)]
use std::error::Error;

/// `e` and each of its causes, joined by ": ".
pub(crate) fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        // A cause some other crate already printed into its parent's text
        // is not repeated.
        if !s.is_empty() && !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"));
        assert_eq!(chain(&e), "reading /x: permission denied");
        let plain = std::io::Error::other("plain");
        assert_eq!(chain(&plain), "plain");
    }
}
