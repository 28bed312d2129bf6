//! What a simulation saw: counted while it runs, summed up at the end from
//! the service's own view of each agent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::plan::{Behaviour, TemplatePlay};
use crate::table;
use crate::time::short;

/// Counted by the gateway and the agents while the run goes on.
#[derive(Debug, Default)]
pub struct Tally {
    pub wakes_by_attempt: BTreeMap<u32, u64>,
    pub checkin_latencies: Vec<Duration>,
    /// Agents woken with a new template version, by what they did.
    pub template_plays: BTreeMap<TemplatePlay, u64>,
}

impl Tally {
    /// `picked up 7, kept the old one 2, crashed 1`; empty if none.
    pub fn template_summary(&self) -> String {
        let parts: Vec<String> = self
            .template_plays
            .iter()
            .map(|(play, n)| format!("{} {n}", play.describe()))
            .collect();
        parts.join(", ")
    }

    pub fn wakes(&self) -> u64 {
        self.wakes_by_attempt.values().sum()
    }
}

/// One agent at the end: its behaviour and the service's last word on it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub behaviour: Behaviour,
    pub status: String,
    pub wake_attempts: u32,
    pub offline_reason: String,
    pub last_provision_error: String,
    pub checkin_latency: Option<Duration>,
}

#[derive(Debug)]
pub struct Report {
    pub gateway_id: String,
    pub seed: u64,
    pub elapsed: Duration,
    /// Every agent settled (online for good, or offline) before the end.
    pub settled: bool,
    pub tally: Tally,
    pub outcomes: Vec<Outcome>,
}

impl Report {
    fn count(&self, status: &str) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }

    /// How many agents gave each non-empty value of `field`.
    fn histogram(&self, field: impl Fn(&Outcome) -> &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for text in self.outcomes.iter().map(field).filter(|t| !t.is_empty()) {
            *counts.entry(text.to_owned()).or_default() += 1;
        }
        counts
    }

    fn by_behaviour(&self) -> Vec<(&'static str, [usize; 4])> {
        Behaviour::NAMES
            .iter()
            .map(|&name| {
                let mine: Vec<&Outcome> = self
                    .outcomes
                    .iter()
                    .filter(|o| o.behaviour.name() == name)
                    .collect();
                let with = |status: &str| mine.iter().filter(|o| o.status == status).count();
                let (online, offline) = (with("online"), with("offline"));
                (
                    name,
                    [mine.len(), online, offline, mine.len() - online - offline],
                )
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let by_behaviour: serde_json::Map<String, Value> = self
            .by_behaviour()
            .into_iter()
            .map(|(name, [agents, online, offline, other])| {
                let counts =
                    json!({"agents": agents, "online": online, "offline": offline, "other": other});
                (name.to_owned(), counts)
            })
            .collect();
        let outcomes: Vec<Value> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({
                    "id": o.id,
                    "behaviour": o.behaviour.name(),
                    "checkin_attempt": o.behaviour.checkin_attempt(),
                    "status": o.status,
                    "wake_attempts": o.wake_attempts,
                    "offline_reason": o.offline_reason,
                    "last_provision_error": o.last_provision_error,
                    "checkin_latency_ms": o.checkin_latency.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        let latency = latency_summary(&self.tally.checkin_latencies);
        json!({
            "gateway_id": self.gateway_id,
            "seed": self.seed,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "settled": self.settled,
            "agents": self.outcomes.len(),
            "online": self.count("online"),
            "offline": self.count("offline"),
            "wakes_total": self.tally.wakes(),
            "wakes_by_attempt": self.tally.wakes_by_attempt.iter()
                .map(|(attempt, n)| (attempt.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "checkin_latency_ms": {
                "count": self.tally.checkin_latencies.len(),
                "min": latency.map(|[min, _, _]| min.as_millis() as u64),
                "median": latency.map(|[_, median, _]| median.as_millis() as u64),
                "max": latency.map(|[_, _, max]| max.as_millis() as u64),
            },
            "offline_reasons": self.histogram(|o| &o.offline_reason),
            "last_provision_errors": self.histogram(|o| &o.last_provision_error),
            "by_behaviour": by_behaviour,
            "new_templates": self.tally.template_plays.iter()
                .map(|(play, n)| (play.name().to_owned(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "outcomes": outcomes,
        })
    }

    pub fn to_text(&self) -> String {
        let ending = if self.settled {
            "every agent settled"
        } else {
            "stopped before every agent settled"
        };
        let mut text = format!(
            "simulated {} agents on gateway {} for {} ({ending}; seed {})\n\n",
            self.outcomes.len(),
            self.gateway_id,
            short(self.elapsed),
            self.seed
        );
        let wakes: Vec<String> = self
            .tally
            .wakes_by_attempt
            .iter()
            .map(|(attempt, n)| format!("attempt {attempt}: {n}"))
            .collect();
        text.push_str(&format!(
            "wakes received:   {} ({})\n",
            self.tally.wakes(),
            if wakes.is_empty() {
                "none".into()
            } else {
                wakes.join(", ")
            }
        ));
        let latencies = &self.tally.checkin_latencies;
        let latency =
            latency_summary(latencies).map_or("no check-ins".into(), |[min, median, max]| {
                format!(
                    "min {min:?}, median {median:?}, max {max:?} over {} check-ins",
                    latencies.len()
                )
            });
        text.push_str(&format!(
            "check-in latency: {latency} (from the wake to the first heartbeat)\n"
        ));
        let templates = self.tally.template_summary();
        if !templates.is_empty() {
            text.push_str(&format!("new templates:    {templates}\n"));
        }
        text.push_str(&format!("online:           {}\n", self.count("online")));
        text.push_str(&format!("offline:          {}\n", self.count("offline")));
        for (title, counts) in [
            ("offline because", self.histogram(|o| &o.offline_reason)),
            // Offline agents repeat their reason here: show only news.
            (
                "last wake error",
                self.histogram(|o| {
                    if o.last_provision_error == o.offline_reason {
                        ""
                    } else {
                        &o.last_provision_error
                    }
                }),
            ),
        ] {
            for (reason, n) in counts {
                text.push_str(&format!("  {n:>4} {title}: {reason}\n"));
            }
        }
        let rows: Vec<Vec<String>> = self
            .by_behaviour()
            .into_iter()
            .map(|(name, counts)| {
                std::iter::once(name.to_owned())
                    .chain(counts.iter().map(usize::to_string))
                    .collect()
            })
            .collect();
        text.push('\n');
        text.push_str(&table::render(
            &["BEHAVIOUR", "AGENTS", "ONLINE", "OFFLINE", "OTHER"],
            &rows,
        ));
        text.push_str(
            "\nThe simulated agents have stopped: those online go offline when their leases lapse.\n",
        );
        text
    }
}

/// Min, median and max, rounded to milliseconds; `None` when empty.
pub fn latency_summary(latencies: &[Duration]) -> Option<[Duration; 3]> {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let (first, last) = (sorted.first()?, sorted.last()?);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2
    } else {
        sorted[middle]
    };
    let millis = |d: Duration| Duration::from_millis(d.as_millis() as u64);
    Some([millis(*first), millis(median), millis(*last)])
}

#[cfg(test)]
mod tests;
