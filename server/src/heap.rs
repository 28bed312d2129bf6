//! The process's heap: glibc's thresholds, set once at start, and a way to
//! hand freed memory back to the system after a burst of frees.
//!
//! glibc raises its thresholds as the process runs: each large block it
//! unmaps lifts the size below which blocks come from the heap instead,
//! and with it how much free space a thread's heap may keep at its top
//! (twice that size). After a start had freed its multi-megabyte buffers,
//! each worker thread's heap kept 8 to 10 MB free at its top, resident for
//! good, and `malloc_trim` cannot return it: it trims the top of the main
//! heap only (BENCHMARKS.md, watch snapshots). With fixed thresholds, a
//! block of [`MMAP_THRESHOLD`] or more that no free space fits is mapped on
//! its own (and unmapped when freed), and a thread's heap whose free top
//! grows past [`TRIM_THRESHOLD`] gives it back, all but glibc's small pad.

/// Blocks at least this large are mapped on their own when no free space
/// in the heap fits them: snapshot pointer arrays, sort buffers, lease
/// checkpoint arrays. glibc refuses more than 32 MiB.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// A heap's free top larger than this is returned to the system.
pub const TRIM_THRESHOLD: usize = 2 << 20;

const _: () = assert!(MMAP_THRESHOLD <= 32 << 20 && TRIM_THRESHOLD <= i32::MAX as usize);

/// How glibc takes these settings itself, as variables or as tunables in
/// `GLIBC_TUNABLES`: set, they rule, and [`configure`] leaves them alone.
const THRESHOLD_VARIABLES: [&str; 2] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"];
const THRESHOLD_TUNABLES: [&str; 2] =
    ["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"];

/// What [`configure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thresholds {
    /// Fixed at [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`].
    Fixed,
    /// Left as glibc's environment sets them.
    LeftToEnvironment,
    /// Not glibc, or glibc refused them.
    Unchanged,
}

/// Fixes glibc's thresholds; call before the runtime starts its threads.
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or either threshold
/// in `GLIBC_TUNABLES` leaves them to glibc.
pub fn configure() -> Thresholds {
    let variable = |name: &str| std::env::var(name).ok();
    if left_to_glibc(variable) {
        return Thresholds::LeftToEnvironment;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes the allocator's parameters, under
        // its own lock; both values fit an i32 (asserted above). It
        // answers 1 when it took the value.
        let fixed = unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as i32) == 1
                && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD as i32) == 1
        };
        if fixed {
            return Thresholds::Fixed;
        }
    }
    Thresholds::Unchanged
}

/// Whether glibc's environment sets either threshold.
fn left_to_glibc(variable: impl Fn(&str) -> Option<String>) -> bool {
    let tunables = variable("GLIBC_TUNABLES").unwrap_or_default();
    let tuned = tunables
        .split(':')
        .filter_map(|entry| entry.split_once('=').map(|(name, _)| name))
        .any(|name| THRESHOLD_TUNABLES.contains(&name));
    tuned
        || THRESHOLD_VARIABLES
            .iter()
            .any(|name| variable(name).is_some())
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
    use super::left_to_glibc;

    fn environment(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn glibc_variables_or_tunables_keep_the_thresholds_glibcs() {
        assert!(!left_to_glibc(environment(&[])));
        assert!(!left_to_glibc(environment(&[("MALLOC_ARENA_MAX", "2")])));
        assert!(left_to_glibc(environment(&[(
            "MALLOC_TRIM_THRESHOLD_",
            "0"
        )])));
        assert!(left_to_glibc(environment(&[(
            "MALLOC_MMAP_THRESHOLD_",
            "65536"
        )])));
        let tunables = |value| environment(&[("GLIBC_TUNABLES", value)]);
        assert!(left_to_glibc(tunables("glibc.malloc.trim_threshold=0")));
        assert!(left_to_glibc(tunables(
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=4096"
        )));
        assert!(!left_to_glibc(tunables("glibc.malloc.arena_max=2")));
        assert!(!left_to_glibc(tunables("glibc.malloc.trim_threshold")));
    }
}
