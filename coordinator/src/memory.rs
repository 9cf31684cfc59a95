//! Handing freed heap back to the system after a bulk load.
//!
//! A full replay of `gf_jobs` (a coordinator's start, a new leader's view, the stats
//! counters) decodes every record the bucket holds, grace-window jobs included, and
//! keeps only what the view needs. glibc keeps the pages those transient buffers freed
//! in its arenas, so the process's resident memory stays at the replay's peak: with
//! 100,000 finished jobs in their grace period, 140 MiB resident of which `malloc_trim`
//! returned 52 MiB (measured with gdb on a release coordinator; BENCHMARKS.md, issue
//! 19). [`release_freed`] asks for that once a replay is done; it is a no-op where the
//! allocator is not glibc's. The `gf` and `chaos` binaries run on mimalloc (issue 20:
//! 10 % less coordinator CPU per job), set to hand freed pages back at once
//! (`gf_cli::allocator`); the trim remains for programs that embed the coordinator on
//! glibc's allocator (the tests).

/// Returns the heap pages freed since the last trim to the system (`malloc_trim(0)`).
/// Costs a walk over the free lists, a few milliseconds on a 100 MiB heap: call it after
/// a replay, not per record.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory and is
    // thread-safe (it takes each arena's lock).
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
