//! The lifecycle's domain types: identifiers that parse on construction,
//! timestamps, agents, gateways and the events that record each transition.

use std::sync::Arc;
use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("is required")]
    Empty,
    #[error("is longer than {MAX_ID_LEN} characters")]
    TooLong,
    #[error("may contain only letters, digits, '.', '_' and '-'")]
    BadCharacter,
}

const MAX_ID_LEN: usize = 64;

fn check_id(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(InvalidId::BadCharacter);
    }
    Ok(())
}

/// Ids are shared, not copied: the engine keeps an agent's id in several
/// indexes (the agent map, the token index, the timer wheel, dirty leases)
/// and every agent of a gateway or board names the same one, so a clone is
/// a reference count, and one allocation serves them all (see
/// BENCHMARKS.md, memory per agent).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An agent's stable identity, chosen by the operator.
    AgentId
);
id_type!(
    /// A registered gateway's identity.
    GatewayId
);
id_type!(
    /// The board an agent works on.
    BoardId
);
id_type!(
    /// A template rollout, named by the service when it starts.
    RolloutId
);

/// Wall-clock time in microseconds since the Unix epoch: Postgres's own
/// precision, so a stored timestamp round-trips exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        let magnitude = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            std::time::UNIX_EPOCH + magnitude
        } else {
            std::time::UNIX_EPOCH - magnitude
        }
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_micros(self.to_system_time())
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Provisioning,
    Updating,
    Online,
    Offline,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Provisioning,
        Status::Updating,
        Status::Online,
        Status::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioning => "provisioning",
            Status::Updating => "updating",
            Status::Online => "online",
            Status::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    GatewayMain,
    BoardLead,
    BoardWorker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::GatewayMain, Role::BoardLead, Role::BoardWorker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::GatewayMain => "gateway_main",
            Role::BoardLead => "board_lead",
            Role::BoardWorker => "board_worker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == s)
    }

    pub fn needs_board(self) -> bool {
        !matches!(self, Role::GatewayMain)
    }
}

/// SHA-256 of a token. Tokens are random, so a fast hash is safe, and lookup
/// is one hash-map probe instead of a slow hash against every agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl fmt::Debug for TokenHash {
    /// Only a short prefix: enough to correlate, never enough to matter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub gateway_id: GatewayId,
    pub board_id: Option<BoardId>,
    pub role: Role,
    pub status: Status,
    pub generation: u64,
    pub wake_attempts: u32,
    pub last_wake_sent_at: Option<Timestamp>,
    pub checkin_deadline_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
    pub lease_expires_at: Option<Timestamp>,
    pub last_provision_error: Option<String>,
    pub offline_reason: Option<String>,
    pub desired_template_version: String,
    pub reported_template_version: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The revision of the last committed event about this agent.
    pub revision: u64,
    /// The current attempt's wake waits to go out, for its gateway to
    /// reconnect or behind the wake rate limits: not sent, not counted
    /// against the agent. `checkin_deadline_at` is then when the wake fell
    /// due, its place in the queue.
    #[serde(default)]
    pub wake_held: bool,
    /// Never serialized into event history.
    #[serde(skip)]
    pub token_hash: TokenHash,
}

impl Agent {
    /// Whether a check-in deadline is pending (a wake cycle is running).
    pub fn awaiting_checkin(&self) -> bool {
        self.checkin_deadline_at.is_some()
    }

    /// Whether the agent runs another template than it should: it reports
    /// a version other than the desired one, or has never reported one.
    pub fn drifted(&self) -> bool {
        self.reported_template_version.is_empty()
            || self.reported_template_version != self.desired_template_version
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: GatewayId,
    pub name: String,
    pub token_hash: TokenHash,
    pub created_at: Timestamp,
    /// Whether its command stream is open, since when, and why.
    pub link: super::gateway_state::Link,
    /// The mass-failure brake, when engaged on it.
    pub brake: Option<super::brake::Brake>,
}

/// A retire command the gateway has not yet acknowledged as delivered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PendingRetire {
    pub gateway_id: GatewayId,
    pub agent_id: AgentId,
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Added,
    Changed,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Changed => "changed",
            EventKind::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [EventKind::Added, EventKind::Changed, EventKind::Deleted]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Provisioned,
    Updated,
    Woken,
    DeadlineMissed,
    MaxAttemptsReached,
    CheckedIn,
    LeaseExpired,
    WakeFailed,
    RestartGrace,
    TemplateReported,
    Deleted,
    /// A rollout re-provisioned the agent with its template version.
    RolloutUpdate,
    /// The wake could not reach the gateway: held until it reconnects.
    WakeHeld,
    /// A wake that waited (held for its gateway, or queued behind a wake
    /// rate limit) was sent: the deadline starts.
    WakeReleased,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Provisioned,
        Reason::Updated,
        Reason::Woken,
        Reason::DeadlineMissed,
        Reason::MaxAttemptsReached,
        Reason::CheckedIn,
        Reason::LeaseExpired,
        Reason::WakeFailed,
        Reason::RestartGrace,
        Reason::TemplateReported,
        Reason::Deleted,
        Reason::RolloutUpdate,
        Reason::WakeHeld,
        Reason::WakeReleased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Provisioned => "provisioned",
            Reason::Updated => "updated",
            Reason::Woken => "woken",
            Reason::DeadlineMissed => "deadline_missed",
            Reason::MaxAttemptsReached => "max_attempts_reached",
            Reason::CheckedIn => "checked_in",
            Reason::LeaseExpired => "lease_expired",
            Reason::WakeFailed => "wake_failed",
            Reason::RestartGrace => "restart_grace",
            Reason::TemplateReported => "template_reported",
            Reason::Deleted => "deleted",
            Reason::RolloutUpdate => "rollout_update",
            Reason::WakeHeld => "wake_held",
            Reason::WakeReleased => "wake_released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a transition for this reason can change an agent's drift:
    /// what it reports, or what it should run.
    pub fn may_change_drift(self) -> bool {
        matches!(
            self,
            Reason::Provisioned
                | Reason::Updated
                | Reason::CheckedIn
                | Reason::TemplateReported
                | Reason::RolloutUpdate
                | Reason::Deleted
        )
    }
}

/// One committed transition of one agent: the unit of history and of watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    /// The agent after the change (as it was, for a deletion).
    pub agent: Agent,
    pub previous_status: Option<Status>,
    /// The board before the change (an update may move the agent).
    pub previous_board_id: Option<BoardId>,
    pub reason: Reason,
    pub attempt: u32,
    pub error: Option<String>,
    pub at: Timestamp,
    /// The rollout that caused this transition, if one did.
    pub rollout_id: Option<RolloutId>,
}

impl Event {
    /// A sentence for people: "woken attempt 2", "checked in".
    pub fn description(&self) -> String {
        let attempt = self.attempt;
        match self.reason {
            Reason::Provisioned => "provisioned, woken attempt 1".to_owned(),
            Reason::Updated => "updated, woken attempt 1".to_owned(),
            Reason::Woken => "woken by operator, attempt 1".to_owned(),
            Reason::DeadlineMissed => format!("check-in deadline missed, woken attempt {attempt}"),
            Reason::MaxAttemptsReached => {
                format!("no check-in after {attempt} wake attempts, escalation stopped")
            }
            Reason::CheckedIn if attempt > 0 => format!("checked in after wake attempt {attempt}"),
            Reason::CheckedIn => "checked in".to_owned(),
            Reason::LeaseExpired => "lease expired".to_owned(),
            Reason::WakeFailed => format!("wake attempt {attempt} failed"),
            Reason::RestartGrace => "deadline extended after a service restart".to_owned(),
            Reason::TemplateReported => "reported a new template version".to_owned(),
            Reason::Deleted => "deleted".to_owned(),
            Reason::WakeHeld => format!(
                "wake attempt {attempt} held: gateway {} is not connected",
                self.agent.gateway_id
            ),
            Reason::WakeReleased => format!(
                "waiting wake attempt {attempt} sent to gateway {}",
                self.agent.gateway_id
            ),
            Reason::RolloutUpdate => {
                let rollout = self.rollout_id.as_ref().map_or("?", RolloutId::as_str);
                format!(
                    "updated to template version {} by rollout {rollout}, woken attempt 1",
                    self.agent.desired_template_version
                )
            }
        }
    }
}
