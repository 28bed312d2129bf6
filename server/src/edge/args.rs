//! The edge's flags, flattened into the service's configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Operator credentials: one `NAME ROLE sha256:HEX` (or `NAME ROLE
    /// subject:SUBJECT` for mutual TLS) per line, ROLE `viewer` or `admin`.
    /// Reloaded when the file changes and on SIGHUP. Hash a token with
    /// `mission-control hash-token`.
    #[arg(long, env = "MC_ROLES_FILE")]
    pub roles_file: Option<PathBuf>,

    /// A file holding one admin token (a shortcut for a one-line roles
    /// file). Prefer it, or MC_OPERATOR_TOKEN, to --operator-token, which
    /// shows in `ps`.
    #[arg(
        long,
        env = "MC_OPERATOR_TOKEN_FILE",
        conflicts_with = "operator_token"
    )]
    pub operator_token_file: Option<PathBuf>,

    /// Serve beyond loopback without operator credentials or required
    /// client certificates. Anyone who can reach the port can then
    /// provision, delete and rotate tokens.
    #[arg(long, env = "MC_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,

    /// How often the roles file is checked for changes.
    #[arg(long, env = "MC_ROLES_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub roles_reload_interval: Duration,

    /// The longest a unary call may take, reading its request included; a
    /// shorter `grpc-timeout` from the client wins.
    #[arg(long, env = "MC_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Health `Watch` streams open at once, at most; more get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "MC_MAX_HEALTH_WATCHES", default_value_t = 256)]
    pub max_health_watches: usize,
}
