//! Schema migrations: the SQL files in `migrations/`, applied in order at
//! start, each in its own transaction, under an advisory lock so that two
//! servers starting together do not race.

use tokio_postgres::Client;

/// Every migration, in order. A test checks this list against the folder.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial_schema",
        include_str!("../../../migrations/0001_initial_schema.sql"),
    ),
    (
        "0002_fencing_tombstones_previous_board",
        include_str!("../../../migrations/0002_fencing_tombstones_previous_board.sql"),
    ),
    (
        "0003_leader_lease",
        include_str!("../../../migrations/0003_leader_lease.sql"),
    ),
    (
        "0004_rollouts",
        include_str!("../../../migrations/0004_rollouts.sql"),
    ),
    (
        "0005_warm_follower",
        include_str!("../../../migrations/0005_warm_follower.sql"),
    ),
    (
        "0006_gateway_state",
        include_str!("../../../migrations/0006_gateway_state.sql"),
    ),
    (
        "0007_pending_template_syncs",
        include_str!("../../../migrations/0007_pending_template_syncs.sql"),
    ),
    (
        "0008_gateway_brake",
        include_str!("../../../migrations/0008_gateway_brake.sql"),
    ),
    (
        "0009_agents_fillfactor",
        include_str!("../../../migrations/0009_agents_fillfactor.sql"),
    ),
    (
        "0010_events_without_time_index",
        include_str!("../../../migrations/0010_events_without_time_index.sql"),
    ),
];

/// An arbitrary constant naming this service's migration lock.
const LOCK_KEY: i64 = 0x6d63_6d69_6772;

/// Applies the migrations this database has not seen; returns how many.
pub async fn run(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    // Quiet the "already exists, skipping" notice on every start.
    client
        .batch_execute(
            "SET client_min_messages TO warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let seen = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if seen.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied += 1;
        }
        tx.commit().await?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_in_the_migrations_folder_is_listed_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .map(|name| name.trim_end_matches(".sql").to_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = super::MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(files, listed);
    }
}
