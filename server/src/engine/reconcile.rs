//! What happens when time passes: check-in deadlines and lease expiries.

use super::batch::{Change, Note, NoteKind};
use super::model::{Agent, Reason, SharedStr, Status};
use super::timers::{Timer, TimerKind};
use super::{Batch, Engine};

impl Engine {
    /// Processes every timer due at the batch's time.
    pub fn fire_due(&mut self, batch: &mut Batch) {
        self.fire_due_at_most(batch, usize::MAX);
    }

    /// Applies recorded heartbeats, then processes due timers, earliest
    /// first, `limit` of the two at most; the rest wait for the next batch,
    /// so neither a mass expiry nor a check-in storm makes one huge batch.
    pub fn fire_due_at_most(&mut self, batch: &mut Batch, limit: usize) {
        let applied = self.apply_pending_checkins(batch, limit);
        // Braked gateways first: a recovery or a drain changes what the
        // timers below mean.
        self.review_brakes(batch);
        // Timers get what is left, so none fires while a recorded heartbeat
        // still waits: it may be the one that wins the deadline.
        let due = self.timers.pop_due(batch.now, limit - applied);
        for timer in &due {
            match timer.kind {
                TimerKind::Checkin {
                    generation,
                    attempt,
                } => self.checkin_deadline(batch, timer, generation, attempt),
                TimerKind::Lease => self.lease_deadline(batch, timer),
            }
        }
        batch.fired.extend(due);
        self.release_due(batch);
        self.advance_rollouts(batch);
    }

    fn checkin_deadline(
        &mut self,
        batch: &mut Batch,
        timer: &Timer,
        generation: u64,
        attempt: u32,
    ) {
        // A skip names the task as it was armed; every other note names the
        // agent as the decision left it, so `retriggered` and
        // `queue.worker.success` carry the new attempt with its own deadline,
        // as the transition logged beside them does.
        let note = |batch: &mut Batch, kind, attempt, deadline| {
            batch.notes.push(Note {
                kind,
                agent_id: timer.agent_id.clone(),
                generation,
                attempt,
                deadline,
            })
        };
        let Some(agent) = self.current(batch, &timer.agent_id) else {
            note(batch, NoteKind::SkipMissingAgent, attempt, Some(timer.at));
            return;
        };
        if agent.wake_held && agent.generation == generation && agent.wake_attempts == attempt {
            // A held or queued wake is never judged: it was not sent. Only
            // a gateway away for its whole grace makes it count as failed;
            // one back meanwhile (or away again since) leaves it waiting.
            let after = match self.hold_over(batch, &agent) {
                Some(true) => self.expire_hold(batch, agent),
                Some(false) => agent,
                // Connected: it waits for its budget; a round sends it.
                None => {
                    batch.release_by(batch.now);
                    agent
                }
            };
            note(
                batch,
                NoteKind::WorkerSuccess,
                attempt,
                sent_deadline(&after),
            );
            return;
        }
        let verdict = self.judge_deadline(batch, &agent, generation, attempt);
        if self.braked_verdict(batch, timer, &agent, verdict) {
            return;
        }
        let verdict_at = batch.notes.len();
        note(
            batch,
            verdict,
            attempt,
            agent.checkin_deadline_at.or(Some(timer.at)),
        );
        let after = match verdict {
            NoteKind::Deferred => {
                let at = agent
                    .checkin_deadline_at
                    .expect("deferred only with a deadline");
                batch.timers_to_arm.push(Timer {
                    at,
                    ..timer.clone()
                });
                agent
            }
            NoteKind::Retriggered => {
                let mut next = agent.clone();
                self.send_wake(batch, &mut next);
                let retriggered = &mut batch.notes[verdict_at];
                retriggered.attempt = next.wake_attempts;
                retriggered.deadline = sent_deadline(&next);
                let change = Change::changed(&agent, Reason::DeadlineMissed, next.wake_attempts);
                self.stage(batch, change, next)
            }
            NoteKind::MaxAttemptsReached => {
                let error = self.max_attempts_error(&agent);
                self.go_offline(batch, agent, Reason::MaxAttemptsReached, error)
            }
            NoteKind::SkipMissingGateway => {
                let error = format!("gateway {} is not registered", agent.gateway_id);
                self.go_offline(batch, agent, Reason::WakeFailed, error)
            }
            _ => agent,
        };
        let attempt = if after.generation == generation {
            after.wake_attempts
        } else {
            attempt
        };
        note(
            batch,
            NoteKind::WorkerSuccess,
            attempt,
            sent_deadline(&after),
        );
    }

    /// A missed last deadline on a braked gateway: suspected, no OFFLINE
    /// (the timer is armed again a window later); draining, the OFFLINE
    /// waits for its slot at the drain rate. A missed earlier deadline goes
    /// its normal way: the next wake is held while the gateway is suspected
    /// (see `hold_until`). Returns whether the brake took the verdict.
    fn braked_verdict(
        &mut self,
        batch: &mut Batch,
        timer: &Timer,
        agent: &Agent,
        verdict: NoteKind,
    ) -> bool {
        if verdict != NoteKind::MaxAttemptsReached {
            return false;
        }
        match self.brake_on(batch, &agent.gateway_id) {
            Some(brake) => !self.verdict_allowed(batch, &brake, timer),
            None => false,
        }
    }

    /// Decides what a fired check-in timer means for the agent as it is now.
    fn judge_deadline(
        &self,
        batch: &Batch,
        agent: &Agent,
        generation: u64,
        attempt: u32,
    ) -> NoteKind {
        if agent.generation != generation {
            return NoteKind::SkipStaleGeneration;
        }
        let Some(deadline) = agent.checkin_deadline_at else {
            return NoteKind::SkipNotStuck;
        };
        if agent.wake_attempts != attempt {
            return NoteKind::SkipStaleGeneration;
        }
        if deadline > batch.now {
            return NoteKind::Deferred;
        }
        if !self.gateway_in_batch(batch, agent) {
            NoteKind::SkipMissingGateway
        } else if agent.wake_attempts >= self.policy.max_wake_attempts {
            NoteKind::MaxAttemptsReached
        } else {
            NoteKind::Retriggered
        }
    }

    /// Escalation stops: offline, with the reason recorded.
    fn go_offline(
        &mut self,
        batch: &mut Batch,
        agent: Agent,
        reason: Reason,
        error: String,
    ) -> Agent {
        let mut offline = agent.clone();
        offline.status = Status::Offline;
        offline.checkin_deadline_at = None;
        offline.lease_expires_at = None;
        // One copy for both.
        let shared = SharedStr::from(error.as_str());
        offline.last_provision_error = Some(shared.clone());
        offline.offline_reason = Some(shared);
        let change = Change::changed(&agent, reason, agent.wake_attempts).with_error(Some(error));
        self.stage(batch, change, offline)
    }

    fn max_attempts_error(&self, agent: &Agent) -> String {
        let base = format!("no check-in after {} wake attempts", agent.wake_attempts);
        match &agent.last_provision_error {
            Some(last) => format!("{base} (last error: {last})"),
            None => base,
        }
    }

    fn lease_deadline(&mut self, batch: &mut Batch, timer: &Timer) {
        let Some(agent) = self.current(batch, &timer.agent_id) else {
            return;
        };
        if agent.status != Status::Online {
            return;
        }
        match agent.lease_expires_at {
            Some(expiry) if expiry > batch.now => {
                // Heartbeats renewed the lease since the entry was armed.
                batch.timers_to_arm.push(Timer {
                    at: expiry,
                    ..timer.clone()
                });
            }
            _ => {
                if let Some(brake) = self.brake_on(batch, &agent.gateway_id)
                    && !self.verdict_allowed(batch, &brake, timer)
                {
                    return;
                }
                self.expire_lease(batch, agent)
            }
        }
    }

    pub(super) fn expire_lease(&mut self, batch: &mut Batch, agent: Agent) {
        let mut offline = agent.clone();
        offline.status = Status::Offline;
        offline.offline_reason = Some(self.lease_expired.clone());
        let mut attempt = 0;
        if self.policy.wake_on_lease_expiry {
            self.start_wake_cycle(batch, &mut offline);
            attempt = offline.wake_attempts;
        }
        let change = Change::changed(&agent, Reason::LeaseExpired, attempt);
        self.stage(batch, change, offline);
    }

    fn gateway_in_batch(&self, batch: &Batch, agent: &Agent) -> bool {
        batch.gateways.contains_key(&agent.gateway_id)
            || self.gateways.contains_key(&agent.gateway_id)
    }
}

/// The agent's check-in deadline, if its wake went out: a held or queued
/// wake's `checkin_deadline_at` is its place in the queue, not a deadline.
fn sent_deadline(agent: &Agent) -> Option<super::model::Timestamp> {
    agent.checkin_deadline_at.filter(|_| !agent.wake_held)
}
