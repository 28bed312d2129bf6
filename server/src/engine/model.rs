//! The lifecycle's domain types: identifiers that parse on construction,
//! timestamps, agents, gateways and the events that record each transition.

use std::num::NonZeroU64;
use std::{fmt, time::Duration};

use arcstr::ArcStr;
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
/// BENCHMARKS.md, memory per agent). An `ArcStr` is one word where an
/// `Arc<str>` is two (pointer and length): the length lives beside the
/// count, and the engine holds several ids per agent.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(ArcStr);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(ArcStr::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's own allocation, as text (an agent named as its id
            /// shares it).
            pub fn to_shared(&self) -> SharedStr {
                SharedStr(self.0.clone())
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
                id.0.as_str().to_owned()
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

// One word each, and nothing for the niche: an agent holds eight such
// fields and the engine's indexes one more id each.
const _: () = assert!(size_of::<AgentId>() == 8 && size_of::<Option<SharedStr>>() == 8);

/// Text many agents hold the same copy of: a template version (a fleet
/// runs a handful), a name that is the agent's id. Cloned by reference
/// count; compares, hashes, prints and serializes as the string it holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SharedStr(ArcStr);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        Self(ArcStr::from(s))
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        Self(ArcStr::from(s))
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> String {
        s.0.as_str().to_owned()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == *other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

/// As a `String` prints: an agent's Debug output did not change with it.
impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// One shared copy of each text a fleet repeats, for a read of many agents
/// (a store's load): gateway and board ids, template versions, names that
/// are the agent's id. Made while reading, rather than swapped in after,
/// the copies never exist: freed between the agents' own allocations, they
/// would stay resident as holes (BENCHMARKS.md, memory per agent).
#[derive(Debug, Default)]
pub struct Interner {
    gateways: std::collections::HashMap<String, GatewayId>,
    boards: std::collections::HashMap<String, BoardId>,
    texts: std::collections::HashSet<SharedStr>,
}

impl Interner {
    pub fn gateway(&mut self, id: &str) -> Result<GatewayId, InvalidId> {
        if let Some(shared) = self.gateways.get(id) {
            return Ok(shared.clone());
        }
        let parsed = GatewayId::parse(id)?;
        self.gateways.insert(id.to_owned(), parsed.clone());
        Ok(parsed)
    }

    pub fn board(&mut self, id: &str) -> Result<BoardId, InvalidId> {
        if let Some(shared) = self.boards.get(id) {
            return Ok(shared.clone());
        }
        let parsed = BoardId::parse(id)?;
        self.boards.insert(id.to_owned(), parsed.clone());
        Ok(parsed)
    }

    pub fn text(&mut self, text: &str) -> SharedStr {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        let text = SharedStr::from(text);
        self.texts.insert(text.clone());
        text
    }

    /// The agent's name: its id's own copy when it is named as its id.
    pub fn name(&mut self, name: &str, id: &AgentId) -> SharedStr {
        if name == id.as_str() {
            id.to_shared()
        } else {
            SharedStr::from(name)
        }
    }
}

/// Wall-clock time in microseconds since the Unix epoch: Postgres's own
/// precision, so a stored timestamp round-trips exactly.
///
/// Stored with its sign bit flipped in a `NonZeroU64` (the order of the
/// bits is then the order of the times), so that `Option<Timestamp>` takes
/// 8 bytes, not 16: an agent has four of them (BENCHMARKS.md, memory per
/// agent). The one value given up, `i64::MIN` microseconds (292,000 years
/// before the epoch), reads as the next one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(NonZeroU64);

const SIGN: u64 = 1 << 63;

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        let micros = if micros == i64::MIN {
            micros + 1
        } else {
            micros
        };
        match NonZeroU64::new(micros as u64 ^ SIGN) {
            Some(bits) => Self(bits),
            None => panic!("only i64::MIN maps to zero"),
        }
    }

    pub const fn as_micros(self) -> i64 {
        (self.0.get() ^ SIGN) as i64
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => {
                Self::from_micros(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX))
            }
        }
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        let micros = self.as_micros();
        let magnitude = Duration::from_micros(micros.unsigned_abs());
        if micros >= 0 {
            std::time::UNIX_EPOCH + magnitude
        } else {
            std::time::UNIX_EPOCH - magnitude
        }
    }

    pub fn plus(self, d: Duration) -> Self {
        Self::from_micros(
            self.as_micros()
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    pub fn minus(self, d: Duration) -> Self {
        Self::from_micros(
            self.as_micros()
                .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(
            u64::try_from(self.as_micros().saturating_sub(earlier.as_micros())).unwrap_or(0),
        )
    }
}

/// As the derived one would print the microseconds.
impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_micros()).finish()
    }
}

/// The microseconds, as before the representation changed (events store
/// agents as JSON).
impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.as_micros())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(Self::from_micros)
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
    pub name: SharedStr,
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
    /// Rare, and when set often the same text: 16 bytes each, shared.
    pub last_provision_error: Option<SharedStr>,
    pub offline_reason: Option<SharedStr>,
    pub desired_template_version: SharedStr,
    pub reported_template_version: SharedStr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_their_order_and_value_in_eight_bytes() {
        assert_eq!(size_of::<Option<Timestamp>>(), 8);
        let values = [
            i64::MIN + 1,
            -1_000_000,
            -1,
            0,
            1,
            1_800_000_000_000_000,
            i64::MAX,
        ];
        for pair in values.windows(2) {
            let (a, b) = (
                Timestamp::from_micros(pair[0]),
                Timestamp::from_micros(pair[1]),
            );
            assert!(a < b, "{a:?} < {b:?}");
        }
        for micros in values {
            let t = Timestamp::from_micros(micros);
            assert_eq!(t.as_micros(), micros);
            assert_eq!(format!("{t:?}"), format!("Timestamp({micros})"));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, micros.to_string());
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
        // The one value given up reads as the next.
        assert_eq!(Timestamp::from_micros(i64::MIN).as_micros(), i64::MIN + 1);
        let early = Timestamp::from_micros(i64::MIN + 5);
        assert_eq!(
            early.minus(Duration::from_secs(1)),
            Timestamp::from_micros(i64::MIN + 1)
        );
    }
}
