//! The durable store, on Postgres through a deadpool connection pool.
//!
//! A batch is one transaction sent in one round trip (see `commit`): each
//! kind of write is a single statement over arrays (`unnest`), so a batch
//! costs the same whether it holds one transition or a thousand.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

mod commit;
mod event_json;
mod fleet;

use super::lease::PgLease;
use super::{
    Candidate, Changes, ChangesRequest, Directory, LeaderInfo, RowChanges, Store, StoreError,
    migrations,
};
use crate::engine::model::Interner;
use crate::engine::{
    Agent, AgentId, Batch, BoardId, Brake, BrakeState, Event, EventKind, Gateway, GatewayId,
    GatewayState, GatewayTransition, LeaseCheckpoint, Link, LinkState, PendingRetire, PendingSync,
    Reason, Role, RolloutId, SharedStr, Status, StoredLease, StoredState, Timestamp, TokenHash,
};

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: usize,
    /// How long to wait for a connection (from the pool or a new one).
    pub timeout: Duration,
    /// Postgres ends a session whose transaction sat idle this long: a
    /// stalled leader's open transaction must not hold the rows (and the
    /// lease row) that its successor needs. Set it to the lease row's
    /// expiry (a takeover also ends such transactions itself).
    pub idle_transaction_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout: Duration::from_secs(5),
            idle_transaction_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PostgresStore {
    pool: Pool,
    pub(super) lease: PgLease,
    notifications: Arc<Notify>,
    listener_stop: CancellationToken,
}

impl PostgresStore {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let mut database = super::tls::Database::parse(url).map_err(StoreError::Other)?;
        let config = &mut database.config;
        config.connect_timeout(settings.timeout);
        // The URL's own application_name wins: replicas can be told apart.
        if config.get_application_name().is_none() {
            config.application_name("mission-control");
        }
        let idle_ms = settings.idle_transaction_timeout.as_millis().max(1);
        let options = match config.get_options() {
            Some(existing) => {
                format!("{existing} -c idle_in_transaction_session_timeout={idle_ms}")
            }
            None => format!("-c idle_in_transaction_session_timeout={idle_ms}"),
        };
        config.options(&options);
        let manager = Manager::from_config(
            database.config.clone(),
            database.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let applied = migrations::run(&mut client).await.map_err(classify)?;
        if applied > 0 {
            tracing::info!(applied, "database schema migrated");
        } else {
            tracing::info!("database schema is up to date");
        }
        drop(client);
        let notifications = Arc::new(Notify::new());
        let listener_stop = CancellationToken::new();
        tokio::spawn(super::listen::listen(
            database.clone(),
            notifications.clone(),
            listener_stop.clone(),
        ));
        Ok(Self {
            pool,
            lease: PgLease::new(&database),
            notifications,
            listener_stop,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Everything the engine needs, the agents read by up to `readers`
    /// connections, each given at least `min_blocks` heap blocks; also
    /// says how many read.
    async fn load_with(
        &self,
        readers: usize,
        min_blocks: u64,
    ) -> Result<(StoredState, usize), StoreError> {
        let reading = std::time::Instant::now();
        let mut client = self.client().await?;
        // One snapshot for every read, the agents' other readers included.
        let tx = read_snapshot(&mut client).await?;
        let mut readers = self.spawn_readers(&tx, readers, min_blocks).await?;
        let directory = read_directory(&tx).await?;
        let (tombstones, revision, checkpoint) = tokio::try_join!(
            async {
                tx.query(
                    "SELECT agent_id, generation FROM agent_tombstones ORDER BY agent_id",
                    &[],
                )
                .await
                .map_err(classify)
            },
            async {
                tx.query_one(
                    "SELECT GREATEST((SELECT compacted_revision FROM event_history),
                                     (SELECT COALESCE(max(revision), 0) FROM agent_events))",
                    &[],
                )
                .await
                .map_err(classify)
            },
            read_lease_clock(&tx),
        )?;
        let first = readers.read_first(&tx).await?;
        tx.commit().await.map_err(classify)?;
        let fleet = readers.gather(first).await?;
        tracing::info!(
            agents = fleet.agents.len(),
            readers = fleet.readers,
            query_ms = reading.elapsed().as_millis() as u64,
            decode_ms = fleet.decode.as_millis() as u64,
            sort_ms = fleet.sort.as_millis() as u64,
            "store.fleet_read"
        );

        let state = StoredState {
            agents: fleet.agents,
            gateways: directory.gateways,
            pending_retires: directory.pending_retires,
            tombstones: tombstones
                .iter()
                .map(|row| {
                    let id = AgentId::parse(row.get::<_, String>(0))
                        .map_err(|e| corrupt("agent id", &e.to_string()))?;
                    Ok((id, row.get::<_, i64>(1) as u64))
                })
                .collect::<Result<_, StoreError>>()?,
            revision: revision.get::<_, i64>(0) as u64,
            rollouts: directory.rollouts,
            checkpoint,
            pending_syncs: directory.pending_syncs,
        };
        Ok((state, fleet.readers))
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => classify(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A read-only transaction that sees one snapshot of the database.
async fn read_snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(classify)
}

/// Maps a Postgres error to a store error, by SQLSTATE: the one place that
/// knows them.
pub(super) fn classify(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or closed.
        return StoreError::Unavailable(e.to_string());
    };
    let message = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
    match code {
        c if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(message),
        c if is_transient(c) => StoreError::Unavailable(message),
        c if is_refusal(c) => StoreError::Refused(message),
        _ => StoreError::Other(format!("{message} (SQLSTATE {})", code.code())),
    }
}

/// Conditions of the database, not of the request: retrying later may
/// succeed, so callers get UNAVAILABLE rather than INTERNAL.
fn is_transient(code: &SqlState) -> bool {
    const CLASSES: [&str; 3] = [
        "08", // connection exception
        "53", // insufficient resources
        "57", // operator intervention: shutdown, crash recovery
    ];
    const CODES: [SqlState; 6] = [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, // e.g. not accepting connections
        SqlState::OBJECT_IN_USE,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::READ_ONLY_SQL_TRANSACTION, // a standby after failover
    ];
    CLASSES.iter().any(|class| code.code().starts_with(class)) || CODES.contains(code)
}

/// The database refuses these settings: no such database, bad credentials.
fn is_refusal(code: &SqlState) -> bool {
    code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME
}

fn time(t: Timestamp) -> SystemTime {
    t.to_system_time()
}

fn opt_time(t: Option<Timestamp>) -> Option<SystemTime> {
    t.map(Timestamp::to_system_time)
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

fn token_hash(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    let hash: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?;
    Ok(TokenHash(hash))
}

fn link_state(s: &str) -> Result<LinkState, StoreError> {
    LinkState::parse(s).ok_or_else(|| corrupt("gateway link state", s))
}

fn gateway_state(s: &str) -> Result<GatewayState, StoreError> {
    GatewayState::parse(s).ok_or_else(|| corrupt("gateway state", s))
}

fn brake_from_row(row: &Row) -> Result<Option<Brake>, StoreError> {
    let Some(state) = row.get::<_, Option<&str>>("brake_state") else {
        return Ok(None);
    };
    let since: Option<SystemTime> = row.get("brake_since");
    Ok(Some(Brake {
        state: BrakeState::parse(state).ok_or_else(|| corrupt("gateway brake state", state))?,
        since: Timestamp::from_system_time(
            since.ok_or_else(|| corrupt("gateway brake since", "null"))?,
        ),
        reason: row
            .get::<_, Option<String>>("brake_reason")
            .unwrap_or_default(),
    }))
}

fn agent_from_row(row: &Row, shared: &mut Interner) -> Result<Agent, StoreError> {
    let ts = |column: &str| -> Option<Timestamp> {
        row.get::<_, Option<SystemTime>>(column)
            .map(Timestamp::from_system_time)
    };
    let text = |column: &str| -> &str { row.get(column) };
    let id = AgentId::parse(text("id")).map_err(|e| corrupt("agent id", &e.to_string()))?;
    Ok(Agent {
        name: shared.name(text("name"), &id),
        id,
        gateway_id: shared
            .gateway(text("gateway_id"))
            .map_err(|e| corrupt("gateway id", &e.to_string()))?,
        board_id: row
            .get::<_, Option<&str>>("board_id")
            .map(|board| shared.board(board))
            .transpose()
            .map_err(|e| corrupt("board id", &e.to_string()))?,
        role: Role::parse(text("role")).ok_or_else(|| corrupt("role", text("role")))?,
        status: Status::parse(text("status")).ok_or_else(|| corrupt("status", text("status")))?,
        generation: row.get::<_, i64>("generation") as u64,
        wake_attempts: row.get::<_, i32>("wake_attempts") as u32,
        last_wake_sent_at: ts("last_wake_sent_at"),
        checkin_deadline_at: ts("checkin_deadline_at"),
        last_seen_at: ts("last_seen_at"),
        lease_expires_at: ts("lease_expires_at"),
        last_provision_error: row
            .get::<_, Option<&str>>("last_provision_error")
            .map(SharedStr::from),
        offline_reason: row
            .get::<_, Option<&str>>("offline_reason")
            .map(SharedStr::from),
        desired_template_version: shared.text(text("desired_template_version")),
        reported_template_version: shared.text(text("reported_template_version")),
        created_at: ts("created_at").unwrap_or(Timestamp::from_micros(0)),
        updated_at: ts("updated_at").unwrap_or(Timestamp::from_micros(0)),
        revision: row.get::<_, i64>("revision") as u64,
        wake_held: row.get("wake_held"),
        token_hash: token_hash(row.get("token_hash"))?,
    })
}

fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let text = |column: &str| -> String { row.get(column) };
    let agent: Agent = serde_json::from_value(row.get("agent"))
        .map_err(|e| StoreError::Corrupt(format!("event agent: {e}")))?;
    Ok(Event {
        revision: row.get::<_, i64>("revision") as u64,
        kind: EventKind::parse(&text("kind"))
            .ok_or_else(|| corrupt("event kind", &text("kind")))?,
        agent,
        previous_status: row
            .get::<_, Option<String>>("previous_status")
            .map(|s| Status::parse(&s).ok_or_else(|| corrupt("status", &s)))
            .transpose()?,
        previous_board_id: row
            .get::<_, Option<String>>("previous_board_id")
            .map(BoardId::parse)
            .transpose()
            .map_err(|e| corrupt("board id", &e.to_string()))?,
        reason: Reason::parse(&text("reason")).ok_or_else(|| corrupt("reason", &text("reason")))?,
        attempt: row.get::<_, i32>("attempt") as u32,
        error: row.get("error"),
        at: Timestamp::from_system_time(row.get("at")),
        rollout_id: row
            .get::<_, Option<String>>("rollout_id")
            .map(RolloutId::parse)
            .transpose()
            .map_err(|e| corrupt("rollout id", &e.to_string()))?,
    })
}

/// The small tables a load reads whole: gateways, pending retires,
/// rollouts and template syncs. A follower's takeover reads them too, so a
/// new one belongs here.
async fn read_directory(tx: &tokio_postgres::Transaction<'_>) -> Result<Directory, StoreError> {
    let (gateways, retires, rollouts, syncs) = tokio::try_join!(
        tx.query(
            "SELECT id, name, token_hash, created_at, link_state, link_since, link_reason,
                    brake_state, brake_since, brake_reason
             FROM gateways ORDER BY id",
            &[],
        ),
        tx.query(
            "SELECT gateway_id, agent_id, generation FROM pending_retires ORDER BY 1, 2, 3",
            &[],
        ),
        tx.query("SELECT body FROM rollouts ORDER BY id", &[]),
        tx.query(
            "SELECT gateway_id, command_id, template_version, requested_at
             FROM pending_template_syncs ORDER BY gateway_id",
            &[],
        ),
    )
    .map_err(classify)?;
    let gateway_id =
        |s: String| GatewayId::parse(s).map_err(|e| corrupt("gateway id", &e.to_string()));
    let gateways = gateways
        .iter()
        .map(|row| {
            Ok(Gateway {
                id: gateway_id(row.get("id"))?,
                name: row.get("name"),
                token_hash: token_hash(row.get("token_hash"))?,
                created_at: Timestamp::from_system_time(row.get("created_at")),
                link: Link {
                    state: link_state(row.get("link_state"))?,
                    since: Timestamp::from_system_time(row.get("link_since")),
                    reason: row.get("link_reason"),
                },
                brake: brake_from_row(row)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let pending_retires = retires
        .iter()
        .map(|row| {
            Ok(PendingRetire {
                gateway_id: gateway_id(row.get("gateway_id"))?,
                agent_id: AgentId::parse(row.get::<_, String>("agent_id"))
                    .map_err(|e| corrupt("agent id", &e.to_string()))?,
                generation: row.get::<_, i64>("generation") as u64,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let rollouts = rollouts
        .iter()
        .map(|row| {
            serde_json::from_value(row.get(0))
                .map_err(|e| StoreError::Corrupt(format!("rollout: {e}")))
        })
        .collect::<Result<_, StoreError>>()?;
    let pending_syncs = syncs
        .iter()
        .map(|row| {
            Ok(PendingSync {
                gateway_id: gateway_id(row.get("gateway_id"))?,
                command_id: row.get::<_, i64>("command_id") as u64,
                template_version: row.get("template_version"),
                requested_at: Timestamp::from_system_time(row.get("requested_at")),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Directory {
        gateways,
        pending_retires,
        rollouts,
        pending_syncs,
    })
}

/// The last lease checkpoint committed (`lease_clock`).
async fn read_lease_clock(tx: &tokio_postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let row = tx
        .query_one("SELECT generation FROM lease_clock", &[])
        .await
        .map_err(classify)?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn stored_lease_from_row(row: &Row) -> Result<StoredLease, StoreError> {
    let ts = |column: &str| -> Option<Timestamp> {
        row.get::<_, Option<SystemTime>>(column)
            .map(Timestamp::from_system_time)
    };
    Ok(StoredLease {
        agent_id: AgentId::parse(row.get::<_, String>("id"))
            .map_err(|e| corrupt("agent id", &e.to_string()))?,
        generation: row.get::<_, i64>("generation") as u64,
        last_seen_at: ts("last_seen_at"),
        lease_expires_at: ts("lease_expires_at"),
    })
}

const EVENT_COLUMNS: &str = "revision, agent_id, kind, reason, previous_status, attempt, error, at, agent, previous_board_id, rollout_id";

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<StoredState, StoreError> {
        let (state, _) = self
            .load_with(fleet::readers(), fleet::MIN_BLOCKS_PER_READER)
            .await?;
        Ok(state)
    }

    async fn changes_since(&self, request: ChangesRequest<'_>) -> Result<Changes, StoreError> {
        let mut client = self.client().await?;
        // One snapshot: the rows read below are the ones these events left.
        let tx = read_snapshot(&mut client).await?;
        let events_sql = format!(
            "SELECT {EVENT_COLUMNS} FROM agent_events
             WHERE revision > $1 ORDER BY revision LIMIT $2"
        );
        let (after, limit) = (request.revision as i64, request.limit as i64);
        let page: [&(dyn ToSql + Sync); 2] = [&after, &limit];
        let (events, compacted) = tokio::try_join!(
            tx.query(&events_sql, &page),
            tx.query_one("SELECT compacted_revision FROM event_history", &[]),
        )
        .map_err(classify)?;
        let events: Vec<Event> = events
            .iter()
            .map(event_from_row)
            .collect::<Result<_, _>>()?;
        let compacted_revision = compacted.get::<_, i64>(0) as u64;
        if events.len() >= request.limit {
            return Ok(Changes {
                events,
                compacted_revision,
                rows: None,
            });
        }

        let mut named: Vec<&str> = request
            .named
            .iter()
            .chain(events.iter().map(|e| &e.agent.id))
            .map(AgentId::as_str)
            .collect();
        named.sort_unstable();
        named.dedup();
        let (agents, checkpoint) = tokio::try_join!(
            async {
                tx.query("SELECT * FROM agents WHERE id = ANY($1)", &[&named])
                    .await
                    .map_err(classify)
            },
            read_lease_clock(&tx),
        )?;
        // The clock says whether any checkpoint came since: most polls skip
        // the scan.
        let leases = if checkpoint > request.checkpoint {
            tx.query(
                "SELECT id, generation, last_seen_at, lease_expires_at FROM agents
                 WHERE lease_checkpoint > $1",
                &[&(request.checkpoint as i64)],
            )
            .await
            .map_err(classify)?
        } else {
            Vec::new()
        };
        let directory = if request.directory {
            Some(read_directory(&tx).await?)
        } else {
            None
        };
        tx.commit().await.map_err(classify)?;
        Ok(Changes {
            events,
            compacted_revision,
            rows: Some(RowChanges {
                agents: {
                    let mut shared = Interner::default();
                    agents
                        .iter()
                        .map(|row| agent_from_row(row, &mut shared))
                        .collect::<Result<_, _>>()?
                },
                leases: leases
                    .iter()
                    .map(stored_lease_from_row)
                    .collect::<Result<_, _>>()?,
                checkpoint,
                directory,
            }),
        })
    }

    async fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        commit::commit(self, batch).await
    }

    async fn checkpoint_leases(&self, leases: &[LeaseCheckpoint]) -> Result<(), StoreError> {
        commit::checkpoint_leases(self, leases).await
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM agent_events
                     WHERE revision > $1 ORDER BY revision LIMIT $2"
                ),
                &[&(after as i64), &(limit as i64)],
            )
            .await
            .map_err(classify)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn agent_history(
        &self,
        agent: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let client = self.client().await?;
        let before = before.map_or(i64::MAX, |b| b as i64);
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM agent_events
                     WHERE agent_id = $1 AND revision < $2
                     ORDER BY revision DESC LIMIT $3"
                ),
                &[&agent.as_str(), &before, &(limit as i64)],
            )
            .await
            .map_err(classify)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn gateway_history(
        &self,
        gateway: &GatewayId,
        limit: usize,
    ) -> Result<Vec<GatewayTransition>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT gateway_id, at, from_state, to_state, reason, wakes_released
                 FROM gateway_events WHERE gateway_id = $1 ORDER BY id DESC LIMIT $2",
                &[&gateway.as_str(), &(limit as i64)],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(GatewayTransition {
                    gateway_id: gateway.clone(),
                    at: Timestamp::from_system_time(row.get("at")),
                    from: gateway_state(row.get("from_state"))?,
                    to: gateway_state(row.get("to_state"))?,
                    reason: row.get("reason"),
                    wakes_released: row.get::<_, i32>("wakes_released") as u32,
                })
            })
            .collect()
    }

    async fn compact(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                // The events before the first one at or after the cutoff,
                // found in revision order through the primary key (no index
                // on `at`: every transition paid for one). Rows older than
                // the cutoff and still there are one compaction interval's.
                "WITH first_kept AS (SELECT revision FROM agent_events WHERE at >= $1
                                     ORDER BY revision LIMIT 1),
                      cut AS (SELECT COALESCE((SELECT revision - 1 FROM first_kept),
                                              (SELECT max(revision) FROM agent_events)) AS up_to),
                      gone AS (DELETE FROM agent_events WHERE revision <= (SELECT up_to FROM cut))
                 UPDATE event_history
                    SET compacted_revision = GREATEST(compacted_revision,
                                                      COALESCE((SELECT up_to FROM cut), 0))
                 RETURNING compacted_revision",
                &[&time(cutoff)],
            )
            .await
            .map_err(classify)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn compacted_revision(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT compacted_revision FROM event_history", &[])
            .await
            .map_err(classify)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn acquire_leadership(&self, candidate: &Candidate) -> Result<Option<u64>, StoreError> {
        self.lease.acquire(candidate).await
    }

    fn leadership_free_in(&self) -> Option<std::time::Duration> {
        self.lease.free_in()
    }

    async fn renew_leadership(&self, candidate: &Candidate) -> Result<bool, StoreError> {
        self.lease.renew(candidate).await
    }

    async fn release_leadership(&self) {
        self.lease.release().await;
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT holder, address, epoch FROM leader_lease
                 WHERE expires_at > clock_timestamp()",
                &[],
            )
            .await
            .map_err(classify)?;
        Ok(row.map(|row| LeaderInfo {
            holder: row.get(0),
            address: row.get(1),
            epoch: row.get::<_, i64>(2) as u64,
        }))
    }

    fn event_notifications(&self) -> Arc<Notify> {
        self.notifications.clone()
    }

    async fn close(&self) {
        self.lease.release().await;
        self.listener_stop.cancel();
        self.pool.close();
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{PoolSettings, PostgresStore};
    use crate::engine::{Engine, Policy, Timestamp};
    use crate::store::conformance::{self, candidate};
    use crate::store::{Store, StoreError};
    use crate::testing::TestDatabase;

    async fn connect(db: &TestDatabase) -> PostgresStore {
        let settings = PoolSettings {
            idle_transaction_timeout: Duration::from_millis(500),
            ..PoolSettings::default()
        };
        PostgresStore::connect(db.url(), &settings).await.unwrap()
    }

    fn empty_batch() -> crate::engine::Batch {
        Engine::new(Policy::default()).begin(Timestamp::from_micros(1))
    }

    #[tokio::test]
    async fn leadership_is_exclusive_expires_and_fences() {
        let db = TestDatabase::create().await;
        let (first, second) = (connect(&db).await, connect(&db).await);
        conformance::leadership_is_exclusive_expires_and_fences(&first, &second).await;
    }

    /// A leader stopped (SIGSTOP) in the middle of a commit holds a share
    /// lock on the lease row. Once the lease expired, the takeover ends
    /// that transaction's session itself, long before Postgres would end it
    /// as idle (a minute here), and the stopped leader's commit fails.
    #[tokio::test]
    async fn a_stalled_leaders_open_transaction_does_not_block_the_takeover() {
        let db = TestDatabase::create().await;
        let patient = PoolSettings {
            idle_transaction_timeout: Duration::from_secs(60),
            ..PoolSettings::default()
        };
        let first = PostgresStore::connect(db.url(), &patient).await.unwrap();
        let second = connect(&db).await;
        let ttl = Duration::from_millis(300);
        first
            .acquire_leadership(&candidate("a", ttl))
            .await
            .unwrap()
            .unwrap();
        let mut stalled = first.pool.get().await.unwrap();
        let tx = stalled.transaction().await.unwrap();
        let epoch = first.lease.epoch().unwrap();
        assert_eq!(
            tx.execute(crate::store::lease::FENCE, &[&epoch])
                .await
                .unwrap(),
            1
        );
        // A long commit does not block the leader's own renewals, nor does
        // a follower's try while the lease holds.
        assert!(first.renew_leadership(&candidate("a", ttl)).await.unwrap());
        assert_eq!(
            second
                .acquire_leadership(&candidate("b", ttl))
                .await
                .unwrap(),
            None
        );
        assert!(first.renew_leadership(&candidate("a", ttl)).await.unwrap());

        // Well within the idle timeout: bounded, not timed.
        let mut taken = None;
        for _ in 0..200 {
            taken = second
                .acquire_leadership(&candidate("b", ttl))
                .await
                .unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(taken.is_some(), "the follower took over");
        let ended = tx.execute("SELECT 1", &[]).await;
        assert!(ended.is_err(), "the stalled transaction was ended");
        drop(tx);
        let deposed = first.commit(&empty_batch()).await;
        assert!(
            matches!(
                deposed,
                Err(StoreError::NotLeader(_) | StoreError::Unavailable(_))
            ),
            "{deposed:?}"
        );
        let deposed = first.commit(&empty_batch()).await;
        assert!(
            matches!(deposed, Err(StoreError::NotLeader(_))),
            "{deposed:?}"
        );
    }

    /// A follower's tries read the lease without locking it: while the
    /// lease holds, they do not wait for the leader's open transactions.
    #[tokio::test]
    async fn a_followers_try_does_not_wait_for_the_leaders_commits() {
        let db = TestDatabase::create().await;
        let (first, second) = (connect(&db).await, connect(&db).await);
        let ttl = Duration::from_secs(60);
        first
            .acquire_leadership(&candidate("a", ttl))
            .await
            .unwrap()
            .unwrap();
        let mut open = first.pool.get().await.unwrap();
        let tx = open.transaction().await.unwrap();
        let epoch = first.lease.epoch().unwrap();
        assert_eq!(
            tx.execute(crate::store::lease::FENCE, &[&epoch])
                .await
                .unwrap(),
            1
        );
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            second.acquire_leadership(&candidate("b", ttl)),
        )
        .await
        .expect("answered without waiting for the lock");
        assert_eq!(refused.unwrap(), None);
        let left = second.leadership_free_in().expect("what is left");
        assert!(left > Duration::from_secs(30), "{left:?}");
        tx.commit().await.unwrap();
    }

    /// A lease checkpoint rewrites a row on its own page (a HOT update, no
    /// index entries): the agents table keeps half of each page free.
    #[tokio::test]
    async fn agent_pages_keep_room_for_checkpointed_leases() {
        let db = TestDatabase::create().await;
        let _migrated = connect(&db).await;
        let (admin, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let options: Vec<String> = admin
            .query_one(
                "SELECT reloptions::text[] FROM pg_class WHERE oid = 'agents'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(options, ["fillfactor=50"]);
    }

    /// After the leader's sessions are lost (a database restart, a killed
    /// backend), its next commits succeed on new connections, under the
    /// same lease: a lost connection is not a lost lease.
    #[tokio::test]
    async fn lost_sessions_do_not_cost_the_lease() {
        let db = TestDatabase::create().await;
        let store = connect(&db).await;
        let ttl = Duration::from_secs(60);
        let epoch = store
            .acquire_leadership(&candidate("a", ttl))
            .await
            .unwrap()
            .unwrap();
        store.commit(&empty_batch()).await.unwrap();

        let (admin, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name = 'mission-control'",
                &[],
            )
            .await
            .unwrap();
        assert!(killed >= 2, "the pool's and the lease's sessions: {killed}");

        let mut committed = false;
        for _ in 0..100 {
            match store.commit(&empty_batch()).await {
                Ok(()) => {
                    committed = true;
                    break;
                }
                // A pooled connection that died: retried on a new one.
                Err(StoreError::Unavailable(_)) => {}
                Err(other) => panic!("only connection errors are expected: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(committed);
        assert!(store.renew_leadership(&candidate("a", ttl)).await.unwrap());
        assert_eq!(store.leader().await.unwrap().unwrap().epoch, epoch);
    }

    crate::store_conformance_tests!(async {
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(db.url(), &Default::default())
            .await
            .expect("connect to the test database");
        conformance::lead(&store).await;
        (store, db)
    });

    #[test]
    fn outages_are_transient_and_bad_statements_are_not() {
        use tokio_postgres::error::SqlState;
        for transient in [
            SqlState::CONNECTION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(super::is_transient(&transient), "{transient:?}");
        }
        for refusal in [SqlState::INVALID_CATALOG_NAME, SqlState::INVALID_PASSWORD] {
            assert!(super::is_refusal(&refusal), "{refusal:?}");
            assert!(!super::is_transient(&refusal), "{refusal:?}");
        }
        for permanent in [
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::T_R_INTEGRITY_CONSTRAINT_VIOLATION,
            SqlState::CANT_CHANGE_RUNTIME_PARAM,
        ] {
            assert!(!super::is_transient(&permanent), "{permanent:?}");
            assert!(!super::is_refusal(&permanent), "{permanent:?}");
        }
    }
}
