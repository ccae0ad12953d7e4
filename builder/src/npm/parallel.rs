//! Network-bound work on several items at once (tarballs, packuments) on
//! a few scoped threads, results in input order. Guards against slow
//! serial downloads of large trees without giving up a deterministic
//! result: the first failure in input order is the one reported.
#![forbid(unsafe_code)]
use super::NpmError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Items at once (network-bound work; npm itself opens more connections).
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
