//! The allocator of the `gf` and `chaos` binaries: mimalloc rather than glibc's malloc.
//!
//! A loaded coordinator spent about a quarter of its CPU in glibc's malloc and free
//! (decoding and encoding job records), and the coordinator's CPU per job is what bounds
//! throughput on a small machine: with mimalloc the load suite made 8.6 % more jobs/s
//! and the coordinator spent 10 % less CPU per job (BENCHMARKS.md, issue 20 phase C).
//! Both binaries link this library, so one `#[global_allocator]` here serves both; the
//! `chaos` binary runs the load suite's coordinators and workers as `chaos gf …`, so it
//! must run what `gf` runs.

/// The process-wide allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the version libmimalloc-sys
/// builds by default); the bindings name no constant for it. Checked by a test against
/// the option's default in mimalloc 3's `options.c` (1,000 ms; the header's comment
/// still says 10).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once instead of a second later. With the
/// default delay a coordinator held about twice the resident memory of glibc's malloc
/// (leader 96 against 45 MiB with 10,000 live jobs; a fresh standby with 100,000
/// finished jobs in their grace period 124 against 60 MiB), which undid issue 19's
/// memory figures; with 0 it holds 62 and 66 MiB, at the same throughput (three
/// alternating pairs, 20,000 jobs at once: 4,880 and 4,892 jobs/s). Call first thing
/// in `main`, before any thread starts.
///
/// `MIMALLOC_PURGE_DELAY` in the environment (milliseconds; mimalloc reads it at
/// start) is left to win, for an operator who trades memory for CPU differently.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores the option's value; it takes no pointers and
    // mimalloc reads options atomically.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index is the purge delay's: its default is 1,000 ms (unless the environment
    /// sets it), and `configure` makes it 0.
    #[test]
    fn purge_delay_is_the_option_configure_sets() {
        // SAFETY: as in `configure`.
        #[allow(unsafe_code)]
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(
            get(),
            1000,
            "option {PURGE_DELAY} is not mi_option_purge_delay"
        );
        configure();
        assert_eq!(get(), 0);
    }
}
