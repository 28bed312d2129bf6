//! The leader lease in Postgres: one row naming the leader, renewed by it
//! well within its TTL, with the expiry computed by the database's clock so
//! that replicas whose clocks differ still agree on who leads.
//!
//! Each new leader bumps the epoch, and every commit first checks, under a
//! share lock on the row, that its epoch still holds and has not expired
//! (`FENCE`): a deposed or stalled leader commits nothing, and a takeover
//! waits for the old leader's last transaction to end. A stalled leader's
//! open transaction cannot hold the row forever: the store's sessions end
//! transactions left idle for longer than the lease.

use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use super::tls::Database;

use super::postgres::classify;
use super::{Candidate, StoreError};

/// Returns one row while `$1` is the unexpired epoch, none otherwise: every
/// writing transaction runs it first and rolls back on zero. `KEY SHARE`
/// does not conflict with the leader's own renewals (a commit blocked for
/// long must not cost the lease), only with a takeover's `FOR UPDATE`.
pub const FENCE: &str = "SELECT 1 FROM leader_lease
     WHERE epoch = $1 AND expires_at > clock_timestamp() FOR KEY SHARE";

/// A takeover first waits for the fenced transactions still open to end.
const LOCK: &str = "SELECT 1 FROM leader_lease FOR UPDATE";

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
        let ttl = candidate.ttl.as_secs_f64();
        let acquired = async {
            let tx = client.transaction().await?;
            tx.execute(LOCK, &[]).await?;
            let row = tx
                .query_opt(ACQUIRE, &[&candidate.holder, &candidate.address, &ttl])
                .await?;
            // Held: when it expires, by the same clock that decides.
            let left = match row {
                Some(_) => None,
                None => Some(tx.query_one(LEFT, &[]).await?.get::<_, f64>(0)),
            };
            tx.commit().await?;
            Ok((row, left))
        };
        let (row, left) = match acquired.await.map_err(classify) {
            // The old leader's last transaction still holds the row.
            Err(StoreError::Unavailable(_)) if !client.is_closed() => (None, None),
            Err(error) => {
                self.set_free_in(None);
                return Err(error);
            }
            Ok(acquired) => acquired,
        };
        self.set_free_in(left.map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 1e9))));
        let Some(row) = row else { return Ok(None) };
        let epoch: i64 = row.get(0);
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
            // A takeover never waits long behind a stalled transaction.
            new.batch_execute("SET lock_timeout = '1s'; SET statement_timeout = '10s'")
                .await
                .map_err(classify)?;
            *client = Some(new);
        }
        Ok(client)
    }
}

pub fn not_leader() -> StoreError {
    StoreError::NotLeader("this replica is not the leader".into())
}
