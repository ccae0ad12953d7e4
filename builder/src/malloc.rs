//! Allocator tuning for a build's burst of allocations (performance only; no
//! threat). Archiving a layer allocates tens of MiB in many small pieces on
//! several threads; glibc's defaults grow each thread's heap a few pages at a
//! time (one `mprotect` per growth, ~4,000 for a 5,000-file tree) and hand
//! 1 MiB compression buffers to fresh `mmap`s that fault in page by page.
//! Growing in 64 MiB steps and keeping buffers under 64 MiB on the heap cut
//! a 5,000-file build by ~8% (tests/bench/build.sh). Address space is
//! reserved, not memory: pages are touched only when used. Freed memory is
//! kept for reuse instead of being handed back page by page, and large
//! structures are dropped off the critical path ([`drop_later`]).
#![forbid(unsafe_code)]

/// Tunes the process allocator once; later calls do nothing. Meant for the
/// short-lived CLI processes that build, not for long-running supervisors.
pub(crate) fn tune_for_build() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            const STEP: libc::c_int = 64 << 20;
            crate::sys::mallopt(libc::M_TOP_PAD, STEP);
            crate::sys::mallopt(libc::M_MMAP_THRESHOLD, STEP);
            crate::sys::mallopt(libc::M_TRIM_THRESHOLD, 4 * STEP);
        }
    });
}

/// Drops `value` on a short-lived thread: freeing a tree of thousands of
/// entries (and the file contents it holds) costs milliseconds that the build
/// need not wait for.
pub(crate) fn drop_later<T: Send + 'static>(value: T) {
    // If no thread can be made (resource limits), the closure and the value
    // in it are dropped here, on this thread.
    let _ = std::thread::Builder::new().name("moat-drop".into()).spawn(move || drop(value));
}
