//! `--gateway-outage AFTER+FOR`: when the simulated gateway's host goes
//! down and for how long, and where the run is in it.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub after: Duration,
    pub lasting: Duration,
}

pub fn parse(value: &str) -> Result<Outage, String> {
    let (after, lasting) = value
        .split_once('+')
        .ok_or_else(|| format!("expected AFTER+FOR (e.g. 20s+15s), got {value:?}"))?;
    let duration = |part: &str| {
        humantime::parse_duration(part.trim()).map_err(|error| format!("{part:?}: {error}"))
    };
    let outage = Outage {
        after: duration(after)?,
        lasting: duration(lasting)?,
    };
    if outage.lasting.is_zero() {
        return Err("the outage must last longer than 0s".into());
    }
    Ok(outage)
}

/// The outage as the run goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    Down,
    Back,
}

/// How long the run goes on after the host is back, so the gateway's
/// recovery shows.
pub const AFTERMATH: Duration = Duration::from_secs(5);

impl Outage {
    pub fn phase(&self, started: Instant, now: Instant) -> Phase {
        let elapsed = now.saturating_duration_since(started);
        if elapsed < self.after {
            Phase::Before
        } else if elapsed < self.after + self.lasting {
            Phase::Down
        } else {
            Phase::Back
        }
    }

    /// The run may end by itself (all settled) only from here on.
    pub fn over_at(&self, started: Instant) -> Instant {
        started + self.after + self.lasting + AFTERMATH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_and_for_are_durations() {
        assert_eq!(
            parse("20s+15s"),
            Ok(Outage {
                after: Duration::from_secs(20),
                lasting: Duration::from_secs(15),
            })
        );
        assert!(parse("20s").unwrap_err().contains("AFTER+FOR"));
        assert!(parse("20s+0s").is_err());
        assert!(parse("soon+15s").is_err());
    }

    #[test]
    fn the_phases_follow_the_clock() {
        let outage = parse("10s+5s").unwrap();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(outage.phase(start, at(9)), Phase::Before);
        assert_eq!(outage.phase(start, at(10)), Phase::Down);
        assert_eq!(outage.phase(start, at(14)), Phase::Down);
        assert_eq!(outage.phase(start, at(15)), Phase::Back);
        assert_eq!(outage.over_at(start), at(20));
    }
}
