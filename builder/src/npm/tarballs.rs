//! Tarballs several at a time: at lock, each is downloaded, checked against
//! the registry's sha512 and looked into; at build, each is taken by its
//! pins (sha256 and sha512) from the cache or the registry and unpacked.
//! Guards against a tarball that is not what was locked (refused, naming
//! the package) and against slow serial downloads of large trees.
#![forbid(unsafe_code)]
use super::registry::{self, Client};
use super::{integrity, layout, NpmError};
use crate::downloads::Pin;
use crate::Digest;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Downloads at once (network-bound; npm itself opens more).
const WORKERS: usize = 8;

/// `f` over `items` on up to [`WORKERS`] threads, results in order; after a
/// failure no new item is started, and the first failure in order is returned.
pub(crate) fn par_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, NpmError> + Sync,
) -> Result<Vec<R>, NpmError> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<R, NpmError>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                let failed = r.is_err();
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
                if failed {
                    next.store(items.len(), Ordering::SeqCst);
                    break;
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    let mut missing = false;
    for slot in slots {
        match slot.into_inner().ok().flatten() {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => return Err(e),
            None => missing = true,
        }
    }
    if missing {
        return Err(NpmError::Spec("a tarball worker stopped without a result".into()));
    }
    Ok(out)
}

/// A tarball as the registry serves it now, checked against its sha512 `sri`
/// (lock time): its bytes.
pub(crate) fn fetch_new(client: &Client, id: &str, url: &str, sri: &str) -> Result<Vec<u8>, NpmError> {
    let bytes = client.get(url, registry::MAX_TARBALL, "*/*")?;
    if !integrity::matches(sri, &bytes) {
        return Err(NpmError::Integrity {
            package: id.into(),
            expected: sri.into(),
            got: integrity::sri_sha512(&bytes),
        });
    }
    Ok(bytes)
}

/// A locked tarball by its pins (build time), unpacked.
pub(crate) fn fetch_locked(
    client: &Client,
    cache: &Path,
    id: &str,
    p: &super::LockedNpm,
) -> Result<layout::Unpacked, NpmError> {
    let sha = Digest::parse_hex(&p.sha256)
        .map_err(|_| NpmError::Package { package: id.into(), msg: "lock: sha256 is not 64 hex characters".into() })?;
    let pin = Pin { sha256: sha, size: Some(p.size) };
    let bytes = registry::tarball(client, cache, id, &p.tarball, &pin)?;
    if !integrity::matches(&p.integrity, &bytes) {
        return Err(NpmError::Integrity {
            package: id.into(),
            expected: p.integrity.clone(),
            got: integrity::sri_sha512(&bytes),
        });
    }
    layout::unpack(id, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn results_in_order_and_the_first_failure_wins() {
        let items: Vec<u32> = (0..50).collect();
        assert_eq!(par_map(&items, |i| Ok(i * 2)).unwrap(), items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let e = par_map(&items, |i| if *i >= 7 { Err(NpmError::Spec(format!("bad {i}"))) } else { Ok(*i) });
        assert!(e.unwrap_err().to_string().starts_with("[npm]: bad "));
        assert!(par_map(&Vec::<u32>::new(), |i| Ok(*i)).unwrap().is_empty());
    }
}
