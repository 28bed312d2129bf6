//! The whole policy over the wire: provision, wake over the gateway stream,
//! check in, escalate, go offline; and what a hostile client gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mission_control_client::agent::AgentClient;
use mission_control_client::gateway::GatewayEvent;
use mission_control_client::{
    AgentRole, AgentStatus, ProvisionRequest, TransitionReason, WatchAgentRequest,
};
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn one_agent_checks_in_on_its_second_wake_and_one_that_never_does_ends_offline_after_three() {
    let db = database().await;
    // The check-in races the second deadline: give it 2 s, so a stalled
    // machine does not turn the second wake into a third. The lease outlives
    // the whole test, so the agent that checked in stays online.
    let mut flags = fast_flags(db.url());
    set_flag(&mut flags, "--checkin-deadline", "2s");
    set_flag(&mut flags, "--lease-ttl", "5m");
    let app = spawn_app(flags).await;
    let gateway_token = app.gateway("gw-e2e").await;
    let mut gateway = app.connect_gateway(&gateway_token);
    connected(&mut gateway).await;
    let mut watch = app.watch(WatchAgentRequest::default()).await;

    let eager = app
        .operator
        .provision(ProvisionRequest::new("eager", "gw-e2e", AgentRole::BoardWorker).on_board("b1"))
        .await
        .unwrap();
    let silent = app
        .operator
        .provision(ProvisionRequest::new(
            "silent",
            "gw-e2e",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap();
    assert!(!eager.agent_token.is_empty() && !silent.agent_token.is_empty());
    assert_eq!(
        eager.agent.unwrap().status,
        AgentStatus::Provisioning as i32,
        "not online before a check-in"
    );

    // The gateway: acknowledge every wake; start "eager" on its second.
    let wakes: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let recorded = wakes.clone();
    let endpoint = app.endpoint.clone();
    let eager_token = eager.agent_token.clone();
    tokio::spawn(async move {
        while let Some(event) = gateway.recv().await {
            if let GatewayEvent::Wake { command, ack } = event {
                recorded
                    .lock()
                    .unwrap()
                    .entry(command.agent_id.clone())
                    .or_default()
                    .push(command.attempt);
                ack.delivered().await.expect("ack sent");
                if command.agent_id == "eager" && command.attempt == 2 {
                    let mut agent = AgentClient::connect(&endpoint, &eager_token).unwrap();
                    agent.heartbeat().await.expect("check-in accepted");
                }
            }
        }
    });

    let (mut eager_online, mut silent_offline) = (false, false);
    while !(eager_online && silent_offline) {
        let event = next_event(&mut watch).await;
        let agent = event.agent.unwrap();
        eager_online |= agent.id == "eager" && agent.status == AgentStatus::Online as i32;
        silent_offline |= agent.id == "silent" && agent.status == AgentStatus::Offline as i32;
    }

    let eager = app.operator.get("eager").await.unwrap();
    assert_eq!(eager.status, AgentStatus::Online as i32);
    assert_eq!(eager.wake_attempts, 0);
    assert!(eager.checkin_deadline_at.is_none());
    assert!(eager.last_seen_at.is_some());

    let silent = app.operator.get("silent").await.unwrap();
    assert_eq!(silent.status, AgentStatus::Offline as i32);
    assert_eq!(silent.wake_attempts, 3);
    assert!(silent.checkin_deadline_at.is_none());
    assert!(
        silent
            .last_provision_error
            .contains("no check-in after 3 wake attempts"),
        "{}",
        silent.last_provision_error
    );

    let wakes = wakes.lock().unwrap().clone();
    assert_eq!(wakes["silent"], [1, 2, 3], "exactly three wakes");
    assert_eq!(wakes["eager"], [1, 2], "no wake after the check-in");

    let history = app.operator.history("silent", 10).await.unwrap();
    let reasons: Vec<i32> = history.iter().map(|e| e.reason).collect();
    use TransitionReason as R;
    assert_eq!(
        reasons,
        [
            R::MaxAttemptsReached,
            R::DeadlineMissed,
            R::DeadlineMissed,
            R::Provisioned
        ]
        .map(|r| r as i32)
    );
    app.app.shutdown().await;
}

#[tokio::test]
async fn bad_input_bad_tokens_and_unknown_agents_get_clear_errors() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    app.gateway("gw").await;
    let provisioned = app
        .operator
        .provision(ProvisionRequest::new("a1", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();

    let mut lifecycle = app.operator.lifecycle();
    let missing = lifecycle
        .heartbeat(mission_control_client::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    for token in ["mca_0000", "garbage", &provisioned.agent_token[..20]] {
        let error = AgentClient::connect(&app.endpoint, token)
            .unwrap()
            .heartbeat()
            .await
            .unwrap_err();
        assert!(
            matches!(error, mission_control_client::Error::TokenRejected(ref m) if m == "invalid agent token"),
            "{error}"
        );
    }

    let bad = lifecycle
        .provision(ProvisionRequest::new("", "gw", AgentRole::GatewayMain))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("agent_id:"), "{}", bad.message());
    assert_eq!(bad_request_field(&bad), "agent_id");
    let no_board = lifecycle
        .provision(ProvisionRequest::new("w", "gw", AgentRole::BoardWorker))
        .await
        .unwrap_err();
    assert_eq!(no_board.code(), Code::InvalidArgument);
    assert_eq!(bad_request_field(&no_board), "board_id");
    assert!(
        no_board.message().starts_with("board_id:"),
        "{}",
        no_board.message()
    );
    let no_gateway = lifecycle
        .provision(ProvisionRequest::new(
            "x",
            "nowhere",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_gateway.code(), Code::NotFound);

    let unknown = app.operator.get("nobody").await.unwrap_err();
    assert!(
        matches!(unknown, mission_control_client::Error::Status(ref s) if s.code() == Code::NotFound)
    );
    let unknown = app.operator.wake("nobody").await.unwrap_err();
    assert!(
        matches!(unknown, mission_control_client::Error::Status(ref s) if s.code() == Code::NotFound)
    );

    let mut rejected = app.connect_gateway("mcg_not_a_token");
    match tokio::time::timeout(PATIENCE, rejected.recv())
        .await
        .unwrap()
    {
        Some(GatewayEvent::Rejected(mission_control_client::Error::TokenRejected(message))) => {
            assert_eq!(message, "invalid gateway token")
        }
        other => panic!("expected a rejected token, got {other:?}"),
    }
    app.app.shutdown().await;
}

/// The field an `INVALID_ARGUMENT` refusal names.
fn invalid<T>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    let status = result.map(|_| ()).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    bad_request_field(&status)
}

/// The field a `BadRequest` detail names (the one field violation).
fn bad_request_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    violations[0].field.clone()
}

#[tokio::test]
async fn bad_input_to_list_history_watch_and_register_gateway_names_the_field() {
    use mission_control_client::{
        GetAgentHistoryRequest, ListAgentsRequest, RegisterGatewayRequest,
    };

    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    let mut lifecycle = app.operator.lifecycle();
    let mut gateways = app.operator.gateways();

    let list = |change: fn(&mut ListAgentsRequest)| {
        let mut request = ListAgentsRequest::default();
        change(&mut request);
        request
    };
    for (request, field) in [
        (list(|r| r.gateway_id = "bad gateway".into()), "gateway_id"),
        (list(|r| r.board_id = "bad board".into()), "board_id"),
        (list(|r| r.statuses = vec![99]), "statuses"),
        (list(|r| r.page_token = "not a token".into()), "page_token"),
    ] {
        assert_eq!(invalid(lifecycle.list_agents(request).await), field);
    }

    let history = |agent_id: &str, page_token: &str| GetAgentHistoryRequest {
        agent_id: agent_id.into(),
        page_size: 0,
        page_token: page_token.into(),
    };
    let bad_agent = lifecycle.get_agent_history(history("a b", "")).await;
    assert_eq!(invalid(bad_agent), "agent_id");
    let bad_page = lifecycle.get_agent_history(history("a1", "x")).await;
    assert_eq!(invalid(bad_page), "page_token");

    for (request, field) in [
        (
            WatchAgentRequest {
                agent_id: "a b".into(),
                ..Default::default()
            },
            "agent_id",
        ),
        (
            WatchAgentRequest {
                statuses: vec![-1],
                ..Default::default()
            },
            "statuses",
        ),
        (
            WatchAgentRequest {
                gateway_id: "?".into(),
                ..Default::default()
            },
            "gateway_id",
        ),
    ] {
        assert_eq!(invalid(lifecycle.watch_agent(request).await), field);
    }

    let register = |gateway_id: &str, name: String| RegisterGatewayRequest {
        gateway_id: gateway_id.into(),
        name,
        rotate_token: false,
    };
    let bad_id = gateways.register_gateway(register("", String::new())).await;
    assert_eq!(invalid(bad_id), "gateway_id");
    // Over the 200-character name limit, within the request size limit.
    let long_name = gateways
        .register_gateway(register("gw", "n".repeat(201)))
        .await;
    assert_eq!(invalid(long_name), "name");
    let oversized = gateways
        .register_gateway(register("gw", "n".repeat(10_000)))
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::ResourceExhausted, "{oversized:?}");
    app.app.shutdown().await;
}

#[tokio::test]
async fn moving_an_agent_to_another_gateway_is_a_failed_precondition() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    app.gateway("gw-a").await;
    app.gateway("gw-b").await;
    let request = |gateway: &str| ProvisionRequest::new("a1", gateway, AgentRole::GatewayMain);
    app.operator.provision(request("gw-a")).await.unwrap();
    let moved = app
        .operator
        .lifecycle()
        .provision(request("gw-b"))
        .await
        .unwrap_err();
    assert_eq!(moved.code(), Code::FailedPrecondition, "{moved:?}");
    assert_eq!(app.operator.get("a1").await.unwrap().gateway_id, "gw-a");
    app.app.shutdown().await;
}

#[tokio::test]
async fn health_is_not_serving_while_postgres_is_unreachable() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    app.gateway("gw").await;
    let mut health = HealthClient::new(mission_control_client::channel(&app.endpoint).unwrap());
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_status = async || {
        let reply = tokio::time::timeout(PATIENCE, statuses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        reply.status
    };
    assert_eq!(next_status().await, ServingStatus::Serving as i32);

    // Cut this server off from its database, and only this server.
    let admin = admin().await;
    let name = db.name();
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(next_status().await, ServingStatus::NotServing as i32);

    // A transition cannot be committed: UNAVAILABLE, saying when to retry.
    let refused = app
        .operator
        .lifecycle()
        .provision(ProvisionRequest::new("a1", "gw", AgentRole::GatewayMain))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let retry = tonic_types::StatusExt::get_details_retry_info(&refused).expect("a RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");

    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    assert_eq!(next_status().await, ServingStatus::Serving as i32);
    app.app.shutdown().await;
}

async fn admin() -> tokio_postgres::Client {
    let url = mission_control_server::testing::admin_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn with_an_operator_token_operator_calls_need_it_and_agents_do_not() {
    use mission_control_client::GetAgentRequest;
    use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;

    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--operator-token", "op-s3cret"].map(String::from));
    set_flag(&mut flags, "--lease-ttl", "5m"); // online until the end
    let app = spawn_app(flags).await;
    let channel = mission_control_client::channel(&app.endpoint).unwrap();

    let denied = app
        .operator
        .register_gateway("gw", "", false)
        .await
        .unwrap_err();
    assert!(
        matches!(denied, mission_control_client::Error::TokenRejected(_)),
        "{denied}"
    );
    let wrong_helper = app.operator.clone().with_operator_token("nope").unwrap();
    assert!(matches!(
        wrong_helper.list_gateways().await,
        Err(mission_control_client::Error::TokenRejected(_))
    ));
    let helper = app
        .operator
        .clone()
        .with_operator_token("op-s3cret")
        .unwrap();
    assert!(helper.list_gateways().await.unwrap().is_empty());

    let bearer = |value: &'static str| {
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
            Ok(request)
        }
    };
    let mut wrong = AgentLifecycleClient::with_interceptor(channel.clone(), bearer("Bearer nope"));
    let error = wrong
        .get_agent(GetAgentRequest {
            agent_id: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    let mut operator =
        AgentLifecycleClient::with_interceptor(channel.clone(), bearer("Bearer op-s3cret"));
    let mut gateways = mission_control_client::gateways_client::GatewaysClient::with_interceptor(
        channel.clone(),
        bearer("Bearer op-s3cret"),
    );
    gateways
        .register_gateway(mission_control_client::RegisterGatewayRequest {
            gateway_id: "gw".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = operator
        .provision(ProvisionRequest::new("a", "gw", AgentRole::GatewayMain))
        .await
        .unwrap()
        .into_inner()
        .agent_token;

    // The agent needs only its own token.
    let mut agent = AgentClient::connect(&app.endpoint, &token).unwrap();
    assert_eq!(
        agent.heartbeat().await.unwrap().status,
        AgentStatus::Online as i32
    );
    let seen = operator
        .get_agent(GetAgentRequest {
            agent_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.status, AgentStatus::Online as i32);
    app.app.shutdown().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--metrics-listen", "127.0.0.1:0"].map(String::from));
    // Nothing expires within the test: the counts are what the test did.
    set_flag(&mut flags, "--checkin-deadline", "5m");
    set_flag(&mut flags, "--lease-ttl", "5m");
    let app = spawn_app(flags).await;
    let gateway_token = app.gateway("gw").await;
    app.gateway("away").await;
    let mut gateway = app.connect_gateway(&gateway_token);
    connected(&mut gateway).await;
    let mut watch = app.watch(WatchAgentRequest::default()).await;
    next_marker(&mut watch).await;
    // A wake to a gateway that is not connected fails.
    app.operator
        .provision(ProvisionRequest::new("b", "away", AgentRole::GatewayMain))
        .await
        .unwrap();
    let token = app
        .operator
        .provision(ProvisionRequest::new("a", "gw", AgentRole::GatewayMain))
        .await
        .unwrap()
        .agent_token;
    let mut agent = AgentClient::connect(&app.endpoint, &token).unwrap();
    agent.heartbeat().await.unwrap(); // a check-in
    agent.heartbeat().await.unwrap(); // a renewal in memory
    // The wake reached the connected gateway.
    loop {
        match tokio::time::timeout(PATIENCE, gateway.recv())
            .await
            .unwrap()
        {
            Some(GatewayEvent::Wake { command, ack }) if command.agent_id == "a" => {
                ack.delivered().await.expect("ack sent");
                break;
            }
            Some(GatewayEvent::Disconnected { error, .. }) => panic!("{error}"),
            Some(_) => continue,
            None => panic!("the gateway stream ended"),
        }
    }

    let addr = app.app.metrics_addr().expect("metrics are served");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "mission_control_agents{status=\"online\"} 1",
        "mission_control_agents{status=\"provisioning\"} 1",
        "mission_control_transitions_total{reason=\"provisioned\"} 2",
        "mission_control_transitions_total{reason=\"checked_in\"} 1",
        "mission_control_heartbeats_total{path=\"committed\"} 1",
        "mission_control_heartbeats_total{path=\"memory\"} 1",
        "mission_control_checkin_latency_seconds_count 1",
        "mission_control_heartbeat_lease_left_seconds_count 1",
        "mission_control_database_reachable 1",
        "mission_control_wakes_sent_total 1",
        "mission_control_wakes_failed_total 1",
        "mission_control_commit_failures_total 0",
        "mission_control_gateways_connected 1",
        "mission_control_watch_streams 1",
    ] {
        assert!(response.contains(line), "no {line:?} in\n{response}");
    }
    let value = |name: &str| -> f64 {
        let line = response
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{response}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Two provisions and a check-in, at least; batches may hold several.
    assert!(value("mission_control_commit_batches_total") >= 1.0);
    // Agent "b"'s check-in deadline and agent "a"'s lease, at least.
    assert!(value("mission_control_timers") >= 2.0, "{response}");
    app.app.shutdown().await;
}
