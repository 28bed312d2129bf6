//! A database outage as health sees it: a Postgres cluster of the test's own
//! is stopped while agents keep heartbeating. Health must not flap back to
//! SERVING until the database is back, and must say SERVING once it is.

use std::time::Duration;

use mission_control_client::agent::AgentClient;
use mission_control_client::{AgentRole, ProvisionRequest};
use mission_control_server::testing::PostgresCluster;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const AGENTS: usize = 20;

async fn health(endpoint: &str) -> Option<ServingStatus> {
    let channel = mission_control_client::channel(endpoint).ok()?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    match reply.into_inner().status {
        1 => Some(ServingStatus::Serving),
        2 => Some(ServingStatus::NotServing),
        _ => Some(ServingStatus::Unknown),
    }
}

async fn wait_for_health(endpoint: &str, wanted: ServingStatus) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut polls = 0;
    loop {
        polls += 1;
        if health(endpoint).await == Some(wanted) {
            return polls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never said {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_stays_not_serving_through_a_database_outage_and_recovers() {
    let cluster = tokio::task::spawn_blocking(PostgresCluster::start)
        .await
        .unwrap();
    let app = spawn_app(fast_flags(&cluster.url("postgres"))).await;
    app.gateway("gw-outage").await;
    let stop = CancellationToken::new();
    let mut beating = Vec::new();
    for n in 0..AGENTS {
        let provisioned = app
            .operator
            .provision(
                ProvisionRequest::new(
                    format!("outage-{n:02}"),
                    "gw-outage",
                    AgentRole::BoardWorker,
                )
                .on_board("b1"),
            )
            .await
            .unwrap();
        let mut agent = AgentClient::connect(&app.endpoint, &provisioned.agent_token).unwrap();
        let stop = stop.clone();
        beating.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = agent.heartbeat().await;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                }
            }
        }));
    }
    wait_for_health(&app.endpoint, ServingStatus::Serving).await;

    let cluster = std::sync::Arc::new(cluster);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // The probe notices within one health-check interval; from then on no
    // poll may say SERVING while the database is down, however many
    // batches (lease timers of agents that keep heartbeating) run.
    let before_noticed = wait_for_health(&app.endpoint, ServingStatus::NotServing).await;
    let mut down_polls = 0;
    let observe_until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < observe_until {
        let status = health(&app.endpoint).await;
        assert_eq!(
            status,
            Some(ServingStatus::NotServing),
            "poll {down_polls} while the database is down"
        );
        down_polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("outage: noticed after {before_noticed} polls; {down_polls} polls NOT_SERVING");

    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    wait_for_health(&app.endpoint, ServingStatus::Serving).await;
    // SERVING means it serves: a write goes through. (The first commit
    // after the outage may still be refused UNAVAILABLE while the writer
    // takes its lock again; a retry must then succeed.)
    let mut refused = 0;
    loop {
        let request = ProvisionRequest::new("after-outage", "gw-outage", AgentRole::BoardWorker)
            .on_board("b1");
        match app.operator.provision(request).await {
            Ok(_) => break,
            Err(mission_control_client::Error::Status(status))
                if status.code() == tonic::Code::Unavailable && refused < 20 =>
            {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("a provision once the database is back: {error}"),
        }
    }

    stop.cancel();
    for task in beating {
        task.await.unwrap();
    }
    app.app.shutdown().await;
}
