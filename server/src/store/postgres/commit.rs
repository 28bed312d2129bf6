//! The writer's path to Postgres: a batch of transitions, or a lease
//! checkpoint, as one transaction sent in one round trip.
//!
//! Each kind of write is a single statement over arrays (`unnest`), so a
//! batch has the same few statements whether it holds one transition or a
//! thousand. The statements are prepared once per connection, and `BEGIN`,
//! the fence, the writes and `COMMIT` go out together: the writer waits for
//! Postgres once per batch, and answers its callers only once the `COMMIT`
//! came back (`synchronous_commit` as the database has it).

use std::pin::Pin;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use futures_util::future::{MaybeDone, maybe_done, try_join_all};
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, WrongType};

use super::event_json::StoredAgent;
use super::{PostgresStore, classify, opt_time, time};
use crate::engine::rollout::Rollout;
use crate::engine::{
    Agent, AgentId, Batch, BoardId, Gateway, LeaseCheckpoint, PendingRetire, RolloutId, Status,
    Timestamp,
};
use crate::store::StoreError;
use crate::store::lease;

type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;

const INSERT_EVENTS: &str = "
INSERT INTO agent_events (revision, agent_id, kind, reason, previous_status, attempt, error, at,
    agent, previous_board_id, rollout_id)
SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int4[], $7::text[], $8::timestamptz[], $9::jsonb[],
                     $10::text[], $11::text[])";

const UPSERT_AGENTS: &str = "
INSERT INTO agents (id, name, gateway_id, board_id, role, status, generation, wake_attempts,
    last_wake_sent_at, checkin_deadline_at, last_seen_at, lease_expires_at,
    last_provision_error, offline_reason, desired_template_version, reported_template_version,
    created_at, updated_at, revision, token_hash, wake_held)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::int8[], $8::int4[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
    $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::text[],
    $17::timestamptz[], $18::timestamptz[], $19::int8[], $20::bytea[], $21::bool[])
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, gateway_id = EXCLUDED.gateway_id, board_id = EXCLUDED.board_id,
    role = EXCLUDED.role, status = EXCLUDED.status, generation = EXCLUDED.generation,
    wake_attempts = EXCLUDED.wake_attempts, last_wake_sent_at = EXCLUDED.last_wake_sent_at,
    checkin_deadline_at = EXCLUDED.checkin_deadline_at,
    last_seen_at = GREATEST(agents.last_seen_at, EXCLUDED.last_seen_at),
    lease_expires_at = EXCLUDED.lease_expires_at,
    last_provision_error = EXCLUDED.last_provision_error,
    offline_reason = EXCLUDED.offline_reason,
    desired_template_version = EXCLUDED.desired_template_version,
    reported_template_version = EXCLUDED.reported_template_version,
    updated_at = EXCLUDED.updated_at, revision = EXCLUDED.revision,
    token_hash = EXCLUDED.token_hash, wake_held = EXCLUDED.wake_held";

/// Agents a batch wrote without an event: stamped as a lease checkpoint, so
/// that followers read their lease fields.
const STAMP_LEASES: &str = "
WITH clock AS (UPDATE lease_clock SET generation = generation + 1 RETURNING generation)
UPDATE agents SET lease_checkpoint = (SELECT generation FROM clock) WHERE id = ANY($1)";

/// One array per column of the agents written by a batch.
#[derive(Default)]
struct AgentColumns<'a> {
    id: Vec<&'a str>,
    name: Vec<&'a str>,
    gateway_id: Vec<&'a str>,
    board_id: Vec<Option<&'a str>>,
    role: Vec<&'static str>,
    status: Vec<&'static str>,
    generation: Vec<i64>,
    wake_attempts: Vec<i32>,
    last_wake_sent_at: Vec<Option<SystemTime>>,
    checkin_deadline_at: Vec<Option<SystemTime>>,
    last_seen_at: Vec<Option<SystemTime>>,
    lease_expires_at: Vec<Option<SystemTime>>,
    last_provision_error: Vec<Option<&'a str>>,
    offline_reason: Vec<Option<&'a str>>,
    desired_template_version: Vec<&'a str>,
    reported_template_version: Vec<&'a str>,
    created_at: Vec<SystemTime>,
    updated_at: Vec<SystemTime>,
    revision: Vec<i64>,
    token_hash: Vec<&'a [u8]>,
    wake_held: Vec<bool>,
}

impl<'a> AgentColumns<'a> {
    fn push(&mut self, a: &'a Agent) {
        self.id.push(a.id.as_str());
        self.name.push(&a.name);
        self.gateway_id.push(a.gateway_id.as_str());
        self.board_id.push(a.board_id.as_ref().map(BoardId::as_str));
        self.role.push(a.role.as_str());
        self.status.push(a.status.as_str());
        self.generation.push(a.generation as i64);
        self.wake_attempts.push(a.wake_attempts as i32);
        self.last_wake_sent_at.push(opt_time(a.last_wake_sent_at));
        self.checkin_deadline_at
            .push(opt_time(a.checkin_deadline_at));
        self.last_seen_at.push(opt_time(a.last_seen_at));
        self.lease_expires_at.push(opt_time(a.lease_expires_at));
        self.last_provision_error
            .push(a.last_provision_error.as_deref());
        self.offline_reason.push(a.offline_reason.as_deref());
        self.desired_template_version
            .push(&a.desired_template_version);
        self.reported_template_version
            .push(&a.reported_template_version);
        self.created_at.push(time(a.created_at));
        self.updated_at.push(time(a.updated_at));
        self.revision.push(a.revision as i64);
        self.token_hash.push(&a.token_hash.0);
        self.wake_held.push(a.wake_held);
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 21] {
        [
            &self.id,
            &self.name,
            &self.gateway_id,
            &self.board_id,
            &self.role,
            &self.status,
            &self.generation,
            &self.wake_attempts,
            &self.last_wake_sent_at,
            &self.checkin_deadline_at,
            &self.last_seen_at,
            &self.lease_expires_at,
            &self.last_provision_error,
            &self.offline_reason,
            &self.desired_template_version,
            &self.reported_template_version,
            &self.created_at,
            &self.updated_at,
            &self.revision,
            &self.token_hash,
            &self.wake_held,
        ]
    }
}

pub(super) async fn commit(store: &PostgresStore, batch: &Batch) -> Result<(), StoreError> {
    let mut upserts = AgentColumns::default();
    let mut deletes: Vec<&str> = Vec::new();
    let lease_only: Vec<&str> = batch
        .lease_only_writes()
        .into_iter()
        .map(AgentId::as_str)
        .collect();
    for (id, agent) in batch.agent_writes() {
        match agent {
            Some(agent) => upserts.push(agent),
            None => deletes.push(id.as_str()),
        }
    }
    let gateways: Vec<&Gateway> = batch.gateway_writes().collect();
    let gw_ids: Vec<&str> = gateways.iter().map(|g| g.id.as_str()).collect();
    let gw_names: Vec<&str> = gateways.iter().map(|g| g.name.as_str()).collect();
    let gw_tokens: Vec<&[u8]> = gateways.iter().map(|g| &g.token_hash.0[..]).collect();
    let gw_created: Vec<SystemTime> = gateways.iter().map(|g| time(g.created_at)).collect();
    let gw_link: Vec<&str> = gateways.iter().map(|g| g.link.state.as_str()).collect();
    let gw_since: Vec<SystemTime> = gateways.iter().map(|g| time(g.link.since)).collect();
    let gw_reason: Vec<&str> = gateways.iter().map(|g| g.link.reason.as_str()).collect();
    let gw_brake: Vec<Option<&str>> = gateways
        .iter()
        .map(|g| g.brake.as_ref().map(|b| b.state.as_str()))
        .collect();
    let gw_brake_since: Vec<Option<SystemTime>> = gateways
        .iter()
        .map(|g| g.brake.as_ref().map(|b| time(b.since)))
        .collect();
    let gw_brake_reason: Vec<Option<&str>> = gateways
        .iter()
        .map(|g| g.brake.as_ref().map(|b| b.reason.as_str()))
        .collect();
    let links = batch.gateway_events();
    let ln_gateway: Vec<&str> = links.iter().map(|t| t.gateway_id.as_str()).collect();
    let ln_at: Vec<SystemTime> = links.iter().map(|t| time(t.at)).collect();
    let ln_from: Vec<&str> = links.iter().map(|t| t.from.as_str()).collect();
    let ln_to: Vec<&str> = links.iter().map(|t| t.to.as_str()).collect();
    let ln_reason: Vec<&str> = links.iter().map(|t| t.reason.as_str()).collect();
    let ln_released: Vec<i32> = links.iter().map(|t| t.wakes_released as i32).collect();

    let events = batch.events();
    let ev_revision: Vec<i64> = events.iter().map(|e| e.revision as i64).collect();
    let ev_agent_id: Vec<&str> = events.iter().map(|e| e.agent.id.as_str()).collect();
    let ev_kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let ev_reason: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    let ev_previous: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.previous_status.map(Status::as_str))
        .collect();
    let ev_attempt: Vec<i32> = events.iter().map(|e| e.attempt as i32).collect();
    let ev_error: Vec<Option<&str>> = events.iter().map(|e| e.error.as_deref()).collect();
    let ev_at: Vec<SystemTime> = events.iter().map(|e| time(e.at)).collect();
    let ev_previous_board: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.previous_board_id.as_ref().map(BoardId::as_str))
        .collect();
    let ev_rollout: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.rollout_id.as_ref().map(RolloutId::as_str))
        .collect();
    let rollouts: Vec<&Rollout> = batch.rollout_writes().collect();
    let ro_id: Vec<&str> = rollouts.iter().map(|r| r.id.as_str()).collect();
    let ro_state: Vec<&str> = rollouts.iter().map(|r| r.state.as_str()).collect();
    let ro_created: Vec<SystemTime> = rollouts.iter().map(|r| time(r.created_at)).collect();
    let ro_updated: Vec<SystemTime> = rollouts.iter().map(|r| time(r.updated_at)).collect();
    let ro_body: Vec<serde_json::Value> = rollouts
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Other(format!("encoding a rollout: {e}")))?;
    // Written straight into the statement's buffer: no JSON tree.
    let ev_agent: Vec<StoredAgent<'_>> = events.iter().map(|e| StoredAgent(&e.agent)).collect();

    let retire_columns = |retires: &[PendingRetire]| {
        (
            retires
                .iter()
                .map(|r| r.gateway_id.to_string())
                .collect::<Vec<_>>(),
            retires
                .iter()
                .map(|r| r.agent_id.to_string())
                .collect::<Vec<_>>(),
            retires
                .iter()
                .map(|r| r.generation as i64)
                .collect::<Vec<_>>(),
        )
    };
    let (mut sy_gateway, mut sy_command, mut sy_version, mut sy_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sy_done: Vec<&str> = Vec::new();
    for (gateway, sync) in batch.template_sync_writes() {
        match sync {
            Some(sync) => {
                sy_gateway.push(gateway.as_str());
                // Command ids count wall-clock microseconds: far below i64::MAX.
                sy_command.push(sync.command_id as i64);
                sy_version.push(sync.template_version.as_str());
                sy_at.push(time(sync.requested_at));
            }
            None => sy_done.push(gateway.as_str()),
        }
    }
    let added = retire_columns(batch.retires_added());
    let done = retire_columns(batch.retires_done());

    // First: this replica must still be the leader.
    let epoch = store.lease.epoch()?;
    let mut statements: Vec<(&str, Params<'_>)> = vec![(lease::FENCE, vec![&epoch])];
    if !upserts.id.is_empty() {
        statements.push((UPSERT_AGENTS, upserts.params().to_vec()));
    }
    if !lease_only.is_empty() {
        statements.push((STAMP_LEASES, vec![&lease_only]));
    }
    if !deletes.is_empty() {
        statements.push(("DELETE FROM agents WHERE id = ANY($1)", vec![&deletes]));
    }
    if !gateways.is_empty() {
        statements.push((
            "INSERT INTO gateways (id, name, token_hash, created_at, link_state, link_since, link_reason,
                 brake_state, brake_since, brake_reason)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[],
                 $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::timestamptz[], $10::text[])
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, token_hash = EXCLUDED.token_hash,
                 link_state = EXCLUDED.link_state, link_since = EXCLUDED.link_since,
                 link_reason = EXCLUDED.link_reason, brake_state = EXCLUDED.brake_state,
                 brake_since = EXCLUDED.brake_since, brake_reason = EXCLUDED.brake_reason",
            vec![
                &gw_ids,
                &gw_names,
                &gw_tokens,
                &gw_created,
                &gw_link,
                &gw_since,
                &gw_reason,
                &gw_brake,
                &gw_brake_since,
                &gw_brake_reason,
            ],
        ));
    }
    if !links.is_empty() {
        statements.push((
            "INSERT INTO gateway_events (gateway_id, at, from_state, to_state, reason, wakes_released)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                 $5::text[], $6::int4[])",
            vec![
                &ln_gateway,
                &ln_at,
                &ln_from,
                &ln_to,
                &ln_reason,
                &ln_released,
            ],
        ));
    }
    if !events.is_empty() {
        statements.push((
            INSERT_EVENTS,
            vec![
                &ev_revision,
                &ev_agent_id,
                &ev_kind,
                &ev_reason,
                &ev_previous,
                &ev_attempt,
                &ev_error,
                &ev_at,
                &ev_agent,
                &ev_previous_board,
                &ev_rollout,
            ],
        ));
    }
    if !rollouts.is_empty() {
        statements.push((
            "INSERT INTO rollouts (id, state, created_at, updated_at, body)
             SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                                  $4::timestamptz[], $5::jsonb[])
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                 updated_at = EXCLUDED.updated_at, body = EXCLUDED.body",
            vec![&ro_id, &ro_state, &ro_created, &ro_updated, &ro_body],
        ));
    }
    if !added.0.is_empty() {
        statements.push((
            "INSERT INTO pending_retires (gateway_id, agent_id, generation)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) ON CONFLICT DO NOTHING",
            vec![&added.0, &added.1, &added.2],
        ));
    }
    // One row per agent: the highest generation wins.
    let mut reached = std::collections::BTreeMap::new();
    for (id, generation) in batch.tombstones() {
        let entry = reached.entry(id.as_str()).or_insert(0i64);
        *entry = (*entry).max(*generation as i64);
    }
    let tomb_ids: Vec<&str> = reached.keys().copied().collect();
    let tomb_generations: Vec<i64> = reached.values().copied().collect();
    if !tomb_ids.is_empty() {
        statements.push((
            "INSERT INTO agent_tombstones (agent_id, generation)
             SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (agent_id) DO UPDATE
             SET generation = GREATEST(agent_tombstones.generation, EXCLUDED.generation)",
            vec![&tomb_ids, &tomb_generations],
        ));
    }
    if !done.0.is_empty() {
        statements.push((
            "DELETE FROM pending_retires
             WHERE (gateway_id, agent_id, generation) IN
                   (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]))",
            vec![&done.0, &done.1, &done.2],
        ));
    }

    if !sy_gateway.is_empty() {
        statements.push((
            "INSERT INTO pending_template_syncs
                 (gateway_id, command_id, template_version, requested_at)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::timestamptz[])
             ON CONFLICT (gateway_id) DO UPDATE SET command_id = EXCLUDED.command_id,
                 template_version = EXCLUDED.template_version,
                 requested_at = EXCLUDED.requested_at",
            vec![&sy_gateway, &sy_command, &sy_version, &sy_at],
        ));
    }
    if !sy_done.is_empty() {
        statements.push((
            "DELETE FROM pending_template_syncs WHERE gateway_id = ANY($1)",
            vec![&sy_done],
        ));
    }

    run(store, statements).await
}

/// Leases per checkpoint statement. A statement is encoded whole into its
/// connection's buffers, which keep the size they grew to: one statement of
/// every lease renewed in an interval left megabytes on each pooled
/// connection that wrote one (18 MB at 100,000 heartbeating agents,
/// BENCHMARKS.md, memory per agent), growing with the fleet. About 1 MB
/// encoded; a fleet of fewer agents is still written in one statement.
/// The unit tests' few leases take several, so that path is the one tested.
const LEASES_PER_STATEMENT: usize = if cfg!(test) { 2 } else { 16_384 };

/// A slice of the leases, as the checkpoint statement's arrays.
struct LeaseColumns {
    ids: BinaryArray,
    generations: BinaryArray,
    seen: BinaryArray,
    expires: BinaryArray,
}

impl LeaseColumns {
    /// In one pass, each value written as Postgres's binary format has it.
    fn of(leases: &[&LeaseCheckpoint]) -> Self {
        let len = leases.len();
        let id_bytes: usize = leases.iter().map(|l| l.agent_id.as_str().len()).sum();
        let mut columns = Self {
            ids: BinaryArray::new(Type::TEXT, len, id_bytes),
            generations: BinaryArray::new(Type::INT8, len, 8 * len),
            seen: BinaryArray::new(Type::TIMESTAMPTZ, len, 8 * len),
            expires: BinaryArray::new(Type::TIMESTAMPTZ, len, 8 * len),
        };
        for lease in leases {
            columns.ids.push(lease.agent_id.as_str().as_bytes());
            columns
                .generations
                .push(&(lease.generation as i64).to_be_bytes());
            columns
                .seen
                .push(&pg_micros(lease.last_seen_at).to_be_bytes());
            columns
                .expires
                .push(&pg_micros(lease.lease_expires_at).to_be_bytes());
        }
        columns
    }
}

/// Microseconds since 2000-01-01 UTC, Postgres's binary `timestamptz`: what
/// `SystemTime`'s `ToSql` writes for the same whole microseconds.
fn pg_micros(t: Timestamp) -> i64 {
    const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    t.as_micros().saturating_sub(POSTGRES_EPOCH_UNIX_MICROS)
}

/// A one-dimensional array without nulls, its elements already in binary
/// form: the bytes `Vec<T>`'s `ToSql` writes, without its per-element
/// dispatch and length patching: the checkpoint's statement took 670
/// instructions per lease that way, 193 this way (BENCHMARKS.md, Heartbeats).
#[derive(Debug)]
struct BinaryArray {
    element: Type,
    len: usize,
    /// Each element as a 4-byte length and its bytes.
    elements: Vec<u8>,
}

impl BinaryArray {
    fn new(element: Type, len: usize, value_bytes: usize) -> Self {
        Self {
            element,
            len: 0,
            elements: Vec::with_capacity(4 * len + value_bytes),
        }
    }

    fn push(&mut self, value: &[u8]) {
        let size = i32::try_from(value.len()).expect("an array element under 2 GiB");
        self.elements.extend_from_slice(&size.to_be_bytes());
        self.elements.extend_from_slice(value);
        self.len += 1;
    }
}

impl ToSql for BinaryArray {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let len = i32::try_from(self.len)?;
        out.reserve(20 + self.elements.len());
        out.put_i32(1); // dimensions
        out.put_i32(0); // no nulls
        out.put_u32(self.element.oid());
        out.put_i32(len);
        out.put_i32(1); // the lower bound
        out.put_slice(&self.elements);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    /// The element type must be the parameter's: checked here, since
    /// `accepts` sees only the type, not this value.
    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match ty.kind() {
            Kind::Array(element) if *element == self.element => self.to_sql(ty, out),
            _ => Err(Box::new(WrongType::new::<Self>(ty.clone()))),
        }
    }
}

/// Writes leases renewed in memory, in one transaction and one round trip:
/// a statement per [`LEASES_PER_STATEMENT`] of them.
pub(super) async fn checkpoint_leases(
    store: &PostgresStore,
    leases: &[LeaseCheckpoint],
) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    // In id order: each statement then walks the primary key (and, for
    // agents provisioned in id order, the table's pages) in order, not at
    // random: 8-14 us of Postgres CPU per row against 13-18 in the order
    // the dirty set drains (BENCHMARKS.md, Heartbeats). The engine's
    // checkpoint already reads them in id order, and sorting sorted input
    // is one pass; the order is still this statement's to ensure.
    let mut sorted: Vec<&LeaseCheckpoint> = leases.iter().collect();
    sorted.sort_unstable_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let columns: Vec<LeaseColumns> = sorted
        .chunks(LEASES_PER_STATEMENT)
        .map(LeaseColumns::of)
        .collect();
    let epoch = store.lease.epoch()?;
    let mut statements: Vec<(&str, Params<'_>)> = vec![(lease::FENCE, vec![&epoch])];
    for c in &columns {
        statements.push((
            CHECKPOINT_LEASES,
            vec![&c.ids, &c.generations, &c.seen, &c.expires],
        ));
    }
    run(store, statements).await
}

/// The next generation of the lease clock stamps the rows, so that
/// followers read them (no event names them); each statement of a
/// checkpoint takes a generation of its own.
const CHECKPOINT_LEASES: &str = "
WITH clock AS (UPDATE lease_clock SET generation = generation + 1 RETURNING generation)
UPDATE agents AS a SET
    last_seen_at = GREATEST(a.last_seen_at, v.last_seen_at),
    lease_expires_at = GREATEST(a.lease_expires_at, v.lease_expires_at),
    lease_checkpoint = (SELECT generation FROM clock)
FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::timestamptz[])
     AS v(id, generation, last_seen_at, lease_expires_at)
WHERE a.id = v.id AND a.generation = v.generation AND a.status = 'online'";

type Call<'c> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'c>>;

/// Runs `statements` (the fence first) as one transaction, in one round
/// trip once they are prepared on the connection: `BEGIN`, the statements
/// and `COMMIT` are all sent before any answer is read. A statement that
/// fails aborts the transaction, and Postgres turns the `COMMIT` into a
/// rollback; so a batch is committed exactly when every answer is a
/// success.
async fn run(store: &PostgresStore, statements: Vec<(&str, Params<'_>)>) -> Result<(), StoreError> {
    let client = store.client().await?;
    let prepared = try_join_all(statements.iter().map(|(sql, _)| client.prepare_cached(sql)))
        .await
        .map_err(classify)?;
    let pg: &tokio_postgres::Client = &client;
    let mut calls: Vec<Pin<Box<MaybeDone<Call<'_>>>>> = Vec::with_capacity(statements.len() + 2);
    calls.push(Box::pin(maybe_done(Box::pin(pg.batch_execute("BEGIN")))));
    for (statement, (_, params)) in prepared.iter().zip(&statements) {
        let call: Call<'_> = Box::pin(async move { pg.execute(statement, params).await.map(drop) });
        calls.push(Box::pin(maybe_done(call)));
    }
    calls.push(Box::pin(maybe_done(Box::pin(pg.batch_execute("COMMIT")))));
    // Each call sends its request when first polled: poll them once, in
    // order, so that they reach Postgres in order; then wait for them all.
    std::future::poll_fn(|cx| {
        for call in calls.iter_mut() {
            let _ = call.as_mut().poll(cx);
        }
        std::task::Poll::Ready(())
    })
    .await;
    for call in calls.iter_mut() {
        call.as_mut().await;
    }
    let mut outcome = Ok(());
    for (i, call) in calls.iter_mut().enumerate() {
        let Some(Err(error)) = call.as_mut().take_output() else {
            continue;
        };
        // The first failure says why; the statements after it only say
        // that the transaction was already aborted.
        if outcome.is_ok() {
            outcome = Err(if i == 1 && error.code() == Some(&lease::FENCED_OUT) {
                lease::not_leader()
            } else {
                classify(error)
            });
        }
    }
    drop(calls);
    if outcome.is_err() {
        // Whatever state the failure left the session in, it is not
        // handed to anyone else.
        drop(deadpool_postgres::Object::take(client));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &(dyn ToSql + Sync), ty: &Type) -> Vec<u8> {
        let mut out = BytesMut::new();
        value.to_sql_checked(ty, &mut out).expect("encodes");
        out.to_vec()
    }

    /// The columns written by hand are the bytes postgres-types writes for
    /// the same values as `Vec`s, times before 2000 and before 1970 included.
    #[test]
    fn lease_columns_encode_as_postgres_types_would() {
        let lease = |id: &str, generation: u64, seen: i64, expires: i64| LeaseCheckpoint {
            agent_id: AgentId::parse(id).unwrap(),
            generation,
            last_seen_at: Timestamp::from_micros(seen),
            lease_expires_at: Timestamp::from_micros(expires),
        };
        let leases = [
            lease("a", 1, 1_764_547_200_123_456, 1_764_547_230_123_456),
            lease("agent-with-a-longer-id.0", u64::from(u32::MAX) + 7, 0, 5),
            lease("z", 0, -86_400_000_001, 946_684_800_000_000),
        ];
        let refs: Vec<&LeaseCheckpoint> = leases.iter().collect();
        let columns = LeaseColumns::of(&refs);

        let ids: Vec<&str> = leases.iter().map(|l| l.agent_id.as_str()).collect();
        let generations: Vec<i64> = leases.iter().map(|l| l.generation as i64).collect();
        let seen: Vec<SystemTime> = leases.iter().map(|l| time(l.last_seen_at)).collect();
        let expires: Vec<SystemTime> = leases.iter().map(|l| time(l.lease_expires_at)).collect();
        assert_eq!(
            encoded(&columns.ids, &Type::TEXT_ARRAY),
            encoded(&ids, &Type::TEXT_ARRAY)
        );
        assert_eq!(
            encoded(&columns.generations, &Type::INT8_ARRAY),
            encoded(&generations, &Type::INT8_ARRAY)
        );
        assert_eq!(
            encoded(&columns.seen, &Type::TIMESTAMPTZ_ARRAY),
            encoded(&seen, &Type::TIMESTAMPTZ_ARRAY)
        );
        assert_eq!(
            encoded(&columns.expires, &Type::TIMESTAMPTZ_ARRAY),
            encoded(&expires, &Type::TIMESTAMPTZ_ARRAY)
        );
    }

    #[test]
    fn a_column_refuses_a_parameter_of_another_element_type() {
        let lease = LeaseCheckpoint {
            agent_id: AgentId::parse("a").unwrap(),
            generation: 1,
            last_seen_at: Timestamp::from_micros(1),
            lease_expires_at: Timestamp::from_micros(2),
        };
        let columns = LeaseColumns::of(&[&lease]);
        let mut out = BytesMut::new();
        assert!(
            columns
                .generations
                .to_sql_checked(&Type::INT4_ARRAY, &mut out)
                .is_err()
        );
        assert!(columns.ids.to_sql_checked(&Type::TEXT, &mut out).is_err());
    }
}
