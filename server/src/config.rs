//! Command-line flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::engine::{Policy, policy::PolicyError};
use crate::net::{ConnectionSettings, PeerTlsFiles, TlsFiles};
use crate::runtime::{LeaseTiming, Settings};
use crate::store::PoolSettings;

/// A batch holds at most `max_batch` commands and as many timers and
/// recorded heartbeats together, one event each (wake failures are commands
/// too): a watcher's buffer must hold a whole batch.
const MIN_WATCH_BUFFER: usize = 2 * crate::runtime::MAX_BATCH;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The agent lifecycle control plane: provisions agents onto gateways, wakes
/// them, and knows at every moment whether each one has checked in.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mission-control",
    version,
    after_help = "To hash a token for --roles-file: echo -n TOKEN | mission-control hash-token"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "MC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Postgres connection URL, e.g. postgres://user@localhost:5432/missioncontrol.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "dev"
    )]
    pub database_url: Option<String>,

    /// Use an embedded in-memory store instead of Postgres (wins over
    /// --database-url). Needs no setup; NOT DURABLE: everything is lost when
    /// the process exits.
    #[arg(long)]
    pub dev: bool,

    // The policy's defaults come from `Policy::DEFAULT`, their one source.
    /// How long an agent has to check in after each wake.
    #[arg(long, env = "MC_CHECKIN_DEADLINE", default_value_t = Policy::DEFAULT.checkin_deadline.into())]
    pub checkin_deadline: humantime::Duration,

    /// Wakes without a check-in before the agent is marked offline.
    #[arg(long, env = "MC_MAX_WAKE_ATTEMPTS", default_value_t = Policy::DEFAULT.max_wake_attempts)]
    pub max_wake_attempts: u32,

    /// How often an online agent is told to heartbeat (jittered down by up
    /// to --heartbeat-jitter of it).
    #[arg(long, env = "MC_HEARTBEAT_INTERVAL", default_value_t = Policy::DEFAULT.heartbeat_interval.into())]
    pub heartbeat_interval: humantime::Duration,

    /// The share of the heartbeat interval taken off at random (0.0-1.0
    /// exclusive), so a fleet woken together does not beat together.
    #[arg(long, env = "MC_HEARTBEAT_JITTER", default_value_t = Policy::DEFAULT.heartbeat_jitter)]
    pub heartbeat_jitter: f64,

    /// An online agent without a heartbeat for this long goes offline ("lease expired").
    #[arg(long, env = "MC_LEASE_TTL", default_value_t = Policy::DEFAULT.lease_ttl.into())]
    pub lease_ttl: humantime::Duration,

    /// Deadlines that passed while the service was down move this far past
    /// the start, plus a spread of up to the same again.
    #[arg(long, env = "MC_RESTART_GRACE", default_value_t = Policy::DEFAULT.restart_grace.into())]
    pub restart_grace: humantime::Duration,

    /// While a gateway is disconnected, wakes for its agents are held (not
    /// counted) for up to this long from when it went away, and go out when
    /// it reconnects; after it, they count as failed attempts naming the
    /// gateway ("0s": never held). A few minutes covers a gateway's restart,
    /// host reboot or upgrade, and is longer than the whole per-agent policy,
    /// so a short outage never makes its fleet OFFLINE.
    #[arg(long, env = "MC_GATEWAY_GRACE", default_value_t = Policy::DEFAULT.gateway_grace.into())]
    pub gateway_grace: humantime::Duration,

    /// Wakes sent to one gateway per second, at most (bursts of as many):
    /// every wake, first or retry, an operator's, a rollout's, one held
    /// while the gateway was away. Beyond it wakes queue in deadline order,
    /// and each check-in deadline starts when its wake is sent, so a host
    /// starts its agents at a pace it can take (1,000 in 10 s).
    #[arg(long, env = "MC_GATEWAY_WAKE_RATE", default_value_t = Policy::DEFAULT.gateway_wake_rate)]
    pub gateway_wake_rate: u32,

    /// Wakes sent to all gateways together per second, at most (bursts of
    /// as many), queued likewise: a restart or a bulk action over 100,000
    /// agents wakes them in under two minutes without flooding the writer.
    #[arg(long, env = "MC_TOTAL_WAKE_RATE", default_value_t = Policy::DEFAULT.total_wake_rate)]
    pub total_wake_rate: u32,

    /// More than this share of a gateway's agents silent together makes the
    /// gateway suspected and stops their verdicts (1.0: never): Kubernetes'
    /// unhealthy-zone threshold, where one host's trouble is far likelier
    /// than that many agents failing alone.
    #[arg(long, env = "MC_BRAKE_SHARE", default_value_t = Policy::DEFAULT.brake_share)]
    pub brake_share: f64,

    /// The fewest silent agents that can make a gateway (or the fleet)
    /// suspected: as Kubernetes wants more than two not-ready nodes, one or
    /// two silent agents of a small gateway are judged one by one.
    #[arg(long, env = "MC_BRAKE_MIN_AGENTS", default_value_t = Policy::DEFAULT.brake_min_agents)]
    pub brake_min_agents: u32,

    /// An online agent unheard for longer than this (or a deadline missed
    /// within it) counts as silent. Default: 1.5 heartbeat intervals, at
    /// most halfway to the lease TTL, so a healthy agent is never counted and
    /// every agent that fell silent with the first lost lease already is.
    #[arg(long, env = "MC_BRAKE_WINDOW")]
    pub brake_window: Option<humantime::Duration>,

    /// More than this share of all agents silent together makes every
    /// gateway suspected (1.0: never): below any one gateway's share, since
    /// that many failing across gateways points at the network or this
    /// service.
    #[arg(long, env = "MC_FLEET_BRAKE_SHARE", default_value_t = Policy::DEFAULT.fleet_brake_share)]
    pub fleet_brake_share: f64,

    /// A gateway suspected this long without recovering starts draining:
    /// Kubernetes' pod eviction timeout, longer than a host reboot or a
    /// network repair and longer than --gateway-grace.
    #[arg(long, env = "MC_BRAKE_SUSPECT_FOR", default_value_t = Policy::DEFAULT.brake_suspect_for.into())]
    pub brake_suspect_for: humantime::Duration,

    /// Verdicts a second on a draining gateway's silent agents: a dead
    /// 1,000-agent gateway is reported in about 17 minutes, slowly enough
    /// for an operator to see the count climb and act.
    #[arg(long, env = "MC_BRAKE_DRAIN_RATE", default_value_t = Policy::DEFAULT.brake_drain_rate)]
    pub brake_drain_rate: f64,

    /// Start a wake cycle when an online agent's lease expires.
    #[arg(long, env = "MC_WAKE_ON_LEASE_EXPIRY")]
    pub wake_on_lease_expiry: bool,

    /// How often heartbeat-renewed leases are written to Postgres.
    #[arg(long, env = "MC_CHECKPOINT_INTERVAL", default_value_t = Settings::DEFAULT.checkpoint_interval.into())]
    pub checkpoint_interval: humantime::Duration,

    /// How long transition history is kept (for GetAgentHistory and watch resume).
    #[arg(long, env = "MC_EVENT_RETENTION", default_value_t = Settings::DEFAULT.event_retention.into())]
    pub event_retention: humantime::Duration,

    /// How often history older than the retention is deleted.
    #[arg(long, env = "MC_COMPACTION_INTERVAL", default_value_t = Settings::DEFAULT.compaction_interval.into())]
    pub compaction_interval: humantime::Duration,

    /// Events a watcher may fall behind before its stream is ended (at least
    /// 1024: one committed batch must always fit).
    #[arg(long, env = "MC_WATCH_BUFFER", default_value_t = Settings::DEFAULT.watch_buffer)]
    pub watch_buffer: usize,

    /// Watch streams open at once, at most; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MC_MAX_WATCHES", default_value_t = Settings::DEFAULT.max_watches)]
    pub max_watches: usize,

    /// How often an idle watch stream gets a bookmark.
    #[arg(long, env = "MC_WATCH_BOOKMARK_INTERVAL", default_value_t = Settings::DEFAULT.bookmark_interval.into())]
    pub watch_bookmark_interval: humantime::Duration,

    /// A command (wake, retire) a gateway has not acknowledged within this
    /// is sent again on its open stream, with the same command id (a new
    /// stream gets it at once). A third of the default check-in deadline: a
    /// lost wake still reaches the agent well before its deadline.
    #[arg(long, env = "MC_GATEWAY_ACK_TIMEOUT", default_value_t = Settings::DEFAULT.gateway_ack_timeout.into())]
    pub gateway_ack_timeout: humantime::Duration,

    /// Postgres connections in the pool.
    #[arg(long, env = "MC_DATABASE_CONNECTIONS", default_value_t = 16)]
    pub database_connections: usize,

    /// The leader lease: a stalled or dead leader is replaced within this.
    /// Its parts are fractions of it: the lease row expires 0.6 of it after
    /// each renewal (by the database's clock), the leader renews every 0.1
    /// and stops acting 0.5 after the start of its last good renewal.
    #[arg(long, env = "MC_LEADER_LEASE", default_value_t = Settings::DEFAULT.leader_lease.into())]
    pub leader_lease: humantime::Duration,

    /// The address other replicas use to reach this one (host:port), put in
    /// the lease while this replica leads: followers forward calls there.
    /// Default: the address --listen bound (its port resolved if 0; an
    /// unspecified IP becomes 127.0.0.1, only right on one machine).
    #[arg(long, env = "MC_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// How long to wait for Postgres to answer at start before giving up
    /// (a replica that reaches it but is not the leader waits as a
    /// follower, without limit).
    #[arg(long, env = "MC_DATABASE_STARTUP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub database_startup_timeout: Duration,

    /// On SIGTERM, how long calls in flight may take to finish.
    #[arg(long, env = "MC_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set).
    #[arg(long, env = "MC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// One admin token: every operator call (everything but agents'
    /// heartbeats and gateways' streams, which carry their own tokens) then
    /// needs `authorization: Bearer <token>`. On the command line it shows
    /// in `ps`: prefer MC_OPERATOR_TOKEN, --operator-token-file or
    /// --roles-file.
    #[arg(long, env = "MC_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,

    #[command(flatten)]
    pub edge: crate::edge::EdgeArgs,

    /// Serve TLS with this certificate chain (PEM). Needs --tls-key. The
    /// files are re-read every --tls-reload-interval and on SIGHUP; new
    /// connections get the new certificate, a file that does not load keeps
    /// the old one (and is logged).
    #[arg(long, env = "MC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key for --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "MC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Require every client to present a certificate signed by this CA
    /// (PEM; mutual TLS). Needs --tls-cert.
    #[arg(long, env = "MC_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// The CA that signs the other replicas' certificates, trusted when
    /// this replica forwards calls to the leader over TLS (PEM). Default:
    /// --tls-client-ca, else the system's roots. Needs --tls-cert; re-read
    /// with the other TLS files.
    #[arg(long, env = "MC_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// How often the TLS files are checked for a change.
    #[arg(long, env = "MC_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Open client connections at most. Default: 10000, or less to stay
    /// well below the open-file limit. At the cap, a new connection takes
    /// the place of the oldest one that has not finished its handshake;
    /// when none is left to replace, new connections are closed at once.
    #[arg(long, env = "MC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// From accept to the end of the TLS handshake and the HTTP/2 preface;
    /// a connection that has not spoken by then is closed.
    #[arg(long, env = "MC_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// A connection with no call in flight for this long is closed
    /// ("0s": never).
    #[arg(long, env = "MC_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A connection older than this is asked to go (HTTP/2 GOAWAY; clients
    /// reconnect, possibly to another replica) ("0s": never).
    #[arg(long, env = "MC_MAX_CONNECTION_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// After --max-connection-age, how long calls in flight (watch streams,
    /// gateway streams) may go on before the connection is closed.
    #[arg(long, env = "MC_MAX_CONNECTION_AGE_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// HTTP/2 PING to each client this often...
    #[arg(long, env = "MC_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// ...and close the connection when no answer comes within this.
    #[arg(long, env = "MC_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Concurrent calls (HTTP/2 streams) per connection.
    #[arg(long, env = "MC_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Log format. Filter with RUST_LOG (default: info).
    #[arg(long, env = "MC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// 1.5 heartbeat intervals, at most halfway from the interval to the lease
/// TTL (the default's 15 s for a 10 s beat and a 30 s lease).
fn default_brake_window(heartbeat: Duration, lease_ttl: Duration) -> Duration {
    let halfway = heartbeat + lease_ttl.saturating_sub(heartbeat) / 2;
    heartbeat.mul_f64(1.5).min(halfway)
}

impl Config {
    /// The defaults with an in-memory store, for tests and examples.
    pub fn dev() -> Self {
        Self::parse_from(["mission-control", "--dev"])
    }

    pub fn policy(&self) -> Result<Policy, PolicyError> {
        let policy = Policy {
            checkin_deadline: self.checkin_deadline.into(),
            max_wake_attempts: self.max_wake_attempts,
            heartbeat_interval: self.heartbeat_interval.into(),
            heartbeat_jitter: self.heartbeat_jitter,
            lease_ttl: self.lease_ttl.into(),
            restart_grace: self.restart_grace.into(),
            wake_on_lease_expiry: self.wake_on_lease_expiry,
            gateway_grace: self.gateway_grace.into(),
            gateway_wake_rate: self.gateway_wake_rate,
            total_wake_rate: self.total_wake_rate,
            brake_share: self.brake_share,
            brake_min_agents: self.brake_min_agents,
            brake_window: self.brake_window.map_or_else(
                || default_brake_window(self.heartbeat_interval.into(), self.lease_ttl.into()),
                Into::into,
            ),
            fleet_brake_share: self.fleet_brake_share,
            brake_suspect_for: self.brake_suspect_for.into(),
            brake_drain_rate: self.brake_drain_rate,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Everything the runtime needs, checked.
    pub fn settings(&self) -> Result<Settings, String> {
        for (flag, value) in [
            ("--checkpoint-interval", self.checkpoint_interval),
            ("--compaction-interval", self.compaction_interval),
            ("--watch-bookmark-interval", self.watch_bookmark_interval),
            ("--gateway-ack-timeout", self.gateway_ack_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if self
            .operator_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err("--operator-token must not be empty".into());
        }
        if *self.leader_lease < std::time::Duration::from_millis(100) {
            return Err("--leader-lease must be at least 100ms".into());
        }
        if self.watch_buffer < MIN_WATCH_BUFFER {
            return Err(format!(
                "--watch-buffer must be at least {MIN_WATCH_BUFFER} (one committed batch must fit)"
            ));
        }
        Ok(Settings {
            policy: self.policy().map_err(|e| e.to_string())?,
            checkpoint_interval: self.checkpoint_interval.into(),
            event_retention: self.event_retention.into(),
            compaction_interval: self.compaction_interval.into(),
            watch_buffer: self.watch_buffer,
            bookmark_interval: self.watch_bookmark_interval.into(),
            max_watches: self.max_watches,
            leader_lease: self.leader_lease.into(),
            gateway_ack_timeout: self.gateway_ack_timeout.into(),
            ..Settings::default()
        })
    }

    /// Where other replicas reach this one, given the bound address.
    pub fn advertise_address(&self, bound: SocketAddr) -> String {
        if let Some(address) = &self.advertise_address {
            return address.clone();
        }
        let mut bound = bound;
        if bound.ip().is_unspecified() {
            bound.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        bound.to_string()
    }

    /// The TLS files, when TLS is on; the flags must come together.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (None, None) if self.tls_client_ca.is_some() => {
                Err("--tls-client-ca needs --tls-cert and --tls-key".into())
            }
            (None, None) => Ok(None),
            (Some(_), None) => Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
        }
    }

    /// How this replica reaches the leader when it speaks TLS itself:
    /// trusting `--peer-ca` (else `--tls-client-ca`, else the system's
    /// roots) and presenting its own `--tls-cert`, which under mutual TLS
    /// must then allow client authentication too.
    pub fn peer_tls_files(&self) -> Result<Option<PeerTlsFiles>, String> {
        let Some(files) = self.tls_files()? else {
            return match self.peer_ca {
                Some(_) => Err("--peer-ca needs --tls-cert and --tls-key".into()),
                None => Ok(None),
            };
        };
        Ok(Some(PeerTlsFiles {
            ca: self.peer_ca.clone().or(files.client_ca),
            cert: files.cert,
            key: files.key,
        }))
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Whether every client must present a certificate (mutual TLS).
    pub fn client_certificates_required(&self) -> bool {
        self.tls_enabled() && self.tls_client_ca.is_some()
    }

    /// How connections are held, checked. `open_file_limit` sizes the
    /// default connection cap.
    pub fn connections(&self, open_file_limit: Option<u64>) -> Result<ConnectionSettings, String> {
        for (flag, value) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
            ("--http2-keepalive-timeout", self.http2_keepalive_timeout),
            ("--tls-reload-interval", self.tls_reload_interval),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if self.max_connections == Some(0) {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be at least 1".into());
        }
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Ok(ConnectionSettings {
            max_connections: self
                .max_connections
                .unwrap_or_else(|| crate::net::default_max_connections(open_file_limit)),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: nonzero(self.idle_timeout),
            max_connection_age: nonzero(self.max_connection_age),
            max_connection_age_grace: self.max_connection_age_grace,
            keepalive_interval: self.http2_keepalive_interval,
            keepalive_timeout: self.http2_keepalive_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
        })
    }

    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.database_connections.max(2),
            // A stopped leader's open transaction ends by the time its lease
            // row can expire.
            idle_transaction_timeout: LeaseTiming::new(self.leader_lease.into()).expiry(),
            ..PoolSettings::default()
        }
    }
}

/// True when `args` (the process's, program name first) carry the operator
/// token itself, where `ps` shows it to every user of the host.
pub fn operator_token_on_command_line<I, S>(args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    args.into_iter().skip(1).any(|arg| {
        let arg = arg.as_ref().to_string_lossy();
        arg == "--operator-token" || arg.starts_with("--operator-token=")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_default_to_the_policy_and_override_it() {
        let config = Config::dev();
        assert_eq!(config.policy().unwrap(), Policy::DEFAULT);
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
        let settings = config.settings().unwrap();
        assert_eq!(settings.max_batch, crate::runtime::MAX_BATCH);

        let set = Config::try_parse_from([
            "mission-control",
            "--dev",
            "--checkin-deadline",
            "45s",
            "--heartbeat-jitter",
            "0.5",
        ])
        .unwrap()
        .policy()
        .unwrap();
        assert_eq!(set.checkin_deadline, Duration::from_secs(45));
        assert_eq!(set.heartbeat_jitter, 0.5);
        assert_eq!(set.max_wake_attempts, Policy::DEFAULT.max_wake_attempts);
        let bad = Config::try_parse_from(["mission-control", "--dev", "--heartbeat-jitter", "1.5"]);
        assert_eq!(bad.unwrap().policy().unwrap_err(), PolicyError::Jitter);
    }

    #[test]
    fn the_runtime_flags_default_to_the_settings_and_override_them() {
        let settings = Config::dev().settings().unwrap();
        assert_eq!(format!("{settings:?}"), format!("{:?}", Settings::DEFAULT));

        let set = Config::try_parse_from([
            "mission-control",
            "--dev",
            "--event-retention",
            "2h",
            "--watch-buffer",
            "4096",
            "--leader-lease",
            "3s",
        ])
        .unwrap()
        .settings()
        .unwrap();
        assert_eq!(set.event_retention, Duration::from_secs(2 * 3600));
        assert_eq!(set.watch_buffer, 4096);
        assert_eq!(set.leader_lease, Duration::from_secs(3));
        assert_eq!(
            set.checkpoint_interval,
            Settings::DEFAULT.checkpoint_interval
        );
    }

    #[test]
    fn a_store_is_required_and_bad_policies_are_refused() {
        let no_store = Config::try_parse_from(["mission-control"]).unwrap_err();
        assert_eq!(
            no_store.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let zero = Config::try_parse_from(["mission-control", "--dev", "--max-wake-attempts", "0"])
            .unwrap();
        assert_eq!(zero.policy().unwrap_err(), PolicyError::NoAttempts);
        let tiny =
            Config::try_parse_from(["mission-control", "--dev", "--watch-buffer", "100"]).unwrap();
        assert!(tiny.settings().unwrap_err().contains("--watch-buffer"));
        let blank =
            Config::try_parse_from(["mission-control", "--dev", "--operator-token", " "]).unwrap();
        assert!(blank.settings().unwrap_err().contains("--operator-token"));
        let short =
            Config::try_parse_from(["mission-control", "--dev", "--lease-ttl", "5s"]).unwrap();
        assert!(matches!(
            short.policy().unwrap_err(),
            PolicyError::LeaseShorterThanInterval { .. }
        ));
        let soon =
            Config::try_parse_from(["mission-control", "--dev", "--checkin-deadline", "soon"])
                .unwrap_err();
        assert_eq!(soon.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn tls_flags_come_together_and_connection_limits_are_checked() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(["mission-control", "--dev"].iter().chain(args)).unwrap()
        };
        assert_eq!(parse(&[]).tls_files().unwrap().map(|f| f.cert), None);
        assert_eq!(
            parse(&["--tls-cert", "c.pem"]).tls_files().unwrap_err(),
            "--tls-cert needs --tls-key"
        );
        assert_eq!(
            parse(&["--tls-key", "c.key"]).tls_files().unwrap_err(),
            "--tls-key needs --tls-cert"
        );
        let ca_only = parse(&["--tls-client-ca", "ca.pem"]);
        assert!(ca_only.tls_files().unwrap_err().contains("--tls-client-ca"));
        assert!(!ca_only.client_certificates_required());
        let mutual = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "c.key",
            "--tls-client-ca",
            "ca.pem",
        ]);
        assert!(mutual.client_certificates_required());
        assert!(mutual.tls_files().unwrap().unwrap().client_ca.is_some());

        // Replicas trust --peer-ca, else the client CA, else the system.
        let peer_ca = |args: &[&str]| {
            let mut all = vec!["--tls-cert", "c.pem", "--tls-key", "c.key"];
            all.extend(args);
            let files = parse(&all).peer_tls_files().unwrap().unwrap();
            files.ca.map(|p| p.to_str().unwrap().to_owned())
        };
        assert_eq!(peer_ca(&[]), None);
        assert_eq!(
            peer_ca(&["--tls-client-ca", "ca.pem"]).as_deref(),
            Some("ca.pem")
        );
        let both = ["--tls-client-ca", "ca.pem", "--peer-ca", "peers.pem"];
        assert_eq!(peer_ca(&both).as_deref(), Some("peers.pem"));
        assert!(parse(&[]).peer_tls_files().unwrap().is_none());
        let alone = parse(&["--peer-ca", "peers.pem"]).peer_tls_files();
        assert!(alone.unwrap_err().contains("--peer-ca needs --tls-cert"));

        let defaults = parse(&[]).connections(Some(1024)).unwrap();
        assert_eq!(defaults.max_connections, 768);
        assert_eq!(
            defaults.idle_timeout,
            Some(std::time::Duration::from_secs(300))
        );
        let never = parse(&["--idle-timeout", "0s", "--max-connection-age", "0s"]);
        let never = never.connections(None).unwrap();
        assert_eq!((never.idle_timeout, never.max_connection_age), (None, None));
        for bad in [
            ["--max-connections", "0"],
            ["--handshake-timeout", "0s"],
            ["--max-concurrent-streams", "0"],
        ] {
            let error = parse(&bad).connections(None).unwrap_err();
            assert!(error.contains(bad[0]), "{error}");
        }
    }

    #[test]
    fn an_operator_token_on_the_command_line_is_noticed() {
        let on = |args: &[&str]| operator_token_on_command_line(args);
        assert!(on(&["mc", "--operator-token", "t"]));
        assert!(on(&["mc", "--dev", "--operator-token=t"]));
        assert!(!on(&["mc", "--operator-token-file", "/run/token"]));
        assert!(!on(&["mc", "--operator-token-file=/run/token"]));
        assert!(!on(&["--operator-token", "--dev"]));
    }
}
