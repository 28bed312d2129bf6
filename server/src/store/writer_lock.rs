//! One writer per database. The server holds a session advisory lock on a
//! dedicated connection for as long as it runs, so a second server on the
//! same database waits at start until the first is gone.
//!
//! Holding the lock is not enough to be safe to write: the lock goes with its
//! connection, and the holder may not notice at once. So each time a server
//! takes the lock it bumps a fencing epoch, and every commit first updates
//! the fence row where the epoch is still its own. That statement both checks
//! and row-locks: a server that lost the lock commits nothing, and a new
//! writer's bump waits for the old writer's last transaction to end.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};

use super::StoreError;

/// An arbitrary constant naming the writer lock ("mcwrite").
const KEY: i64 = 0x006d_6377_7269_7465;

/// Touches the fence row if `$1` is still the current epoch, none otherwise:
/// every writing transaction runs it first and rolls back on zero.
pub const FENCE: &str = "UPDATE writer_fence SET epoch = epoch WHERE epoch = $1";

struct Holder {
    client: Client,
    epoch: i64,
}

pub struct WriterLock {
    config: Config,
    holder: Mutex<Holder>,
    /// Set when the lock was lost and taken again: another server may have
    /// written meanwhile, so the caller must reload before writing.
    retaken: AtomicBool,
}

impl WriterLock {
    /// Takes the lock (or fails with `WriterLocked`) and a new epoch. The
    /// schema must be migrated first.
    pub async fn acquire(config: &Config) -> Result<Self, StoreError> {
        let holder = take(config).await?;
        Ok(Self {
            config: config.clone(),
            holder: Mutex::new(holder),
            retaken: AtomicBool::new(false),
        })
    }

    /// The epoch to fence a transaction with. Fails once after the lock was
    /// taken again, so that the caller reloads its state first.
    pub async fn epoch(&self) -> Result<i64, StoreError> {
        if self.retaken.swap(false, Ordering::SeqCst) {
            return Err(StoreError::WriterLocked(
                "the writer lock was lost and taken again; state must be reloaded".into(),
            ));
        }
        Ok(self.holder.lock().await.epoch)
    }

    /// Gives the lock up: this server writes no more.
    pub async fn release(&self) {
        let holder = self.holder.lock().await;
        if let Err(error) = holder
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
            .await
        {
            tracing::warn!(%error, "releasing the writer lock failed; it goes with the connection");
        }
    }

    /// Re-takes the lock if its connection was lost (and nobody else took it).
    pub async fn ensure(&self) -> Result<(), StoreError> {
        let mut holder = self.holder.lock().await;
        if holder.client.is_closed() {
            *holder = take(&self.config).await?;
            self.retaken.store(true, Ordering::SeqCst);
            tracing::warn!("writer lock connection was lost; lock taken again");
        }
        Ok(())
    }
}

async fn take(config: &Config) -> Result<Holder, StoreError> {
    let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable(e.to_string());
    let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
    tokio::spawn(connection);
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&KEY])
        .await
        .map_err(unavailable)?
        .get(0);
    if !locked {
        return Err(StoreError::WriterLocked(
            "another mission-control server is writing to this database".into(),
        ));
    }
    let epoch: i64 = client
        .query_one(
            "UPDATE writer_fence SET epoch = epoch + 1 RETURNING epoch",
            &[],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    Ok(Holder { client, epoch })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::engine::{Batch, Engine, GatewayId, GatewaySpec, Policy, Timestamp, TokenHash};
    use crate::store::{PostgresStore, Store, StoreError};
    use crate::testing::TestDatabase;

    async fn connect(db: &TestDatabase) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(db.url(), &Default::default()).await
    }

    /// Connects once the lock is free (the old holder's session may take a
    /// moment to end).
    async fn connect_when_free(db: &TestDatabase) -> PostgresStore {
        for _ in 0..250 {
            match connect(db).await {
                Ok(store) => return store,
                Err(StoreError::WriterLocked(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("{other}"),
            }
        }
        panic!("the writer lock was never freed");
    }

    /// Ends the session holding the writer lock, as a network fault would.
    async fn kill_lock_holder(db: &TestDatabase) {
        let (admin, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let killed = admin
            .execute(
                // Advisory locks are per database: only this test's one.
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND objid = $1 AND granted
                   AND database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())",
                &[&(super::KEY as u32)],
            )
            .await
            .unwrap();
        assert_eq!(killed, 1);
    }

    /// A batch registering one gateway with this token.
    fn batch(engine: &mut Engine, token: u8) -> Batch {
        let mut batch = engine.begin(Timestamp::from_micros(1));
        let spec = GatewaySpec {
            gateway_id: GatewayId::parse("gw").unwrap(),
            name: Some("gw".into()),
            rotate_token: true,
        };
        engine.register_gateway(&mut batch, spec, TokenHash([token; 32]));
        batch
    }

    #[tokio::test]
    async fn a_second_server_waits_while_the_first_holds_the_lock() {
        let db = TestDatabase::create().await;
        let first = connect(&db).await.unwrap();
        assert!(matches!(
            connect(&db).await,
            Err(StoreError::WriterLocked(_))
        ));
        first.close().await;
        connect_when_free(&db).await;
    }

    #[tokio::test]
    async fn a_server_that_lost_its_lock_to_another_commits_nothing() {
        let db = TestDatabase::create().await;
        let first = connect(&db).await.unwrap();
        kill_lock_holder(&db).await;
        let second = connect_when_free(&db).await;

        let mut engine = Engine::new(Policy::default());
        let result = first.commit(&batch(&mut engine, 1)).await;
        assert!(
            matches!(result, Err(StoreError::WriterLocked(_))),
            "{result:?}"
        );
        assert!(
            second.load().await.unwrap().gateways.is_empty(),
            "nothing written"
        );
        let pinged = first.ping().await;
        assert!(
            matches!(pinged, Err(StoreError::WriterLocked(_))),
            "health says so: {pinged:?}"
        );
        second.commit(&batch(&mut engine, 2)).await.unwrap();
    }

    #[tokio::test]
    async fn a_server_that_takes_its_lock_again_must_reload_before_writing() {
        let db = TestDatabase::create().await;
        let store = connect(&db).await.unwrap();
        kill_lock_holder(&db).await;
        for _ in 0..250 {
            if store.writer.holder.lock().await.client.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
            .ping()
            .await
            .expect("the health probe takes the lock again");

        let mut engine = Engine::new(Policy::default());
        let result = store.commit(&batch(&mut engine, 1)).await;
        assert!(
            matches!(result, Err(StoreError::WriterLocked(_))),
            "once: {result:?}"
        );
        store.commit(&batch(&mut engine, 1)).await.unwrap();
        assert_eq!(store.load().await.unwrap().gateways.len(), 1);
    }
}
