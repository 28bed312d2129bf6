//! Driving rollouts: start, pause, resume, cancel, and the step that runs
//! at the end of every batch, judging the agents in flight from their
//! transitions and starting the next wave.

use super::{
    Progress, Rollout, RolloutAgent, RolloutError, RolloutSpec, RolloutState, Selection, Wave,
};
use crate::engine::batch::Change;
use crate::engine::model::{Agent, AgentId, Reason, RolloutId, Status};
use crate::engine::{AgentFilter, Batch, Engine};

/// What an agent in flight has come to.
enum Verdict {
    Waiting,
    Done,
    Failed(String),
}

impl Engine {
    pub fn rollout(&self, id: &RolloutId) -> Option<&Rollout> {
        self.rollouts.get(id)
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Vec<&Rollout> {
        let mut all: Vec<&Rollout> = self.rollouts.values().collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        all
    }

    /// Starts a rollout and its first wave.
    pub fn start_rollout(
        &mut self,
        batch: &mut Batch,
        id: RolloutId,
        spec: RolloutSpec,
    ) -> Result<Rollout, RolloutError> {
        if self.rollout_in(batch, &id).is_some() {
            return Err(RolloutError::InvalidState(format!(
                "rollout {id} already exists"
            )));
        }
        let selected = self.select(batch, &spec.selection)?;
        // One active rollout per agent.
        let mut overlapping = selected
            .iter()
            .filter_map(|agent| Some((self.active_rollout_of(batch, agent)?, agent)));
        if let Some((rollout, example)) = overlapping.next() {
            return Err(RolloutError::Overlap {
                rollout,
                example: example.clone(),
                count: 1 + overlapping.count(),
            });
        }
        let total = selected.len();
        let rollout = Rollout {
            id: id.clone(),
            template_version: spec.template_version,
            selection: spec.selection,
            max_in_flight_asked: spec.max_in_flight,
            max_in_flight: spec.max_in_flight.resolve(total, true).max(1),
            failure_budget_asked: spec.failure_budget,
            failure_budget: spec.failure_budget.resolve(total, false),
            state: RolloutState::Running,
            reason: None,
            agents: selected
                .into_iter()
                .map(|agent_id| RolloutAgent {
                    agent_id,
                    progress: Progress::Pending,
                })
                .collect(),
            waves: Vec::new(),
            created_at: batch.now,
            updated_at: batch.now,
            finished_at: None,
        };
        batch.rollouts.insert(id.clone(), rollout);
        self.advance_rollout(batch, &id);
        Ok(self.rollout_in(batch, &id).expect("staged above"))
    }

    /// Stops starting waves; agents in flight are still judged.
    pub fn pause_rollout(
        &mut self,
        batch: &mut Batch,
        id: &RolloutId,
    ) -> Result<Rollout, RolloutError> {
        let mut rollout = self.active(batch, id)?;
        if rollout.state == RolloutState::Running {
            rollout.state = RolloutState::Paused;
            rollout.reason = Some("paused by an operator".to_owned());
            rollout.updated_at = batch.now;
            batch.rollouts.insert(id.clone(), rollout.clone());
        }
        Ok(rollout)
    }

    /// Starts waves again. `failure_budget` replaces the budget; a rollout
    /// whose failures still exceed its budget stays paused.
    pub fn resume_rollout(
        &mut self,
        batch: &mut Batch,
        id: &RolloutId,
        failure_budget: Option<super::Limit>,
    ) -> Result<Rollout, RolloutError> {
        let mut rollout = self.active(batch, id)?;
        if let Some(budget) = failure_budget {
            rollout.failure_budget_asked = budget;
            rollout.failure_budget = budget.resolve(rollout.agents.len(), false);
        }
        let failed = rollout.counts().failed;
        if failed > rollout.failure_budget as usize {
            return Err(RolloutError::InvalidState(format!(
                "{failed} agents failed, more than the failure budget of {}: resume with a larger failure budget",
                rollout.failure_budget
            )));
        }
        rollout.state = RolloutState::Running;
        rollout.reason = None;
        rollout.updated_at = batch.now;
        batch.rollouts.insert(id.clone(), rollout);
        self.advance_rollout(batch, id);
        Ok(self.rollout_in(batch, id).expect("staged above"))
    }

    /// Ends the rollout: pending agents are left as they are; agents in
    /// flight keep their wake cycle but are no longer judged.
    pub fn cancel_rollout(
        &mut self,
        batch: &mut Batch,
        id: &RolloutId,
    ) -> Result<Rollout, RolloutError> {
        let mut rollout = self.active(batch, id)?;
        rollout.state = RolloutState::Cancelled;
        rollout.reason = Some("cancelled by an operator".to_owned());
        rollout.updated_at = batch.now;
        rollout.finished_at = Some(batch.now);
        batch.rollouts.insert(id.clone(), rollout.clone());
        Ok(rollout)
    }

    /// Advances every rollout with an agent changed in this batch: the
    /// last step of staging a batch, so a verdict and the wave it lets
    /// start are committed with the transition that caused them.
    pub fn advance_rollouts(&mut self, batch: &mut Batch) {
        let mut touched: Vec<RolloutId> = batch
            .agents
            .keys()
            .filter_map(|agent| self.rollout_index.get(agent))
            .cloned()
            .collect();
        touched.sort();
        touched.dedup();
        for id in touched {
            self.advance_rollout(batch, &id);
        }
    }

    fn advance_rollout(&mut self, batch: &mut Batch, id: &RolloutId) {
        let Some(mut rollout) = self.rollout_in(batch, id) else {
            return;
        };
        if !rollout.state.is_active() {
            return;
        }
        let before = rollout.clone();
        self.judge_in_flight(batch, &mut rollout);
        loop {
            let counts = rollout.counts();
            if counts.in_flight > 0 || rollout.state != RolloutState::Running {
                break;
            }
            if let Some(wave) = rollout.waves.last_mut()
                && wave.finished_at.is_none()
            {
                wave.finished_at = Some(batch.now);
            }
            if counts.pending == 0 {
                rollout.state = RolloutState::Completed;
                rollout.finished_at = Some(batch.now);
                break;
            }
            if counts.failed > rollout.failure_budget as usize {
                rollout.state = RolloutState::Paused;
                rollout.reason = Some(format!(
                    "failure budget spent: {} of {} agents failed (budget {}); {} not started",
                    counts.failed, counts.agents, rollout.failure_budget, counts.pending
                ));
                break;
            }
            self.start_wave(batch, &mut rollout);
        }
        if rollout != before {
            rollout.updated_at = batch.now;
            batch.rollouts.insert(id.clone(), rollout);
        }
    }

    /// Judges each agent in flight by what it is now.
    fn judge_in_flight(&self, batch: &Batch, rollout: &mut Rollout) {
        let now = batch.now;
        let version = rollout.template_version.clone();
        for entry in &mut rollout.agents {
            let Progress::InFlight { wave, .. } = entry.progress else {
                continue;
            };
            let agent = self.current(batch, &entry.agent_id);
            entry.progress = match judge(agent.as_ref(), &version) {
                Verdict::Waiting => continue,
                Verdict::Done => Progress::Done { wave, at: now },
                Verdict::Failed(reason) => Progress::Failed {
                    wave,
                    reason,
                    at: now,
                },
            };
        }
    }

    /// Re-provisions up to `max_in_flight` pending agents, in id order.
    /// Agents already on the version, or deleted, are skipped and take no
    /// slot.
    fn start_wave(&mut self, batch: &mut Batch, rollout: &mut Rollout) {
        let wave = rollout.waves.len() as u32 + 1;
        let mut started = 0;
        for index in 0..rollout.agents.len() {
            if started == rollout.max_in_flight {
                break;
            }
            if rollout.agents[index].progress != Progress::Pending {
                continue;
            }
            let agent_id = rollout.agents[index].agent_id.clone();
            rollout.agents[index].progress = match self.current(batch, &agent_id) {
                None => Progress::Skipped {
                    reason: "deleted before its wave".to_owned(),
                },
                Some(agent) if on_version(&agent, &rollout.template_version) => Progress::Skipped {
                    reason: format!("already running {}", rollout.template_version),
                },
                Some(agent) => {
                    started += 1;
                    let generation = self.rollout_update(batch, agent, rollout);
                    Progress::InFlight { wave, generation }
                }
            };
        }
        if started > 0 {
            rollout.waves.push(Wave {
                started_at: batch.now,
                finished_at: None,
            });
        }
    }

    /// The agent re-provisioned with the rollout's version: UPDATING, a
    /// fresh wake cycle under the normal check-in policy. Its generation.
    fn rollout_update(&mut self, batch: &mut Batch, previous: Agent, rollout: &Rollout) -> u64 {
        let mut agent = previous.clone();
        agent.desired_template_version = rollout.template_version.as_str().into();
        agent.status = Status::Updating;
        agent.lease_expires_at = None;
        agent.last_provision_error = None;
        agent.offline_reason = None;
        self.start_wake_cycle(batch, &mut agent);
        let change = Change {
            rollout_id: Some(rollout.id.clone()),
            ..Change::changed(&previous, Reason::RolloutUpdate, 1)
        };
        self.stage(batch, change, agent).generation
    }

    /// The selected agents, in id order, or why there are none.
    fn select(&self, batch: &Batch, selection: &Selection) -> Result<Vec<AgentId>, RolloutError> {
        let selected: Vec<AgentId> = match selection {
            Selection::Agents(ids) => {
                let mut ids = ids.clone();
                ids.sort();
                ids.dedup();
                if let Some(missing) = ids.iter().find(|id| self.current(batch, id).is_none()) {
                    return Err(RolloutError::UnknownAgent(missing.clone()));
                }
                ids
            }
            Selection::Fleet {
                gateway_id,
                board_id,
            } => {
                if let Some(gateway) = gateway_id
                    && self.gateway_in(batch, gateway).is_none()
                {
                    return Err(RolloutError::UnknownGateway(gateway.clone()));
                }
                let filter = AgentFilter {
                    gateway_id: gateway_id.clone(),
                    ..AgentFilter::default()
                };
                let on_board = |agent: &&Agent| {
                    board_id
                        .as_ref()
                        .is_none_or(|board| agent.board_id.as_ref() == Some(board))
                };
                if let Some(board) = board_id
                    && !self
                        .agents
                        .values()
                        .any(|a| a.board_id.as_ref() == Some(board))
                {
                    return Err(RolloutError::UnknownBoard(board.clone()));
                }
                self.agents()
                    .filter(|agent| filter.matches(agent))
                    .filter(on_board)
                    .map(|agent| agent.id.clone())
                    .collect()
            }
        };
        if selected.is_empty() {
            return Err(RolloutError::EmptySelection);
        }
        Ok(selected)
    }

    /// The active rollout holding this agent, staged or committed.
    fn active_rollout_of(&self, batch: &Batch, agent: &AgentId) -> Option<RolloutId> {
        let staged = batch
            .rollouts
            .values()
            .find(|r| r.state.is_active() && r.contains(agent));
        if let Some(rollout) = staged {
            return Some(rollout.id.clone());
        }
        let id = self.rollout_index.get(agent)?;
        // Ended in this batch: no longer holds it.
        let ended = batch.rollouts.get(id).is_some_and(|r| !r.state.is_active());
        (!ended).then(|| id.clone())
    }

    fn active(&self, batch: &Batch, id: &RolloutId) -> Result<Rollout, RolloutError> {
        let rollout = self
            .rollout_in(batch, id)
            .ok_or_else(|| RolloutError::NotFound(id.clone()))?;
        if !rollout.state.is_active() {
            return Err(RolloutError::InvalidState(format!(
                "rollout {id} is {}",
                rollout.state.as_str()
            )));
        }
        Ok(rollout)
    }

    fn rollout_in(&self, batch: &Batch, id: &RolloutId) -> Option<Rollout> {
        batch
            .rollouts
            .get(id)
            .or_else(|| self.rollouts.get(id))
            .cloned()
    }

    /// Applies a committed rollout and keeps the agent index in step.
    pub(in crate::engine) fn commit_rollout(&mut self, rollout: Rollout) {
        if let Some(old) = self.rollouts.get(&rollout.id) {
            for agent in &old.agents {
                if self.rollout_index.get(&agent.agent_id) == Some(&old.id) {
                    self.rollout_index.remove(&agent.agent_id);
                }
            }
        }
        if rollout.state.is_active() {
            for agent in &rollout.agents {
                self.rollout_index
                    .insert(agent.agent_id.clone(), rollout.id.clone());
            }
        }
        self.rollouts.insert(rollout.id.clone(), rollout);
    }
}

/// Whether the agent already runs the version: nothing to roll out.
fn on_version(agent: &Agent, version: &str) -> bool {
    agent.status == Status::Online
        && !agent.awaiting_checkin()
        && agent.desired_template_version == version
        && agent.reported_template_version == version
}

fn judge(agent: Option<&Agent>, version: &str) -> Verdict {
    let Some(agent) = agent else {
        return Verdict::Failed("deleted during the rollout".to_owned());
    };
    if agent.desired_template_version != version {
        return Verdict::Failed(format!(
            "re-provisioned with template version {:?} during the rollout",
            agent.desired_template_version
        ));
    }
    match agent.status {
        Status::Offline => Verdict::Failed(
            agent
                .offline_reason
                .clone()
                .or_else(|| agent.last_provision_error.clone())
                .map_or_else(|| "offline".to_owned(), String::from),
        ),
        Status::Online if !agent.awaiting_checkin() => {
            if agent.reported_template_version == version {
                Verdict::Done
            } else if agent.reported_template_version.is_empty() {
                Verdict::Failed("checked in without reporting a template version".to_owned())
            } else {
                Verdict::Failed(format!(
                    "checked in still reporting template version {:?}",
                    agent.reported_template_version
                ))
            }
        }
        _ => Verdict::Waiting,
    }
}
