//! The process's heap: glibc's thresholds, set once at start, and a way to
//! hand freed memory back to the system after a burst of frees.
//!
//! glibc raises its thresholds as the process runs: each large block it
//! returns to the system lifts the size below which blocks come from the
//! heap instead, and with it how much free space a thread's heap keeps at
//! its top (twice that size). After a start had freed its multi-megabyte
//! buffers, each worker thread's heap kept 11 to 14 MB free and resident
//! for good, and `malloc_trim` cannot return it: it trims the top of the
//! main heap only (BENCHMARKS.md, watch snapshots). Fixed thresholds keep
//! blocks above [`MMAP_THRESHOLD`] out of the heaps, and a thread's heap
//! gives back what lies above [`TRIM_THRESHOLD`] at its top when freed.

/// Blocks at least this large are mapped on their own and unmapped when
/// freed: snapshot pointer arrays, sort buffers, checkpoint arrays.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Free space kept at the top of a heap, at most, before it is returned.
pub const TRIM_THRESHOLD: usize = 2 << 20;

/// Fixes glibc's thresholds; call before the runtime starts its threads.
/// Whether they were set: not where the allocator is not glibc's, nor when
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` is in the
/// environment (glibc's own tunables, left to rule).
pub fn configure() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if tuned {
            return false;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes the allocator's parameters, under
        // its own lock; both values fit an i32. It answers 1 when it took
        // the value.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as i32) == 1
                && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD as i32) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Gives the pages of freed heap back to the system. A start frees far
/// more than it keeps (the store's rows, the rows' agents before they are
/// moved into the maps), and glibc returns free memory below the top of
/// its heaps, and that of other threads' heaps, only when asked: without
/// this, a million agents kept about 300 MB of freed heap resident
/// (BENCHMARKS.md, memory per agent).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free pages to the system; it
        // takes the allocator's own locks.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        // glibc refuses a mapping threshold above half its heap size (32
        // MiB), which a later change of the constants could cross.
        assert!(super::configure());
    }
}
