//! The command line: flags, subcommands and the values they take.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mission_control_client::{AgentRole, AgentStatus};

use crate::bench::BenchArgs;
use crate::context::Output;
use crate::rollout::{DriftArgs, RolloutCommand};
use crate::simulate::SimulateArgs;

/// Operate a mission-control lifecycle service: register gateways, provision,
/// wake and delete agents, see why an agent is offline, watch the fleet live.
#[derive(Debug, Parser)]
#[command(name = "mcctl", version)]
pub struct Cli {
    /// The service to talk to: one endpoint, or several replicas separated
    /// by commas (a call that finds one unavailable is tried on the next).
    /// `https://` endpoints use TLS.
    #[arg(
        long,
        visible_alias = "endpoints",
        global = true,
        env = "MC_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,

    /// For `https://` endpoints: trust this CA (PEM) instead of the
    /// system's trust store.
    #[arg(long, global = true, env = "MC_CACERT")]
    pub cacert: Option<PathBuf>,

    /// For `https://` endpoints: present this client certificate (PEM), for
    /// a service that requires one (mutual TLS). Needs --key.
    #[arg(long, global = true, env = "MC_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The private key for --cert (PEM).
    #[arg(long, global = true, env = "MC_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// The service's `--operator-token`, if it runs with one (sent as
    /// `authorization: Bearer <token>`).
    #[arg(long, global = true, env = "MC_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,

    /// `table` for people; `json` for scripts (stable field names: one
    /// object, an array for lists, one object per line for streams).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register and list gateways.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Create an agent, or update it; either way it is woken.
    Provision(ProvisionArgs),
    /// Show one agent in full.
    Get { agent_id: String },
    /// List agents, ordered by id.
    List(Filters),
    /// Start a fresh cycle of wakes (operator recovery).
    Wake { agent_id: String },
    /// Delete an agent: its token stops working and its gateway retires it.
    Delete { agent_id: String },
    /// An agent's transitions, newest first: why is it offline?
    History {
        agent_id: String,
        /// How many transitions to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Check in once with an agent token (as the agent would).
    Heartbeat {
        /// The agent's token, as printed by `provision`.
        #[arg(long, env = "MC_AGENT_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Watch agents live: a snapshot, then every change.
    Watch(WatchArgs),
    /// Drifted agents (another template version reported than desired, or
    /// none) per gateway and board.
    Drift(DriftArgs),
    /// Roll a template version out over a gateway, a board or agents, wave
    /// by wave; follow, pause, resume or cancel it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Play a gateway with a fleet of agents and report how the policy treated them.
    Simulate(SimulateArgs),
    /// Load a fleet of agents and measure heartbeats against the health check.
    Bench(BenchArgs),
    /// The client side of a lease-expiry storm (see scripts/storm-bench):
    /// heartbeats of the fleet's others, and a watch of its OFFLINE events.
    Storm(crate::bench::storm::StormArgs),
    /// Open many full-fleet watches; the server's memory and health meanwhile.
    BenchWatchers(crate::bench::watchers::WatchersArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum GatewayCommand {
    /// Register a gateway (or rename one); prints its token once.
    Register {
        gateway_id: String,
        /// Display name; defaults to the id.
        #[arg(long, default_value = "", hide_default_value = true)]
        name: String,
        /// Mint a new token for an existing gateway (the old one stops working).
        #[arg(long)]
        rotate_token: bool,
    },
    /// List registered gateways and whether each is connected.
    List,
    /// Tell a gateway to sync its agent templates to a version. Kept until
    /// it connects and resent until it acknowledges; the request and its
    /// outcome show in the gateway's history.
    Sync {
        gateway_id: String,
        template_version: String,
    },
    /// A gateway's history, newest first (up to 100): when it connected or
    /// went away and why, how many held wakes waited when it came back, and
    /// template syncs asked for and answered.
    History { gateway_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    pub agent_id: String,
    /// The registered gateway that hosts the agent.
    #[arg(long)]
    pub gateway: String,
    #[arg(long, value_enum)]
    pub role: Role,
    /// Required for board roles.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub board: String,
    /// Display name; defaults to the id.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// The template version the agent should run.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub template_version: String,
    /// Mint a new token for an existing agent (the old one stops working).
    #[arg(long)]
    pub rotate_token: bool,
}

/// Which agents to list or watch; all filters combine with AND.
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    /// Only agents on this gateway.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub gateway: String,
    /// Only agents on this board.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub board: String,
    /// Any of these statuses (repeat the flag or separate with commas).
    #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
    pub status: Vec<Status>,
    /// Only agents whose reported template version differs from the desired
    /// one, or that never reported one.
    #[arg(long)]
    pub drifted: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Only this agent.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub agent: String,
    /// Resume after this revision instead of starting with a snapshot.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Also print lease renewals (always used by the live table).
    #[arg(long)]
    pub heartbeats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    GatewayMain,
    BoardLead,
    BoardWorker,
}

impl From<Role> for AgentRole {
    fn from(role: Role) -> Self {
        match role {
            Role::GatewayMain => AgentRole::GatewayMain,
            Role::BoardLead => AgentRole::BoardLead,
            Role::BoardWorker => AgentRole::BoardWorker,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    Provisioning,
    Updating,
    Online,
    Offline,
}

impl From<Status> for AgentStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Provisioning => AgentStatus::Provisioning,
            Status::Updating => AgentStatus::Updating,
            Status::Online => AgentStatus::Online,
            Status::Offline => AgentStatus::Offline,
        }
    }
}

impl Filters {
    pub fn statuses(&self) -> Vec<i32> {
        self.status
            .iter()
            .map(|s| AgentStatus::from(*s) as i32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mcctl").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_go_anywhere_and_default_sensibly() {
        let cli = parse(&["list"]).unwrap();
        assert_eq!(cli.output, Output::Table);
        assert!(cli.endpoint.starts_with("http://"));
        let cli = parse(&["list", "--output", "json", "--endpoint", "http://h:1"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.endpoint, "http://h:1");
        let cli = parse(&[
            "list",
            "--endpoints",
            "https://a:1,https://b:2",
            "--cacert",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
        ])
        .unwrap();
        assert_eq!(cli.endpoint, "https://a:1,https://b:2");
        assert_eq!(cli.cacert.unwrap().to_str(), Some("ca.pem"));
        assert!(
            parse(&["list", "--cert", "c.pem"]).is_err(),
            "--cert needs --key"
        );
    }

    #[test]
    fn provision_takes_a_role_in_kebab_case() {
        let cli = parse(&[
            "provision",
            "a1",
            "--gateway",
            "gw",
            "--role",
            "board-worker",
            "--board",
            "b1",
            "--rotate-token",
        ])
        .unwrap();
        let Command::Provision(args) = cli.command else {
            panic!("not provision");
        };
        assert_eq!(args.role, Role::BoardWorker);
        assert_eq!(args.board, "b1");
        assert!(args.rotate_token);
        assert!(parse(&["provision", "a1", "--gateway", "gw", "--role", "boss"]).is_err());
        assert!(parse(&["provision", "a1", "--role", "board-lead"]).is_err());
    }

    #[test]
    fn statuses_repeat_or_split_on_commas() {
        let cli = parse(&["list", "--status", "online,offline", "--status", "updating"]).unwrap();
        let Command::List(filters) = cli.command else {
            panic!("not list");
        };
        assert_eq!(
            filters.statuses(),
            [
                AgentStatus::Online as i32,
                AgentStatus::Offline as i32,
                AgentStatus::Updating as i32
            ]
        );
        assert!(parse(&["list", "--status", "asleep"]).is_err());
    }

    #[test]
    fn watch_takes_the_list_filters_and_an_agent() {
        let cli = parse(&["watch", "--gateway", "gw", "--agent", "a1", "--since", "7"]).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("not watch");
        };
        assert_eq!(args.filters.gateway, "gw");
        assert_eq!(args.agent, "a1");
        assert_eq!(args.since, 7);
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
