//! One writer per database. The server holds a session advisory lock on a
//! dedicated connection for as long as it runs, and every commit checks, in
//! its own transaction, that this server still holds it. A second server on
//! the same database waits at start until the first is gone, and a server
//! that lost its lock (its connection dropped and another took over) can no
//! longer commit.

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls, types::Oid};

use super::StoreError;

/// An arbitrary constant naming the writer lock ("mcwrite").
const KEY: i64 = 0x006d_6377_7269_7465;

/// Touches one row if the backend `$3` holds the lock, none otherwise: a
/// commit runs it first and rolls back on zero.
pub const HELD_BY: &str = "UPDATE event_history SET compacted_revision = compacted_revision
    WHERE EXISTS (SELECT 1 FROM pg_locks
                  WHERE locktype = 'advisory' AND classid = $1 AND objid = $2
                    AND objsubid = 1 AND pid = $3 AND granted)";

pub fn key_parts() -> (Oid, Oid) {
    ((KEY >> 32) as Oid, KEY as u32 as Oid)
}

struct Holder {
    client: Client,
    pid: i32,
}

pub struct WriterLock {
    config: Config,
    holder: Mutex<Holder>,
}

impl WriterLock {
    pub async fn acquire(config: &Config) -> Result<Self, StoreError> {
        let holder = take(config).await?;
        Ok(Self {
            config: config.clone(),
            holder: Mutex::new(holder),
        })
    }

    /// The backend that holds the lock for this server.
    pub async fn pid(&self) -> i32 {
        self.holder.lock().await.pid
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
            tracing::warn!("writer lock connection was lost; lock taken again");
        }
        Ok(())
    }
}

async fn take(config: &Config) -> Result<Holder, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1), pg_backend_pid()", &[&KEY])
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    if !row.get::<_, bool>(0) {
        return Err(StoreError::WriterLocked(
            "another mission-control server is writing to this database".into(),
        ));
    }
    Ok(Holder {
        client,
        pid: row.get(1),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::engine::{Engine, GatewayId, GatewaySpec, Policy, Timestamp, TokenHash};
    use crate::store::{PostgresStore, Store, StoreError};
    use crate::testing::TestDatabase;

    async fn connect(db: &TestDatabase) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(db.url(), &Default::default()).await
    }

    /// A batch with one gateway, from an engine that knows nothing else.
    fn batch(engine: &mut Engine) -> crate::engine::Batch {
        let mut batch = engine.begin(Timestamp::from_micros(1));
        let spec = GatewaySpec {
            gateway_id: GatewayId::parse("gw").unwrap(),
            name: "gw".into(),
            rotate_token: false,
        };
        engine.register_gateway(&mut batch, spec, TokenHash([7; 32]));
        batch
    }

    #[tokio::test]
    async fn a_second_server_cannot_write_while_the_first_holds_the_lock() {
        let db = TestDatabase::create().await;
        let first = connect(&db).await.unwrap();
        assert!(matches!(
            connect(&db).await,
            Err(StoreError::WriterLocked(_))
        ));

        drop(first);
        let mut second = None;
        for _ in 0..100 {
            match connect(&db).await {
                Ok(store) => {
                    second = Some(store);
                    break;
                }
                Err(StoreError::WriterLocked(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            second.is_some(),
            "the lock is free once the first server is gone"
        );
    }

    #[tokio::test]
    async fn a_server_that_lost_its_lock_can_no_longer_commit() {
        let db = TestDatabase::create().await;
        let first = connect(&db).await.unwrap();
        let pid = first.writer.pid().await;
        let (admin, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();

        // Another server takes over the database.
        let mut second = None;
        for _ in 0..100 {
            if let Ok(store) = connect(&db).await {
                second = Some(store);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = second.expect("the lock was freed");

        let mut engine = Engine::new(Policy::default());
        let result = first.commit(&batch(&mut engine)).await;
        assert!(
            matches!(result, Err(StoreError::WriterLocked(_))),
            "{result:?}"
        );
        assert!(
            second.load().await.unwrap().gateways.is_empty(),
            "nothing written"
        );
        assert!(
            matches!(first.ping().await, Err(StoreError::WriterLocked(_))),
            "health says so"
        );
        second.commit(&batch(&mut engine)).await.unwrap();
    }
}
