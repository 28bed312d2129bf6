//! Times for people: RFC3339 for instants, "in 12s" / "3s ago" relative to now.

use std::time::{Duration, SystemTime};

use mission_control_client::to_system_time;
use prost_types::Timestamp;

/// An optional protobuf timestamp as a system time.
pub fn instant(timestamp: &Option<Timestamp>) -> Option<SystemTime> {
    timestamp.as_ref().map(to_system_time)
}

/// RFC3339 in UTC with milliseconds, e.g. `2025-11-28T13:35:07.120Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// RFC3339, or `null` in JSON, for an optional timestamp.
pub fn rfc3339_or_null(timestamp: &Option<Timestamp>) -> serde_json::Value {
    instant(timestamp).map_or(serde_json::Value::Null, |at| rfc3339(at).into())
}

/// A deadline relative to now: "in 12s", "overdue", or "-" when there is none.
/// Rounds up, so it says "in 1s" until the deadline has actually passed.
pub fn countdown(deadline: Option<SystemTime>, now: SystemTime) -> String {
    let Some(deadline) = deadline else {
        return "-".into();
    };
    match deadline.duration_since(now) {
        Ok(left) if !left.is_zero() => {
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            format!("in {}", short(Duration::from_secs(seconds)))
        }
        _ => "overdue".into(),
    }
}

/// A past instant relative to now: "3s ago", "just now", or "-" for never.
pub fn ago(at: Option<SystemTime>, now: SystemTime) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    match now.duration_since(at) {
        Ok(past) if past >= Duration::from_secs(1) => format!("{} ago", short(past)),
        // Under a second, or slightly ahead of our clock.
        _ => "just now".into(),
    }
}

/// An instant for a detail view: RFC3339 plus how long ago or until.
pub fn described(timestamp: &Option<Timestamp>, now: SystemTime) -> String {
    let Some(at) = instant(timestamp) else {
        return "-".into();
    };
    let relative = if at > now {
        countdown(Some(at), now)
    } else {
        ago(Some(at), now)
    };
    format!("{} ({relative})", rfc3339(at))
}

/// Two units at most, whole seconds: "12s", "2m05s", "1h02m", "3d04h".
pub fn short(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn countdowns_round_up_and_turn_overdue() {
        let now = at(1000, 0);
        assert_eq!(countdown(Some(at(1012, 0)), now), "in 12s");
        assert_eq!(countdown(Some(at(1011, 200)), now), "in 12s");
        assert_eq!(countdown(Some(at(1000, 300)), now), "in 1s");
        assert_eq!(countdown(Some(at(1000, 0)), now), "overdue");
        assert_eq!(countdown(Some(at(990, 0)), now), "overdue");
        assert_eq!(countdown(Some(at(1125, 0)), now), "in 2m05s");
        assert_eq!(countdown(None, now), "-");
    }

    #[test]
    fn ago_rounds_down_and_tolerates_a_clock_ahead() {
        let now = at(1000, 0);
        assert_eq!(ago(Some(at(997, 0)), now), "3s ago");
        assert_eq!(ago(Some(at(996, 500)), now), "3s ago");
        assert_eq!(ago(Some(at(999, 600)), now), "just now");
        assert_eq!(ago(Some(at(1002, 0)), now), "just now");
        assert_eq!(ago(Some(at(1000, 0)), at(1000 + 7380, 0)), "2h03m ago");
        assert_eq!(ago(None, now), "-");
    }

    #[test]
    fn short_durations_use_two_units() {
        assert_eq!(short(Duration::from_secs(0)), "0s");
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(60)), "1m00s");
        assert_eq!(short(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
    }

    #[test]
    fn instants_print_as_rfc3339_with_a_relative_hint() {
        let now = at(1_700_000_000, 0);
        let past = Some(Timestamp {
            seconds: 1_699_999_997,
            nanos: 120_000_000,
        });
        assert_eq!(rfc3339(at(1_700_000_000, 5)), "2023-11-14T22:13:20.005Z");
        assert_eq!(described(&past, now), "2023-11-14T22:13:17.120Z (2s ago)");
        assert_eq!(described(&None, now), "-");
        assert_eq!(rfc3339_or_null(&None), serde_json::Value::Null);
    }
}
