//! Two replicas on one database. The follower answers every call by
//! forwarding it to the leader, which judges it: registrations, provisions,
//! the gateway stream, heartbeats and watches all work through either
//! address. On a handover (SIGTERM's drain) the follower leads at once.

use std::time::Duration;

use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{AgentRole, AgentStatus, ProvisionRequest, WatchAgentRequest};
use mission_control_server::runtime::ReplicaRole;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

async fn health(endpoint: &str, service: &str) -> i32 {
    let mut client = HealthClient::new(mission_control_client::channel(endpoint).unwrap());
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_or(ServingStatus::Unknown as i32, |r| r.into_inner().status)
}

/// Polls `check` every 50 ms until it holds, for at most `PATIENCE`.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ListAgents as if another replica had forwarded it here.
async fn list_as_forwarded(endpoint: &str) -> tonic::Code {
    use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;
    let channel = mission_control_client::channel(endpoint).unwrap();
    let mut client =
        AgentLifecycleClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
            let header = mission_control_server::grpc::FORWARDED_HEADER;
            request
                .metadata_mut()
                .insert(header, "127.0.0.1:1".parse().unwrap());
            Ok(request)
        });
    match client
        .list_agents(mission_control_client::ListAgentsRequest::default())
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn a_follower_answers_every_call_through_the_leader_and_leads_after_a_handover() {
    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--leader-lease".into(), "2s".into()]);
    let leader = spawn_app(flags.clone()).await;
    let follower = spawn_app(flags).await;
    assert_eq!(leader.app.lifecycle().role(), ReplicaRole::Leader);
    assert_eq!(follower.app.lifecycle().role(), ReplicaRole::Follower);
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    eventually("the follower knows the leader", async || {
        health(&follower.endpoint, "").await == serving
    })
    .await;
    assert_eq!(
        health(&follower.endpoint, "mission-control.leader").await,
        not_serving
    );
    assert_eq!(
        health(&leader.endpoint, "mission-control.leader").await,
        serving
    );
    assert_eq!(
        list_as_forwarded(&follower.endpoint).await,
        tonic::Code::Unavailable,
        "a forwarded call is never forwarded again"
    );
    assert_eq!(
        list_as_forwarded(&leader.endpoint).await,
        tonic::Code::Ok,
        "the leader serves forwarded calls"
    );

    // Everything through the follower.
    let gateway_token = follower.gateway("gw").await;
    let mut gateway = follower.connect_gateway(&gateway_token);
    connected(&mut gateway).await;
    let mut watch = follower.watch(WatchAgentRequest::default()).await;
    next_marker(&mut watch).await;
    let provisioned = follower
        .operator
        .provision(ProvisionRequest::new("a1", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(PATIENCE, gateway.recv())
            .await
            .unwrap();
        if let Some(GatewayEvent::Wake { command, ack }) = event {
            assert_eq!(command.agent_id, "a1");
            ack.delivered().await.unwrap();
            break;
        }
    }
    let mut agent = AgentClient::connect(&follower.endpoint, &provisioned.agent_token).unwrap();
    assert_eq!(
        agent.heartbeat().await.unwrap().status,
        AgentStatus::Online as i32
    );
    // The leader judged it: its own copy says so, and the follower's watch
    // carries the leader's revisions.
    let on_leader = leader.operator.get("a1").await.unwrap();
    assert_eq!(on_leader.status, AgentStatus::Online as i32);
    let mut last = 0;
    while last < on_leader.revision {
        let event = next_event(&mut watch).await;
        assert_eq!(event.agent.as_ref().unwrap().id, "a1");
        assert!(event.revision > last);
        last = event.revision;
    }
    assert_eq!(last, on_leader.revision, "the same revisions");

    // Handover: the leader drains and releases its lease; the follower
    // leads without waiting for the lease to expire.
    leader.app.shutdown().await;
    eventually("the follower leads", async || {
        follower.app.lifecycle().role() == ReplicaRole::Leader
    })
    .await;
    assert_eq!(
        health(&follower.endpoint, "mission-control.leader").await,
        serving
    );
    let mut agent = AgentClient::connect(&follower.endpoint, &provisioned.agent_token).unwrap();
    assert_eq!(
        agent.heartbeat().await.unwrap().status,
        AgentStatus::Online as i32
    );
    assert_eq!(
        follower.operator.get("a1").await.unwrap().status,
        AgentStatus::Online as i32
    );
    follower.app.shutdown().await;
}
