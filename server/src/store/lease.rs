//! The leader lease in Postgres: one row naming the leader, renewed by it
//! well within its TTL, with the expiry computed by the database's clock so
//! that replicas whose clocks differ still agree on who leads.
//!
//! Each new leader bumps the epoch, and every commit first checks, under a
//! share lock on the row, that its epoch still holds and has not expired
//! (`FENCE`): a deposed or stalled leader commits nothing, and a takeover
//! waits for the old leader's last transaction to end. A stalled leader's
//! open transaction cannot hold the row past its expiry for long: a
//! takeover that finds the row still locked once it expired ends the
//! sessions whose transactions began before the expiry (`END_STALE`), and
//! the store's sessions end transactions left idle for longer than the
//! lease's expiry besides.
//!
//! A follower reads what is left of the lease without locking anything
//! (`LEFT`), and locks the row only once it expired, so followers' tries
//! never queue behind the leader's commits nor delay its renewals.

use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use super::tls::Database;

use tokio_postgres::error::SqlState;

use super::postgres::classify;
use super::{Candidate, StoreError};

/// Succeeds (one row) while `$1` is the unexpired epoch, and fails with
/// `division_by_zero` otherwise, aborting the transaction: every writing
/// transaction runs it first, and sends its writes and `COMMIT` without
/// waiting for the answer (see `postgres/commit.rs`). `KEY SHARE` does not
/// conflict with the leader's own renewals (a commit blocked for long must
/// not cost the lease), only with a takeover's `FOR UPDATE`.
pub const FENCE: &str = "SELECT 1 / count(*)::int FROM (
     SELECT 1 FROM leader_lease
     WHERE epoch = $1 AND expires_at > clock_timestamp() FOR KEY SHARE) AS held";

/// How [`FENCE`] fails when the epoch does not hold.
pub const FENCED_OUT: SqlState = SqlState::DIVISION_BY_ZERO;

/// A takeover first waits for the fenced transactions still open to end.
const LOCK: &str = "SELECT 1 FROM leader_lease FOR UPDATE";

/// Ends the sessions still holding the lease row in a transaction that
/// began before the lease expired: a stalled (SIGSTOPped) leader's last
/// commit, which would otherwise hold the takeover until Postgres ended it
/// as idle. Only once the lease has expired, so never the leader's own.
/// (Sessions of another database role than this one's are not seen, nor
/// ended: the idle-transaction timeout ends those.)
const END_STALE: &str = "SELECT count(pg_terminate_backend(stale.pid)) FROM (
         SELECT DISTINCT a.pid
         FROM pg_locks l
         JOIN pg_stat_activity a ON a.pid = l.pid
         CROSS JOIN leader_lease s
         WHERE l.locktype = 'relation' AND l.relation = 'leader_lease'::regclass
           AND l.granted AND a.pid <> pg_backend_pid()
           AND s.expires_at <= clock_timestamp() AND a.xact_start < s.expires_at
     ) AS stale";

const ACQUIRE: &str = "UPDATE leader_lease
     SET epoch = epoch + 1, holder = $1, address = $2,
         expires_at = clock_timestamp() + make_interval(secs => $3)
     WHERE expires_at <= clock_timestamp()
     RETURNING epoch";

/// What is left of the lease, in seconds (0 once expired or released).
const LEFT: &str = "SELECT GREATEST(
         EXTRACT(EPOCH FROM expires_at)::float8
         - EXTRACT(EPOCH FROM clock_timestamp())::float8, 0)
     FROM leader_lease";

const RENEW: &str = "UPDATE leader_lease
     SET expires_at = clock_timestamp() + make_interval(secs => $2)
     WHERE epoch = $1 AND expires_at > clock_timestamp()";

const RELEASE: &str = "UPDATE leader_lease
     SET expires_at = '-infinity', holder = '', address = ''
     WHERE epoch = $1";

pub struct PgLease {
    database: Database,
    /// A connection of its own, so a busy pool never delays a renewal.
    client: Mutex<Option<Client>>,
    /// The epoch this replica leads with; 0 while it does not lead.
    epoch: AtomicI64,
    /// What the last refused acquisition saw left of the lease.
    free_in: SyncMutex<Option<Duration>>,
}

impl PgLease {
    pub fn new(database: &Database) -> Self {
        Self {
            database: database.clone(),
            client: Mutex::new(None),
            epoch: AtomicI64::new(0),
            free_in: SyncMutex::new(None),
        }
    }

    /// The epoch to fence a transaction with.
    pub fn epoch(&self) -> Result<i64, StoreError> {
        match self.epoch.load(Ordering::SeqCst) {
            0 => Err(not_leader()),
            epoch => Ok(epoch),
        }
    }

    pub async fn acquire(&self, candidate: &Candidate) -> Result<Option<u64>, StoreError> {
        let mut client = self.client().await?;
        let client = client.as_mut().expect("connected above");
        // Held: say when it expires, by the same clock that decides.
        let left = left(client).await?;
        if left > 0.0 {
            self.set_free_in(Some(Duration::from_secs_f64(left.min(1e9))));
            return Ok(None);
        }
        self.set_free_in(None);
        let epoch = match take(client, candidate).await {
            // The old leader's last transaction still holds the row.
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                let ended: i64 = match client.query_one(END_STALE, &[]).await {
                    Ok(row) => row.get(0),
                    Err(error) => {
                        tracing::warn!(%error, "could not end the old leader's open transactions");
                        0
                    }
                };
                if ended == 0 {
                    return Ok(None);
                }
                tracing::warn!(
                    sessions = ended,
                    "ended the old leader's transactions left open past its lease"
                );
                match take(client, candidate).await {
                    Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                        return Ok(None);
                    }
                    taken => taken.map_err(classify)?,
                }
            }
            taken => taken.map_err(classify)?,
        };
        let Some(epoch) = epoch else { return Ok(None) };
        self.epoch.store(epoch, Ordering::SeqCst);
        Ok(Some(epoch as u64))
    }

    pub fn free_in(&self) -> Option<Duration> {
        *self.free_in.lock().expect("free_in lock")
    }

    fn set_free_in(&self, left: Option<Duration>) {
        *self.free_in.lock().expect("free_in lock") = left;
    }

    pub async fn renew(&self, candidate: &Candidate) -> Result<bool, StoreError> {
        let epoch = self.epoch()?;
        let client = self.client().await?;
        let client = client.as_ref().expect("connected above");
        let ttl = candidate.ttl.as_secs_f64();
        let renewed = client
            .execute(RENEW, &[&epoch, &ttl])
            .await
            .map_err(classify)?
            == 1;
        if !renewed {
            self.epoch.store(0, Ordering::SeqCst);
        }
        Ok(renewed)
    }

    pub async fn release(&self) {
        let epoch = self.epoch.swap(0, Ordering::SeqCst);
        if epoch == 0 {
            return;
        }
        let released = match self.client().await {
            Ok(client) => client
                .as_ref()
                .expect("connected above")
                .execute(RELEASE, &[&epoch])
                .await
                .map_err(classify),
            Err(error) => Err(error),
        };
        match released {
            Ok(_) => tracing::info!(epoch, "leader lease released"),
            Err(error) => tracing::warn!(%error, "releasing the leader lease failed; it expires"),
        }
    }

    /// The lease connection, opened again if it was lost.
    async fn client(&self) -> Result<MutexGuard<'_, Option<Client>>, StoreError> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            let (new, connection) = self
                .database
                .config
                .connect(self.database.tls.clone())
                .await
                .map_err(classify)?;
            tokio::spawn(connection);
            // Nothing on this connection waits long (a takeover sets its
            // own, shorter lock timeout).
            new.batch_execute("SET lock_timeout = '1s'; SET statement_timeout = '10s'")
                .await
                .map_err(classify)?;
            *client = Some(new);
        }
        Ok(client)
    }
}

/// What is left of the lease, in seconds, read without a lock.
async fn left(client: &Client) -> Result<f64, StoreError> {
    let row = client.query_one(LEFT, &[]).await.map_err(classify)?;
    Ok(row.get::<_, f64>(0))
}

/// Takes the expired lease: waits (a tenth of `--leader-lease` at most) for
/// the transactions fenced by the old epoch to end, then bumps the epoch.
/// `None` if another replica took or renewed it meanwhile.
async fn take(
    client: &mut Client,
    candidate: &Candidate,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let ttl = candidate.ttl.as_secs_f64();
    // The expiry is 0.6 of the lease: a sixth of it is a tenth of the lease.
    let lock_wait = (candidate.ttl / 6).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_wait.as_millis()
    ))
    .await?;
    tx.execute(LOCK, &[]).await?;
    let row = tx
        .query_opt(ACQUIRE, &[&candidate.holder, &candidate.address, &ttl])
        .await?;
    tx.commit().await?;
    Ok(row.map(|row| row.get(0)))
}

pub fn not_leader() -> StoreError {
    StoreError::NotLeader("this replica is not the leader".into())
}
