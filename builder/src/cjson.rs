//! Canonical JSON for everything that is hashed (config, manifest, index):
//! sorted keys, no whitespace, so map iteration order can never change a digest.
#![forbid(unsafe_code)]
use serde::Serialize;

/// Serializes `v` canonically: through `serde_json::Value`, whose map is a
/// `BTreeMap` (serde_json is built without `preserve_order`), so keys come
/// out sorted at every depth.
pub fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(v)?;
    serde_json::to_vec(&value)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    #[test]
    fn keys_are_sorted_at_every_depth() {
        let mut m = HashMap::new();
        for k in ["zeta", "alpha", "mid", "beta", "omega", "kappa"] {
            let mut inner = HashMap::new();
            inner.insert("z", 1);
            inner.insert("a", 2);
            m.insert(k, inner);
        }
        let s = String::from_utf8(super::to_vec(&m).unwrap()).unwrap();
        assert!(s.starts_with(r#"{"alpha":{"a":2,"z":1},"beta""#), "{s}");
        // Guards the workspace against serde_json's `preserve_order` feature.
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"a":2,"b":1}"#);
    }
}
