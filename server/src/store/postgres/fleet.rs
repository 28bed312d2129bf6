//! Reading the whole fleet (a start, a full reload): the agents table as
//! binary `COPY`, split by heap block range over a few connections that
//! share one snapshot, decoded straight from the wire into agents.
//!
//! Why not `query("SELECT * ...")`: it buffered every row as a
//! tokio-postgres `Row` before converting one, looked every column up by
//! name, and allocated a `String` for each text column it then parsed and
//! dropped; with one connection, Postgres's conversion of a million rows
//! and ours ran one after the other (BENCHMARKS.md, start-up).

use std::time::{Duration, Instant};

use futures_util::{StreamExt, pin_mut};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{PostgresStore, classify, corrupt, token_hash};
use crate::engine::model::Interner;
use crate::engine::{Agent, AgentId, Role, Status, Timestamp};
use crate::store::StoreError;

/// What a load reads of each agent, in the order [`AgentDecoder`] expects.
const AGENT_COLUMNS: [&str; FIELDS] = [
    "id",
    "name",
    "gateway_id",
    "board_id",
    "role",
    "status",
    "generation",
    "wake_attempts",
    "last_wake_sent_at",
    "checkin_deadline_at",
    "last_seen_at",
    "lease_expires_at",
    "last_provision_error",
    "offline_reason",
    "desired_template_version",
    "reported_template_version",
    "created_at",
    "updated_at",
    "revision",
    "wake_held",
    "token_hash",
];
const FIELDS: usize = 21;

/// Fewer heap blocks than this per reader (8 KiB each, about 30 rows) are
/// read by one connection: a second costs more than it saves.
pub(super) const MIN_BLOCKS_PER_READER: u64 = 1024;

/// How many connections read the agents: one per core, up to four. Each
/// costs a Postgres backend converting its rows and a task decoding them.
pub(super) fn readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// The agents of a load and how the read went.
pub(super) struct FleetRead {
    /// Sorted by id.
    pub agents: Vec<Agent>,
    pub readers: usize,
    /// Time spent decoding rows, summed over the readers.
    pub decode: Duration,
    /// Time spent putting them in id order (zero when they came in order).
    pub sort: Duration,
}

/// Heap block ranges, `[from, to)`; the last is open-ended (`None`) so that
/// no row is missed whatever the size was when it was measured.
fn block_ranges(blocks: u64, readers: usize, min_blocks: u64) -> Vec<(u64, Option<u64>)> {
    let readers = (readers as u64).min(blocks / min_blocks.max(1)).max(1);
    (0..readers)
        .map(|i| {
            let from = blocks * i / readers;
            let to = (i + 1 < readers).then(|| blocks * (i + 1) / readers);
            (from, to)
        })
        .collect()
}

fn copy_statement(range: (u64, Option<u64>), whole: bool) -> String {
    let columns = AGENT_COLUMNS.join(", ");
    let filter = match range {
        _ if whole => String::new(),
        (from, None) => format!(" WHERE ctid >= '({from},0)'::tid"),
        (from, Some(to)) => {
            format!(" WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid")
        }
    };
    format!("COPY (SELECT {columns} FROM agents{filter}) TO STDOUT (FORMAT binary)")
}

/// Streams one `COPY` into a decoder.
async fn copy_agents(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &str,
) -> Result<AgentDecoder, StoreError> {
    let stream = tx.copy_out(statement).await.map_err(classify)?;
    pin_mut!(stream);
    let mut decoder = AgentDecoder::default();
    while let Some(chunk) = stream.next().await {
        decoder.feed(&chunk.map_err(classify)?)?;
    }
    decoder.finish()
}

/// A load's reading of the agents: the block ranges, the tasks reading all
/// but the first (the load's own transaction reads that one), and their
/// word that they hold the snapshot. Dropped, it aborts the tasks.
pub(super) struct Readers {
    ranges: Vec<(u64, Option<u64>)>,
    tasks: Vec<JoinHandle<Result<AgentDecoder, StoreError>>>,
    imports: Vec<oneshot::Receiver<()>>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl PostgresStore {
    /// Splits the agents table for `readers` connections and starts the
    /// tasks of all ranges but the first, each on its own connection
    /// and in `tx`'s snapshot.
    pub(super) async fn spawn_readers(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        readers: usize,
        min_blocks: u64,
    ) -> Result<Readers, StoreError> {
        // Readers beyond the first need their own pooled connections.
        let spare = self.pool.status().max_size.saturating_sub(1).max(1);
        let blocks: i64 = tx
            .query_one(
                "SELECT pg_relation_size('agents') / current_setting('block_size')::bigint",
                &[],
            )
            .await
            .map_err(classify)?
            .get(0);
        let mut readers = Readers {
            ranges: block_ranges(blocks.max(0) as u64, readers.min(spare), min_blocks),
            tasks: Vec::new(),
            imports: Vec::new(),
        };
        if readers.ranges.len() == 1 {
            return Ok(readers);
        }
        let snapshot: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(classify)?
            .get(0);
        for range in readers.ranges.iter().skip(1).copied() {
            let (imported, import) = oneshot::channel();
            readers.imports.push(import);
            let pool = self.pool.clone();
            let snapshot = snapshot.clone();
            readers.tasks.push(tokio::spawn(async move {
                let mut client = pool.get().await.map_err(super::pool_error)?;
                let tx = super::read_snapshot(&mut client).await?;
                // The snapshot id comes from Postgres: digits, letters, '-'.
                tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
                    .await
                    .map_err(classify)?;
                let _ = imported.send(());
                let decoder = copy_agents(&tx, &copy_statement(range, false)).await?;
                tx.commit().await.map_err(classify)?;
                Ok(decoder)
            }));
        }
        Ok(readers)
    }
}

impl Readers {
    /// Reads the first block range on `tx`, the snapshot's owner, then
    /// waits until the other readers hold the snapshot: `tx` may end after
    /// that.
    pub(super) async fn read_first(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<AgentDecoder, StoreError> {
        let whole = self.ranges.len() == 1;
        let first = copy_agents(tx, &copy_statement(self.ranges[0], whole)).await?;
        // A reader that failed before importing dropped its sender: its
        // error is reported when it is joined.
        for import in std::mem::take(&mut self.imports) {
            let _ = import.await;
        }
        Ok(first)
    }

    /// Joins the other readers' agents to the first range's, in id order.
    pub(super) async fn gather(mut self, first: AgentDecoder) -> Result<FleetRead, StoreError> {
        let count = self.ranges.len();
        let mut decode = first.spent;
        let mut agents = first.agents;
        // Awaited in place: the guard still aborts the rest if one fails.
        for task in &mut self.tasks {
            let part = task
                .await
                .map_err(|e| StoreError::Other(format!("a fleet reader failed: {e}")))??;
            decode += part.spent;
            agents.extend(part.agents);
        }
        let sorting = Instant::now();
        // Rows come in heap order: a fresh seed's is the id order, but
        // updates move rows. Sorting a key per agent moves each agent once.
        if !agents.is_sorted_by(|a, b| a.id < b.id) {
            agents.sort_by_cached_key(|a| a.id.clone());
        }
        Ok(FleetRead {
            agents,
            readers: count,
            decode,
            sort: sorting.elapsed(),
        })
    }
}

/// Decodes a binary `COPY` of [`AGENT_COLUMNS`] as its chunks arrive
/// (a chunk is one `CopyData` message, in practice one row; a row split
/// over chunks waits for the rest).
#[derive(Default)]
pub(super) struct AgentDecoder {
    agents: Vec<Agent>,
    /// The start of a row whose end has not arrived yet.
    pending: Vec<u8>,
    header_read: bool,
    trailer_read: bool,
    /// Gateway and board ids, template versions and names seen so far:
    /// their agents share one allocation.
    shared: Interner,
    spent: Duration,
}

/// `PGCOPY\n\377\r\n\0`, then flags and the header extension's length.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER: usize = SIGNATURE.len() + 8;
/// Postgres timestamps count from 2000-01-01; ours from 1970.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

type Fields<'a> = [Option<&'a [u8]>; FIELDS];

impl AgentDecoder {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let started = Instant::now();
        if self.pending.is_empty() {
            let used = self.decode(chunk)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = self.decode(&data)?;
            data.drain(..used);
            self.pending = data;
        }
        self.spent += started.elapsed();
        Ok(())
    }

    fn finish(self) -> Result<Self, StoreError> {
        if !self.trailer_read || !self.pending.is_empty() {
            return Err(StoreError::Corrupt("the agents' COPY ended early".into()));
        }
        Ok(self)
    }

    /// Decodes the complete rows at the start of `data`; returns how many
    /// bytes they took.
    fn decode(&mut self, data: &[u8]) -> Result<usize, StoreError> {
        let mut at = 0;
        if !self.header_read {
            if data.len() < HEADER {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(StoreError::Corrupt("not a binary COPY".into()));
            }
            let extension = u32::from_be_bytes(data[15..19].try_into().expect("4 bytes"));
            at = HEADER + extension as usize;
            if data.len() < at {
                return Ok(0);
            }
            self.header_read = true;
        }
        while !self.trailer_read {
            let rest = &data[at..];
            let Some(count) = rest.get(..2) else { break };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.trailer_read = true;
                at += 2;
                break;
            }
            if count as usize != FIELDS {
                return Err(StoreError::Corrupt(format!(
                    "an agent row of {count} columns"
                )));
            }
            let mut fields: Fields = [None; FIELDS];
            let mut end = 2;
            let mut complete = true;
            for field in &mut fields {
                let Some(len) = rest.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
                end += 4;
                if len >= 0 {
                    let Some(value) = rest.get(end..end + len as usize) else {
                        complete = false;
                        break;
                    };
                    *field = Some(value);
                    end += len as usize;
                }
            }
            if !complete {
                break;
            }
            let agent = self.agent(&fields)?;
            self.agents.push(agent);
            at += end;
        }
        Ok(at)
    }

    fn agent(&mut self, f: &Fields) -> Result<Agent, StoreError> {
        let shared = &mut self.shared;
        let id = AgentId::parse(text(f, 0)?).map_err(|e| corrupt("agent id", &e.to_string()))?;
        let role = text(f, 4)?;
        let status = text(f, 5)?;
        Ok(Agent {
            name: shared.name(text(f, 1)?, &id),
            id,
            gateway_id: shared
                .gateway(text(f, 2)?)
                .map_err(|e| corrupt("gateway id", &e.to_string()))?,
            board_id: opt_text(f, 3)?
                .map(|board| shared.board(board))
                .transpose()
                .map_err(|e| corrupt("board id", &e.to_string()))?,
            role: Role::parse(role).ok_or_else(|| corrupt("role", role))?,
            status: Status::parse(status).ok_or_else(|| corrupt("status", status))?,
            generation: int8(f, 6)? as u64,
            wake_attempts: int4(f, 7)? as u32,
            last_wake_sent_at: opt_timestamp(f, 8)?,
            checkin_deadline_at: opt_timestamp(f, 9)?,
            last_seen_at: opt_timestamp(f, 10)?,
            lease_expires_at: opt_timestamp(f, 11)?,
            // Shared too: a fleet's errors and reasons repeat.
            last_provision_error: opt_text(f, 12)?.map(|t| shared.text(t)),
            offline_reason: opt_text(f, 13)?.map(|t| shared.text(t)),
            desired_template_version: shared.text(text(f, 14)?),
            reported_template_version: shared.text(text(f, 15)?),
            created_at: timestamp(f, 16)?,
            updated_at: timestamp(f, 17)?,
            revision: int8(f, 18)? as u64,
            wake_held: boolean(f, 19)?,
            token_hash: token_hash(required(f, 20)?)?,
        })
    }
}

fn required<'a>(f: &Fields<'a>, i: usize) -> Result<&'a [u8], StoreError> {
    f[i].ok_or_else(|| corrupt(AGENT_COLUMNS[i], "null"))
}

fn fixed<const N: usize>(value: &[u8], i: usize) -> Result<[u8; N], StoreError> {
    value
        .try_into()
        .map_err(|_| corrupt(AGENT_COLUMNS[i], &format!("{} bytes", value.len())))
}

fn opt_text<'a>(f: &Fields<'a>, i: usize) -> Result<Option<&'a str>, StoreError> {
    f[i].map(|v| std::str::from_utf8(v).map_err(|_| corrupt(AGENT_COLUMNS[i], "not UTF-8")))
        .transpose()
}

fn text<'a>(f: &Fields<'a>, i: usize) -> Result<&'a str, StoreError> {
    opt_text(f, i)?.ok_or_else(|| corrupt(AGENT_COLUMNS[i], "null"))
}

fn int8(f: &Fields, i: usize) -> Result<i64, StoreError> {
    Ok(i64::from_be_bytes(fixed(required(f, i)?, i)?))
}

fn int4(f: &Fields, i: usize) -> Result<i32, StoreError> {
    Ok(i32::from_be_bytes(fixed(required(f, i)?, i)?))
}

fn boolean(f: &Fields, i: usize) -> Result<bool, StoreError> {
    Ok(fixed::<1>(required(f, i)?, i)?[0] != 0)
}

fn opt_timestamp(f: &Fields, i: usize) -> Result<Option<Timestamp>, StoreError> {
    f[i].map(|v| {
        let micros = i64::from_be_bytes(fixed(v, i)?);
        Ok(Timestamp::from_micros(
            micros.saturating_add(POSTGRES_EPOCH_MICROS),
        ))
    })
    .transpose()
}

fn timestamp(f: &Fields, i: usize) -> Result<Timestamp, StoreError> {
    opt_timestamp(f, i)?.ok_or_else(|| corrupt(AGENT_COLUMNS[i], "null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_tables_are_read_by_one_connection_and_ranges_cover_every_block() {
        assert_eq!(block_ranges(0, 2, 1024), [(0, None)]);
        assert_eq!(block_ranges(1500, 2, 1024), [(0, None)]);
        assert_eq!(block_ranges(4096, 2, 1024), [(0, Some(2048)), (2048, None)]);
        assert_eq!(
            block_ranges(5, 8, 0),
            [
                (0, Some(1)),
                (1, Some(2)),
                (2, Some(3)),
                (3, Some(4)),
                (4, None)
            ]
        );
        assert_eq!(
            block_ranges(3072, 4, 1024),
            [(0, Some(1024)), (1024, Some(2048)), (2048, None)]
        );
    }

    /// One row as Postgres writes it: a field count, then each field's
    /// length (-1 for null) and bytes.
    fn row(fields: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for field in fields {
            match field {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    fn agent_row(id: &str, board: Option<&str>, lease: Option<i64>) -> Vec<u8> {
        let s = |v: &str| Some(v.as_bytes().to_vec());
        let ts = |micros: i64| Some((micros - POSTGRES_EPOCH_MICROS).to_be_bytes().to_vec());
        row(&[
            s(id),
            s("name"),
            s("gw"),
            board.and_then(s),
            s("board_worker"),
            s("online"),
            Some(3i64.to_be_bytes().to_vec()),
            Some(1i32.to_be_bytes().to_vec()),
            None,
            None,
            ts(5),
            lease.and_then(ts),
            None,
            s("gone"),
            s("v2"),
            s("v1"),
            ts(1),
            ts(2),
            Some(7i64.to_be_bytes().to_vec()),
            Some(vec![1]),
            Some(vec![9; 32]),
        ])
    }

    fn copy(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        rows.iter().for_each(|r| out.extend_from_slice(r));
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_decode_whatever_the_chunks_and_share_board_ids() {
        let data = copy(&[
            agent_row("a", Some("b1"), Some(100)),
            agent_row("b", Some("b1"), None),
            agent_row("c", None, Some(-3)),
        ]);
        for size in [1, 2, 7, 19, 64, data.len()] {
            let mut decoder = AgentDecoder::default();
            data.chunks(size).try_for_each(|c| decoder.feed(c)).unwrap();
            let agents = decoder.finish().unwrap().agents;
            let ids: Vec<_> = agents.iter().map(|a| a.id.as_str()).collect();
            assert_eq!(ids, ["a", "b", "c"], "chunks of {size}");
            let a = &agents[0];
            assert_eq!(a.lease_expires_at, Some(Timestamp::from_micros(100)));
            assert_eq!(agents[2].lease_expires_at, Some(Timestamp::from_micros(-3)));
            assert_eq!(agents[1].lease_expires_at, None);
            assert_eq!(a.last_seen_at, Some(Timestamp::from_micros(5)));
            assert_eq!(
                (a.created_at, a.updated_at),
                (Timestamp::from_micros(1), Timestamp::from_micros(2))
            );
            assert_eq!((a.generation, a.wake_attempts, a.revision), (3, 1, 7));
            assert_eq!((a.role, a.status), (Role::BoardWorker, Status::Online));
            assert_eq!(a.offline_reason.as_deref(), Some("gone"));
            assert_eq!(a.last_provision_error, None);
            assert_eq!(
                (&*a.desired_template_version, &*a.reported_template_version),
                ("v2", "v1")
            );
            assert!(a.wake_held);
            assert_eq!(a.token_hash.0, [9; 32]);
            assert_eq!(agents[2].board_id, None);
            let (b1, b2) = (
                a.board_id.as_ref().unwrap(),
                agents[1].board_id.as_ref().unwrap(),
            );
            assert!(std::ptr::eq(b1.as_str(), b2.as_str()), "one allocation");
        }
    }

    #[test]
    fn a_truncated_or_malformed_copy_is_corrupt() {
        let data = copy(&[agent_row("a", None, None)]);
        let mut decoder = AgentDecoder::default();
        decoder.feed(&data[..data.len() - 5]).unwrap();
        assert!(matches!(decoder.finish(), Err(StoreError::Corrupt(_))));

        let mut short = agent_row("a", None, None);
        short[1] = 20; // a field count the load did not ask for
        let mut decoder = AgentDecoder::default();
        assert!(matches!(
            decoder.feed(&copy(&[short])),
            Err(StoreError::Corrupt(_))
        ));
        let mut decoder = AgentDecoder::default();
        assert!(matches!(
            decoder.feed(b"PGCOPY\nXXXXXXXXXXXXXXXX"),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Agents with every kind of value (nulls, shared and absent boards,
    /// times before 2000), rows moved out of id order by updates: read by
    /// several connections, they equal one connection's read, and the
    /// rows `SELECT *` gives.
    #[tokio::test]
    async fn several_readers_read_what_one_reads_in_id_order() {
        use crate::store::Store;
        use crate::store::postgres::{PoolSettings, PostgresStore, agent_from_row};
        use crate::testing::TestDatabase;

        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(db.url(), &PoolSettings::default())
            .await
            .unwrap();
        let client = store.pool.get().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO gateways (id, name, token_hash, created_at)
                 VALUES ('gw-a', 'a', sha256('a'), now()), ('gw-b', 'b', sha256('b'), now());
                 INSERT INTO agents (id, name, gateway_id, board_id, role, status, generation,
                     wake_attempts, last_wake_sent_at, checkin_deadline_at, last_seen_at,
                     lease_expires_at, last_provision_error, offline_reason,
                     desired_template_version, reported_template_version, created_at,
                     updated_at, revision, token_hash, wake_held)
                 SELECT 'agent-' || lpad(i::text, 4, '0'), 'name ' || i || ' ✓',
                     CASE WHEN i % 2 = 0 THEN 'gw-a' ELSE 'gw-b' END,
                     CASE WHEN i % 5 = 0 THEN NULL ELSE 'board-' || (i % 7) END,
                     (ARRAY['gateway_main', 'board_lead', 'board_worker'])[1 + i % 3],
                     (ARRAY['provisioning', 'updating', 'online', 'offline'])[1 + i % 4],
                     i::bigint * 1000000000, i % 3,
                     CASE WHEN i % 2 = 0 THEN NULL
                          ELSE timestamptz '1999-12-31 23:59:59.999999+00' - i * interval '1 us' END,
                     CASE WHEN i % 3 = 0 THEN NULL
                          ELSE timestamptz '2026-11-30 12:00:00.000001+00' + i * interval '1 ms' END,
                     now() - i * interval '1 s', now() + i * interval '1 s',
                     CASE WHEN i % 11 = 0 THEN 'no route to ' || i END,
                     CASE WHEN i % 13 = 0 THEN 'lease expired' END,
                     '2026.' || (i % 4), '', timestamptz '1970-01-01 00:00:00+00',
                     now(), i, sha256(('token-' || i)::bytea), i % 17 = 0
                 FROM generate_series(1, 600) AS i;
                 UPDATE agents SET revision = revision + 1 WHERE right(id, 1) IN ('3', '7');",
            )
            .await
            .unwrap();
        let heap_order: Vec<String> = client
            .query("SELECT id FROM agents", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(!heap_order.is_sorted(), "the updates moved rows");
        let selected: Vec<Agent> = client
            .query("SELECT * FROM agents ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| agent_from_row(row, &mut Interner::default()).unwrap())
            .collect();

        let (one, readers) = store.load_with(1, 1).await.unwrap();
        assert_eq!(readers, 1);
        assert_eq!(one.agents, selected);
        let (several, readers) = store.load_with(3, 1).await.unwrap();
        assert_eq!(readers, 3, "the table spans more than three blocks");
        assert_eq!(several, one);
        let gateways: std::collections::HashSet<_> = several
            .agents
            .iter()
            .map(|a| a.gateway_id.as_str().as_ptr())
            .collect();
        assert!(
            gateways.len() <= 2 * readers,
            "shared per reader: {}",
            gateways.len()
        );
        drop(client);
        store.close().await;
    }
}
