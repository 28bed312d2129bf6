//! Who does what in a simulated fleet: shares of behaviours, checked, turned
//! into exact counts and dealt out to agents at random.

/// How one simulated agent answers its wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Checks in on the first wake and heartbeats until the end.
    FirstWake,
    /// Ignores wakes before `attempt` (2 or 3), then checks in and stays.
    LaterWake { attempt: u32 },
    /// Never checks in: escalation runs its course to offline.
    Never,
    /// Checks in on the first wake, heartbeats a few times, then goes
    /// silent so its lease expires.
    Flaky,
}

impl Behaviour {
    pub const NAMES: [&'static str; 4] = ["first-wake", "later-wake", "never", "flaky"];

    pub fn name(self) -> &'static str {
        match self {
            Behaviour::FirstWake => Self::NAMES[0],
            Behaviour::LaterWake { .. } => Self::NAMES[1],
            Behaviour::Never => Self::NAMES[2],
            Behaviour::Flaky => Self::NAMES[3],
        }
    }

    /// The wake attempt on which the agent checks in, if it ever does.
    pub fn checkin_attempt(self) -> Option<u32> {
        match self {
            Behaviour::FirstWake | Behaviour::Flaky => Some(1),
            Behaviour::LaterWake { attempt } => Some(attempt),
            Behaviour::Never => None,
        }
    }

    /// Whether, once online, it keeps heartbeating until the run ends.
    pub fn stays_online(self) -> bool {
        matches!(self, Behaviour::FirstWake | Behaviour::LaterWake { .. })
    }
}

/// The fraction of agents for each behaviour; agents left over (when the
/// shares sum to less than 1) check in on the first wake.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub first_wake: f64,
    pub later_wake: f64,
    pub never: f64,
    pub flaky: f64,
}

impl Shares {
    /// Each share within 0..=1, all together at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let named = self.named();
        for (flag, share) in named {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!(
                    "--{flag} must be a fraction within 0..1, got {share}"
                ));
            }
        }
        let sum: f64 = named.iter().map(|(_, share)| share).sum();
        // A little slack, so 0.7 + 0.2 + 0.1 is not refused over rounding.
        if sum > 1.0 + 1e-9 {
            let terms: Vec<String> = named
                .iter()
                .map(|(flag, share)| format!("--{flag} {share}"))
                .collect();
            return Err(format!(
                "the shares must sum to at most 1, but {} = {sum:.2}",
                terms.join(" + ")
            ));
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, f64); 4] {
        [
            (Behaviour::NAMES[0], self.first_wake),
            (Behaviour::NAMES[1], self.later_wake),
            (Behaviour::NAMES[2], self.never),
            (Behaviour::NAMES[3], self.flaky),
        ]
    }

    /// Exact counts for `agents` agents, in `Behaviour::NAMES` order, by
    /// largest remainder, so they always add up to `agents`.
    pub fn counts(&self, agents: usize) -> [usize; 4] {
        let named = self.named();
        let rest = (1.0 - named.iter().map(|(_, s)| s).sum::<f64>()).max(0.0);
        let quotas: Vec<f64> = named
            .iter()
            .map(|(_, share)| *share)
            .chain([rest])
            .map(|share| share * agents as f64)
            .collect();
        let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
        by_remainder.sort_by(|&a, &b| {
            let fraction = |i: usize| quotas[i] - quotas[i].floor();
            fraction(b).total_cmp(&fraction(a)).then(a.cmp(&b))
        });
        let short = agents.saturating_sub(counts.iter().sum());
        for &i in by_remainder.iter().cycle().take(short) {
            counts[i] += 1;
        }
        // The leftover share behaves as first-wake.
        [counts[0] + counts[4], counts[1], counts[2], counts[3]]
    }
}

/// One behaviour per agent, shuffled; later-wake agents pick wake 2 or 3.
pub fn deal(shares: &Shares, agents: usize, rng: &mut fastrand::Rng) -> Vec<Behaviour> {
    let [first, later, never, flaky] = shares.counts(agents);
    let mut behaviours = Vec::with_capacity(agents);
    behaviours.extend(std::iter::repeat_n(Behaviour::FirstWake, first));
    for _ in 0..later {
        let attempt = rng.u32(2..=3);
        behaviours.push(Behaviour::LaterWake { attempt });
    }
    behaviours.extend(std::iter::repeat_n(Behaviour::Never, never));
    behaviours.extend(std::iter::repeat_n(Behaviour::Flaky, flaky));
    rng.shuffle(&mut behaviours);
    behaviours
}

/// What an agent does when a wake brings a template version other than the
/// one it runs (a rollout, or a re-provision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TemplatePlay {
    /// Restarts on the new version and reports it.
    PicksUp,
    /// Restarts, but keeps reporting the version it ran before.
    KeepsOld,
    /// Stops on the new version and never checks in again.
    Crashes,
}

impl TemplatePlay {
    pub fn name(self) -> &'static str {
        match self {
            TemplatePlay::PicksUp => "picked_up",
            TemplatePlay::KeepsOld => "kept_old",
            TemplatePlay::Crashes => "crashed",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            TemplatePlay::PicksUp => "picked up",
            TemplatePlay::KeepsOld => "kept the old one",
            TemplatePlay::Crashes => "crashed",
        }
    }
}

/// `keeps_old` and `crashes` of `agents` (shares, rounded down), the rest
/// picking up new templates, shuffled.
pub fn deal_templates(
    keeps_old: f64,
    crashes: f64,
    agents: usize,
    rng: &mut fastrand::Rng,
) -> Result<Vec<TemplatePlay>, String> {
    for (flag, share) in [
        ("keeps-old-template", keeps_old),
        ("crashes-on-new-template", crashes),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!(
                "--{flag} must be a fraction within 0..1, got {share}"
            ));
        }
    }
    if keeps_old + crashes > 1.0 + 1e-9 {
        return Err("--keeps-old-template and --crashes-on-new-template sum to more than 1".into());
    }
    let old = (keeps_old * agents as f64).floor() as usize;
    let crash = ((crashes * agents as f64).floor() as usize).min(agents - old);
    let mut plays = Vec::with_capacity(agents);
    plays.extend(std::iter::repeat_n(TemplatePlay::KeepsOld, old));
    plays.extend(std::iter::repeat_n(TemplatePlay::Crashes, crash));
    plays.resize(agents, TemplatePlay::PicksUp);
    rng.shuffle(&mut plays);
    Ok(plays)
}

/// `sim-0001`, `sim-0002`, ...: sorted order is numeric order.
pub fn agent_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{:04}", index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Shares = Shares {
        first_wake: 0.5,
        later_wake: 0.2,
        never: 0.2,
        flaky: 0.1,
    };

    #[test]
    fn template_plays_are_dealt_by_share_and_checked() {
        let mut rng = fastrand::Rng::with_seed(3);
        let plays = deal_templates(0.2, 0.1, 10, &mut rng).unwrap();
        let count = |play| plays.iter().filter(|p| **p == play).count();
        assert_eq!(count(TemplatePlay::KeepsOld), 2);
        assert_eq!(count(TemplatePlay::Crashes), 1);
        assert_eq!(count(TemplatePlay::PicksUp), 7);
        assert!(deal_templates(0.7, 0.4, 10, &mut rng).is_err());
        assert!(deal_templates(-0.1, 0.0, 10, &mut rng).is_err());
    }

    #[test]
    fn shares_outside_0_1_or_summing_past_1_are_refused_clearly() {
        assert!(DEFAULTS.validate().is_ok());
        let negative = Shares {
            never: -0.1,
            ..DEFAULTS
        };
        assert_eq!(
            negative.validate().unwrap_err(),
            "--never must be a fraction within 0..1, got -0.1"
        );
        let too_big = Shares {
            flaky: 1.5,
            ..DEFAULTS
        };
        assert!(
            too_big
                .validate()
                .unwrap_err()
                .starts_with("--flaky must be")
        );
        let nan = Shares {
            first_wake: f64::NAN,
            ..DEFAULTS
        };
        assert!(nan.validate().is_err());
        let over = Shares {
            never: 0.5,
            ..DEFAULTS
        };
        assert_eq!(
            over.validate().unwrap_err(),
            "the shares must sum to at most 1, but --first-wake 0.5 + --later-wake 0.2 \
             + --never 0.5 + --flaky 0.1 = 1.30"
        );
        let rounding = Shares {
            first_wake: 0.7,
            later_wake: 0.2,
            never: 0.1,
            flaky: 0.0,
        };
        assert!(rounding.validate().is_ok());
    }

    #[test]
    fn counts_always_add_up_and_leftovers_check_in_first() {
        assert_eq!(DEFAULTS.counts(20), [10, 4, 4, 2]);
        assert_eq!(DEFAULTS.counts(10), [5, 2, 2, 1]);
        assert_eq!(DEFAULTS.counts(7), [4, 1, 1, 1]);
        assert_eq!(DEFAULTS.counts(0), [0, 0, 0, 0]);
        let partial = Shares {
            first_wake: 0.0,
            later_wake: 0.0,
            never: 0.25,
            flaky: 0.0,
        };
        assert_eq!(partial.counts(8), [6, 0, 2, 0]);
        for n in 0..50 {
            assert_eq!(DEFAULTS.counts(n).iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn dealing_follows_the_counts_and_later_wakes_pick_2_or_3() {
        let mut rng = fastrand::Rng::with_seed(7);
        let behaviours = deal(&DEFAULTS, 100, &mut rng);
        let count = |name| behaviours.iter().filter(|b| b.name() == name).count();
        assert_eq!(count("first-wake"), 50);
        assert_eq!(count("never"), 20);
        assert!(behaviours.iter().all(|b| match b {
            Behaviour::LaterWake { attempt } => (2..=3).contains(attempt),
            _ => true,
        }));
        assert_ne!(behaviours[..50], [Behaviour::FirstWake; 50], "shuffled");
        assert_eq!(agent_id("sim", 0), "sim-0001");
    }
}
