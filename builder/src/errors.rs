//! Error text where an error must travel as a string (a lint finding, a
//! message inside another error): the error and each of its causes, once,
//! joined with ": ". Each error's Display shows only its own level (the
//! convention of this crate), so `to_string()` alone would drop the causes.
#![forbid(unsafe_code)]

/// `e` and its causes on one line; a cause whose text is already shown
/// (an error that still prints its source) is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(chain(&e), "reading x: gone");
    }
}
