//! The simulated fleet's state: what each agent is meant to do, what the
//! gateway has seen, and what the service says about each agent.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mission_control_client::Endpoints;
use mission_control_client::agent::AgentClient;
use mission_control_client::watch_agent_response::Kind;
use mission_control_client::{
    Agent, AgentStatus, Backoff, EventType, ProvisionResponse, WakeCommand, WatchAgentResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::agent::{self, AgentReport, Launch};
use super::plan::{Behaviour, TemplatePlay};
use super::report::{Outcome, Tally};
use crate::time::instant;

/// How long agent tasks get to finish their last heartbeat at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct SimAgent {
    behaviour: Behaviour,
    /// Set once this run has provisioned the agent.
    token: Option<String>,
    /// The generation this run's provision gave it: older wakes (an earlier
    /// run's) are not this run's.
    generation: Option<u64>,
    /// Wakes that overtook the provision reply, judged once it arrives.
    early_wakes: Vec<WakeCommand>,
    /// The wake it answers, if it arrived (possibly before the token did).
    answering: Option<(Instant, Option<SystemTime>)>,
    started: bool,
    /// The service's latest view, from the provision reply and the watch.
    server: Option<Agent>,
    deleted: bool,
    checkin_latency: Option<Duration>,
    template: TemplatePlay,
    /// The template version its process runs and reports, once started.
    running: Option<String>,
    /// Stops its current process.
    retire: Option<watch::Sender<bool>>,
}

pub struct Settings {
    pub endpoints: Endpoints,
    pub startup_delay: Duration,
    pub flaky_beats: u32,
    pub rng: fastrand::Rng,
}

pub struct Fleet {
    agents: BTreeMap<String, SimAgent>,
    pub tally: Tally,
    settings: Settings,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    host_down: watch::Sender<bool>,
    reports: mpsc::UnboundedSender<AgentReport>,
}

/// Counts for the live summary line.
pub struct Progress {
    pub provisioned: usize,
    pub online: usize,
    pub offline: usize,
    pub awaiting: usize,
}

impl Fleet {
    pub fn new(
        plan: impl IntoIterator<Item = (String, Behaviour, TemplatePlay)>,
        settings: Settings,
    ) -> (Self, mpsc::UnboundedReceiver<AgentReport>) {
        let agents = plan
            .into_iter()
            .map(|(id, behaviour, template)| {
                let agent = SimAgent {
                    template,
                    running: None,
                    retire: None,
                    behaviour,
                    token: None,
                    generation: None,
                    early_wakes: Vec::new(),
                    answering: None,
                    started: false,
                    server: None,
                    deleted: false,
                    checkin_latency: None,
                };
                (id, agent)
            })
            .collect();
        let (reports, receiver) = mpsc::unbounded_channel();
        let fleet = Self {
            agents,
            tally: Tally::default(),
            settings,
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
            host_down: watch::Sender::new(false),
            reports,
        };
        (fleet, receiver)
    }

    /// A wake reached the gateway (and was acknowledged as delivered). Only
    /// this run's agents, at this run's generation or later, count.
    pub fn on_wake(&mut self, command: &WakeCommand) {
        let Some(agent) = self.agents.get_mut(&command.agent_id) else {
            return;
        };
        match agent.generation {
            None => return agent.early_wakes.push(command.clone()),
            Some(generation) if command.generation < generation => return,
            Some(_) => {}
        }
        *self
            .tally
            .wakes_by_attempt
            .entry(command.attempt)
            .or_default() += 1;
        let deadline = instant(&command.checkin_deadline_at);
        if let Some(running) = agent.running.clone()
            && running != command.template_version
        {
            // A new template: the process stops, and restarts as it plays.
            if let Some(retire) = agent.retire.take() {
                retire.send_replace(true);
            }
            agent.running = match agent.template {
                TemplatePlay::PicksUp => Some(command.template_version.clone()),
                TemplatePlay::KeepsOld => Some(running),
                TemplatePlay::Crashes => None,
            };
            *self.tally.template_plays.entry(agent.template).or_default() += 1;
            if agent.running.is_some() {
                agent.answering = Some((Instant::now(), deadline));
                self.launch(&command.agent_id);
            }
            return;
        }
        if agent.started || agent.behaviour.checkin_attempt() != Some(command.attempt) {
            return;
        }
        agent.running = Some(command.template_version.clone());
        agent.answering = Some((Instant::now(), deadline));
        self.launch(&command.agent_id);
    }

    pub fn on_provisioned(&mut self, id: &str, reply: ProvisionResponse) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.token = Some(reply.agent_token);
        agent.generation = Some(reply.agent.as_ref().map_or(0, |a| a.generation));
        if let Some(state) = reply.agent {
            update(agent, state);
        }
        // Wakes may have overtaken the provision reply.
        for wake in std::mem::take(&mut agent.early_wakes) {
            self.on_wake(&wake);
        }
    }

    pub fn on_watch(&mut self, message: &WatchAgentResponse) {
        let Some(Kind::Event(event)) = &message.kind else {
            return;
        };
        let Some(state) = &event.agent else {
            return;
        };
        if let Some(agent) = self.agents.get_mut(&state.id) {
            agent.deleted |= event.r#type == EventType::Deleted as i32;
            update(agent, state.clone());
        }
    }

    pub fn on_report(&mut self, report: AgentReport) {
        match report {
            AgentReport::CheckedIn { id, latency } => {
                self.tally.checkin_latencies.push(latency);
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.checkin_latency = Some(latency);
                }
            }
            AgentReport::Failed { id, error } => {
                eprintln!("warning: agent {id} stopped heartbeating: {error}");
            }
        }
    }

    /// Starts the agent's process once it has both its wake and its token.
    fn launch(&mut self, id: &str) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        let (Some(token), Some((woken_at, deadline))) = (&agent.token, agent.answering) else {
            return;
        };
        agent.started = true;
        let client = match AgentClient::with_endpoints(self.settings.endpoints.clone(), token) {
            Ok(client) => client.with_backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(2),
            )),
            Err(error) => return eprintln!("warning: agent {id} cannot start: {error}"),
        };
        let unit = self.settings.rng.f64();
        let startup = agent::startup_delay(
            self.settings.startup_delay,
            deadline,
            SystemTime::now(),
            unit,
        );
        let client = client.with_template_version(agent.running.clone().unwrap_or_default());
        let beats = (agent.behaviour == Behaviour::Flaky).then_some(self.settings.flaky_beats);
        let (retire, retired) = watch::channel(false);
        agent.retire = Some(retire);
        let launch = Launch {
            id: id.to_owned(),
            client,
            woken_at,
            startup,
            beats,
            retired,
            host_down: self.host_down.subscribe(),
        };
        agent::spawn(
            &mut self.tasks,
            launch,
            self.stop.subscribe(),
            self.reports.clone(),
        );
    }

    /// Freezes every agent process (the host is down), or lets them go on.
    pub fn set_host_down(&self, down: bool) {
        self.host_down.send_replace(down);
    }

    pub fn provisioned(&self) -> usize {
        self.agents.values().filter(|a| a.token.is_some()).count()
    }

    /// Every agent is provisioned and done: online for good, or offline,
    /// with no check-in awaited (or deleted by someone else).
    pub fn settled(&self) -> bool {
        self.agents.values().all(|agent| {
            let Some(state) = agent.server.as_ref().filter(|_| agent.token.is_some()) else {
                return false;
            };
            let status = state.status();
            agent.deleted
                || (state.checkin_deadline_at.is_none()
                    && (status == AgentStatus::Offline
                        || (status == AgentStatus::Online && agent.behaviour.stays_online())))
        })
    }

    pub fn progress(&self) -> Progress {
        let states: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| a.token.is_some() && !a.deleted)
            .filter_map(|a| a.server.as_ref())
            .collect();
        let with = |status| states.iter().filter(|a| a.status() == status).count();
        let (online, offline) = (with(AgentStatus::Online), with(AgentStatus::Offline));
        Progress {
            provisioned: self.provisioned(),
            online,
            offline,
            awaiting: states.len() - online - offline,
        }
    }

    /// Stops every agent task (their leases will lapse on their own).
    pub async fn stop(&mut self) {
        self.stop.send_replace(true);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, all_done).await.is_err() {
            self.tasks.abort_all();
        }
    }

    /// Each agent's ending, judged by `finals` (a fresh listing) when it has
    /// the agent, else by the last state the watch showed.
    pub fn outcomes(&self, finals: &BTreeMap<String, Agent>) -> Vec<Outcome> {
        self.agents
            .iter()
            .map(|(id, agent)| {
                let state = finals.get(id).or(agent.server.as_ref());
                let status = match state {
                    // Whatever is there is an earlier run's agent.
                    _ if agent.token.is_none() => "not-provisioned".to_owned(),
                    Some(_) if agent.deleted => "deleted".to_owned(),
                    Some(state) => crate::names::status(state.status),
                    None => "missing".to_owned(),
                };
                let state = state.cloned().unwrap_or_default();
                Outcome {
                    id: id.clone(),
                    behaviour: agent.behaviour,
                    status,
                    wake_attempts: state.wake_attempts,
                    offline_reason: state.offline_reason,
                    last_provision_error: state.last_provision_error,
                    checkin_latency: agent.checkin_latency,
                }
            })
            .collect()
    }
}

/// Keeps the newest state: replies and watch events can arrive in any order.
fn update(agent: &mut SimAgent, state: Agent) {
    if agent
        .server
        .as_ref()
        .is_none_or(|s| s.revision <= state.revision)
    {
        agent.server = Some(state);
    }
}
