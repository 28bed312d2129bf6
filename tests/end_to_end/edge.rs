//! The service's edge against a real server: every RPC with every kind of
//! credential, roles reloaded from their file, per-agent budgets, requests
//! refused before their body is read, and the input edges.

use std::path::PathBuf;
use std::time::Duration;

use mission_control_client::agent::{AgentClient, LoopEvent};
use mission_control_client::agent_lifecycle_client::AgentLifecycleClient;
use mission_control_client::gateways_client::GatewaysClient;
use mission_control_client::rollouts_client::RolloutsClient;
use mission_control_client::{
    AgentRole, CancelRolloutRequest, DeleteAgentRequest, GetAgentHistoryRequest, GetAgentRequest,
    GetDriftRequest, GetGatewayHistoryRequest, GetRolloutRequest, HeartbeatRequest,
    ListAgentsRequest, ListGatewaysRequest, ListRolloutsRequest, PauseRolloutRequest,
    ProvisionRequest, RegisterGatewayRequest, ResumeRolloutRequest, StartRolloutRequest,
    SyncGatewayTemplatesRequest, WakeAgentRequest, WatchAgentRequest, WatchRolloutRequest,
};
use mission_control_server::edge::hash_line;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::support::*;

const VIEWER_TOKEN: &str = "viewer-s3cret";
const ADMIN_TOKEN: &str = "admin-s3cret";

/// A roles file in the temp dir, removed on drop.
struct RolesFile(PathBuf);

impl RolesFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "mc-e2e-roles-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for RolesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn standard_roles() -> String {
    format!(
        "dashboard viewer {}\nops admin {}\n",
        hash_line(VIEWER_TOKEN),
        hash_line(ADMIN_TOKEN)
    )
}

fn with_roles(database_url: &str, roles: &RolesFile) -> Vec<String> {
    let mut flags = fast_flags(database_url);
    flags.extend(["--roles-file".into(), roles.path()]);
    flags.extend(["--roles-reload-interval".into(), "50ms".into()]);
    flags
}

/// The credentials a call may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    /// A wrong token in every credential header.
    Wrong,
    Agent,
    Gateway,
    Viewer,
    Admin,
}

const CREDENTIALS: [Credential; 6] = [
    Credential::None,
    Credential::Wrong,
    Credential::Agent,
    Credential::Gateway,
    Credential::Viewer,
    Credential::Admin,
];

struct Tokens {
    agent: String,
    gateway: String,
    /// A running rollout, for the calls that name one.
    rollout: String,
}

fn request<T>(message: T, credential: Credential, tokens: &Tokens) -> Request<T> {
    let mut request = Request::new(message);
    let headers: Vec<(&str, String)> = match credential {
        Credential::None => vec![],
        Credential::Wrong => vec![
            ("authorization", "Bearer wrong".into()),
            ("x-agent-token", "mca_wrong".into()),
            ("x-gateway-token", "mcg_wrong".into()),
        ],
        Credential::Agent => vec![("x-agent-token", tokens.agent.clone())],
        Credential::Gateway => vec![("x-gateway-token", tokens.gateway.clone())],
        Credential::Viewer => vec![("authorization", format!("Bearer {VIEWER_TOKEN}"))],
        Credential::Admin => vec![("authorization", format!("Bearer {ADMIN_TOKEN}"))],
    };
    for (name, value) in headers {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    request
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Provision,
    Heartbeat,
    WakeAgent,
    GetAgent,
    ListAgents,
    WatchAgent,
    GetAgentHistory,
    RegisterGateway,
    ListGateways,
    GetGatewayHistory,
    ConnectGateway,
    SyncGatewayTemplates,
    GetDrift,
    /// Over agent `matrix`, on its own.
    StartRollout,
    GetRollout,
    ListRollouts,
    WatchRollout,
    PauseRollout,
    ResumeRollout,
    CancelRollout,
    /// Last: it deletes the agent the others use.
    DeleteAgent,
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

async fn call(rpc: Rpc, channel: &Channel, credential: Credential, tokens: &Tokens) -> Code {
    let mut lifecycle = AgentLifecycleClient::new(channel.clone());
    let mut gateways = GatewaysClient::new(channel.clone());
    let mut rollouts = RolloutsClient::new(channel.clone());
    let r = |message| request(message, credential, tokens);
    let rollout_id = tokens.rollout.clone();
    macro_rules! req {
        ($message:expr) => {
            request($message, credential, tokens)
        };
    }
    match rpc {
        Rpc::Provision => code(
            lifecycle
                .provision(request(
                    ProvisionRequest::new("matrix", "gw", AgentRole::GatewayMain),
                    credential,
                    tokens,
                ))
                .await,
        ),
        Rpc::Heartbeat => code(
            lifecycle
                .heartbeat(request(HeartbeatRequest::default(), credential, tokens))
                .await,
        ),
        Rpc::WakeAgent => code(
            lifecycle
                .wake_agent(request(
                    WakeAgentRequest {
                        agent_id: "matrix".into(),
                    },
                    credential,
                    tokens,
                ))
                .await,
        ),
        Rpc::GetAgent => code(
            lifecycle
                .get_agent(r(GetAgentRequest {
                    agent_id: "matrix".into(),
                }))
                .await,
        ),
        Rpc::ListAgents => code(
            lifecycle
                .list_agents(request(ListAgentsRequest::default(), credential, tokens))
                .await,
        ),
        Rpc::WatchAgent => code(
            lifecycle
                .watch_agent(request(WatchAgentRequest::default(), credential, tokens))
                .await,
        ),
        Rpc::GetAgentHistory => code(
            lifecycle
                .get_agent_history(request(
                    GetAgentHistoryRequest {
                        agent_id: "matrix".into(),
                        ..Default::default()
                    },
                    credential,
                    tokens,
                ))
                .await,
        ),
        Rpc::RegisterGateway => code(
            gateways
                .register_gateway(request(
                    RegisterGatewayRequest {
                        gateway_id: "gw-2".into(),
                        ..Default::default()
                    },
                    credential,
                    tokens,
                ))
                .await,
        ),
        Rpc::ListGateways => code(
            gateways
                .list_gateways(request(ListGatewaysRequest::default(), credential, tokens))
                .await,
        ),
        Rpc::GetGatewayHistory => code(
            gateways
                .get_gateway_history(req!(GetGatewayHistoryRequest {
                    gateway_id: "gw".into(),
                    page_size: 0,
                }))
                .await,
        ),
        Rpc::ConnectGateway => code(
            gateways
                .connect_gateway(request(futures_util::stream::pending(), credential, tokens))
                .await,
        ),
        Rpc::SyncGatewayTemplates => code(
            gateways
                .sync_gateway_templates(req!(SyncGatewayTemplatesRequest {
                    gateway_id: "gw".into(),
                    template_version: "v2".into(),
                }))
                .await,
        ),
        Rpc::GetDrift => code(rollouts.get_drift(req!(GetDriftRequest::default())).await),
        Rpc::StartRollout => code(
            rollouts
                .start_rollout(req!(StartRolloutRequest {
                    template_version: "v2".into(),
                    agent_ids: vec!["matrix".into()],
                    ..Default::default()
                }))
                .await,
        ),
        Rpc::GetRollout => code(
            rollouts
                .get_rollout(req!(GetRolloutRequest { rollout_id }))
                .await,
        ),
        Rpc::ListRollouts => code(rollouts.list_rollouts(req!(ListRolloutsRequest {})).await),
        Rpc::WatchRollout => code(
            rollouts
                .watch_rollout(req!(WatchRolloutRequest { rollout_id }))
                .await,
        ),
        Rpc::PauseRollout => code(
            rollouts
                .pause_rollout(req!(PauseRolloutRequest { rollout_id }))
                .await,
        ),
        Rpc::ResumeRollout => code(
            rollouts
                .resume_rollout(req!(ResumeRolloutRequest {
                    rollout_id,
                    failure_budget: String::new(),
                }))
                .await,
        ),
        Rpc::CancelRollout => code(
            rollouts
                .cancel_rollout(req!(CancelRolloutRequest { rollout_id }))
                .await,
        ),
        Rpc::DeleteAgent => code(
            lifecycle
                .delete_agent(request(
                    DeleteAgentRequest {
                        agent_id: "matrix".into(),
                    },
                    credential,
                    tokens,
                ))
                .await,
        ),
    }
}

#[tokio::test]
async fn every_rpc_with_every_credential() {
    use Code::{Ok as K, PermissionDenied as P, Unauthenticated as U};
    let db = database().await;
    let roles = RolesFile::new(&standard_roles());
    let app = spawn_app(with_roles(db.url(), &roles)).await;
    let admin = app
        .operator
        .clone()
        .with_operator_token(ADMIN_TOKEN)
        .unwrap();
    let gateway = admin.register_gateway("gw", "", false).await.unwrap();
    let agent = admin
        .provision(ProvisionRequest::new("a", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();
    admin
        .provision(ProvisionRequest::new(
            "matrix",
            "gw",
            AgentRole::GatewayMain,
        ))
        .await
        .unwrap();
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Two agents that never check in, one at a time: it stays running.
    for id in ["ro-1", "ro-2"] {
        admin
            .provision(ProvisionRequest::new(id, "gw", AgentRole::GatewayMain))
            .await
            .unwrap();
    }
    let mut start = Request::new(StartRolloutRequest {
        template_version: "v2".into(),
        agent_ids: vec!["ro-1".into(), "ro-2".into()],
        max_in_flight: "1".into(),
        ..Default::default()
    });
    start.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let rollout = RolloutsClient::new(channel.clone())
        .start_rollout(start)
        .await
        .unwrap()
        .into_inner();
    let tokens = Tokens {
        agent: agent.agent_token,
        gateway: gateway.gateway_token,
        rollout: rollout.id,
    };

    // Columns: none, wrong, agent token, gateway token, viewer, admin.
    let matrix: [(Rpc, [Code; 6]); 21] = [
        (Rpc::Provision, [U, U, U, U, P, K]),
        (Rpc::Heartbeat, [U, U, K, U, U, U]),
        (Rpc::WakeAgent, [U, U, U, U, P, K]),
        (Rpc::GetAgent, [U, U, U, U, K, K]),
        (Rpc::ListAgents, [U, U, U, U, K, K]),
        (Rpc::WatchAgent, [U, U, U, U, K, K]),
        (Rpc::GetAgentHistory, [U, U, U, U, K, K]),
        (Rpc::RegisterGateway, [U, U, U, U, P, K]),
        (Rpc::ListGateways, [U, U, U, U, K, K]),
        (Rpc::GetGatewayHistory, [U, U, U, U, K, K]),
        (Rpc::ConnectGateway, [U, U, U, K, U, U]),
        (Rpc::SyncGatewayTemplates, [U, U, U, U, P, K]),
        (Rpc::GetDrift, [U, U, U, U, K, K]),
        (Rpc::StartRollout, [U, U, U, U, P, K]),
        (Rpc::GetRollout, [U, U, U, U, K, K]),
        (Rpc::ListRollouts, [U, U, U, U, K, K]),
        (Rpc::WatchRollout, [U, U, U, U, K, K]),
        (Rpc::PauseRollout, [U, U, U, U, P, K]),
        (Rpc::ResumeRollout, [U, U, U, U, P, K]),
        (Rpc::CancelRollout, [U, U, U, U, P, K]),
        (Rpc::DeleteAgent, [U, U, U, U, P, K]),
    ];
    let mut wrong = Vec::new();
    for (index, credential) in CREDENTIALS.into_iter().enumerate() {
        for (rpc, expected) in &matrix {
            let got = call(*rpc, &channel, credential, &tokens).await;
            if got != expected[index] {
                wrong.push(format!(
                    "{rpc:?} with {credential:?}: got {got:?}, expected {:?}",
                    expected[index]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert_eq!(code(serving), Code::Ok);
}

#[tokio::test]
async fn roles_follow_their_file_and_a_bad_file_keeps_the_old_ones() {
    let db = database().await;
    let roles = RolesFile::new(&format!("dash viewer {}\n", hash_line(VIEWER_TOKEN)));
    let app = spawn_app(with_roles(db.url(), &roles)).await;
    let dash = app
        .operator
        .clone()
        .with_operator_token(VIEWER_TOKEN)
        .unwrap();
    assert!(dash.list_gateways().await.unwrap().is_empty());
    let refused = dash.register_gateway("gw", "", false).await.unwrap_err();
    assert!(
        matches!(&refused, mission_control_client::Error::Status(s) if s.code() == Code::PermissionDenied),
        "{refused}"
    );

    // Promoted in the file: admin once the change is seen (polled).
    roles.write(&format!("dash admin {}\n", hash_line(VIEWER_TOKEN)));
    let mut promoted = false;
    for _ in 0..600 {
        if dash.register_gateway("gw", "", false).await.is_ok() {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(promoted, "the new role was never applied");

    // A broken file is refused; the credentials in force stay.
    roles.write("dash superuser sha256:nothex\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dash.register_gateway("gw", "", false).await.is_ok());

    // Removed from the file: refused once the change is seen.
    roles.write("# nobody\n");
    let mut removed = false;
    for _ in 0..600 {
        if let Err(mission_control_client::Error::TokenRejected(_)) = dash.list_gateways().await {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(removed, "the removed credential still works");
}

/// Flags with the production pace: agents asked to beat every 10 s.
fn production_pace(database_url: &str) -> Vec<String> {
    let mut flags = fast_flags(database_url);
    for (flag, value) in [("--heartbeat-interval", "10s"), ("--lease-ttl", "30s")] {
        let at = flags.iter().position(|f| f == flag).expect("a fast flag");
        flags[at + 1] = value.into();
    }
    flags
}

#[tokio::test]
async fn a_looping_agent_is_limited_and_the_others_are_not() {
    let db = database().await;
    let app = spawn_app(production_pace(db.url())).await;
    app.gateway("gw").await;
    let mut agents = Vec::new();
    for n in 0..4 {
        let reply = app
            .operator
            .provision(ProvisionRequest::new(
                format!("a{n}"),
                "gw",
                AgentRole::GatewayMain,
            ))
            .await
            .unwrap();
        agents.push(AgentClient::connect(&app.endpoint, &reply.agent_token).unwrap());
    }
    let mut looping = agents.pop().unwrap();

    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..200 {
        match looping.heartbeat().await {
            Ok(_) => codes.push(Code::Ok),
            Err(mission_control_client::Error::Status(status)) => {
                codes.push(status.code());
                if let Some(info) = status.get_details_retry_info() {
                    retry_after = info.retry_delay;
                }
            }
            Err(other) => panic!("{other}"),
        }
        // The others beat at a calm pace meanwhile, and are never refused.
        if codes.len() % 50 == 0 {
            for agent in &mut agents {
                agent
                    .heartbeat()
                    .await
                    .expect("a calm agent is not limited");
            }
        }
    }
    let limited = codes
        .iter()
        .filter(|&&c| c == Code::ResourceExhausted)
        .count();
    assert!(
        codes
            .iter()
            .all(|&c| c == Code::Ok || c == Code::ResourceExhausted),
        "{codes:?}"
    );
    assert!(limited >= 100, "only {limited} of 200 refused");
    assert!(
        retry_after.is_some_and(|d| d > Duration::ZERO),
        "a RetryInfo says when"
    );

    // The client library's loop waits at least what the service asked.
    let mut first_retry = None;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    let stop = async {
        let _ = stop_rx.await;
    };
    let run = looping.run_with(stop, |event| {
        if let LoopEvent::Retrying { error, delay } = event
            && first_retry.is_none()
        {
            first_retry = Some((error.retry_after(), delay));
            if let Some(tx) = stop_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap();
    let (asked, waited) = first_retry.expect("the loop was throttled");
    let asked = asked.expect("with a RetryInfo");
    assert!(waited >= asked, "waited {waited:?}, asked {asked:?}");
}

#[tokio::test]
async fn template_version_reports_have_a_budget_of_their_own() {
    let db = database().await;
    let app = spawn_app(production_pace(db.url())).await;
    app.gateway("gw").await;
    let reply = app
        .operator
        .provision(ProvisionRequest::new("a", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();
    let mut refused = None;
    for n in 0..8 {
        let mut agent = AgentClient::connect(&app.endpoint, &reply.agent_token)
            .unwrap()
            .with_template_version(format!("v{n}"));
        if let Err(mission_control_client::Error::Status(status)) = agent.heartbeat().await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("a looping reporter is refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("template version"),
        "{}",
        status.message()
    );
    assert!(status.get_details_retry_info().is_some());
}

#[tokio::test]
async fn unauthenticated_calls_are_refused_before_their_body_is_read() {
    use futures_util::StreamExt;
    let db = database().await;
    let roles = RolesFile::new(&standard_roles());
    let app = spawn_app(with_roles(db.url(), &roles)).await;
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Streams whose request never ends: answered at once, or not at all
    // if the server waited for the body.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut gateways = GatewaysClient::new(channel.clone());
        let big = mission_control_client::GatewayMessage::default();
        let never_ending = futures_util::stream::iter([big]).chain(futures_util::stream::pending());
        calls.push(tokio::spawn(async move {
            code(gateways.connect_gateway(never_ending).await)
        }));
    }
    for call in calls {
        let code = tokio::time::timeout(PATIENCE, call)
            .await
            .expect("refused without reading the body")
            .unwrap();
        assert_eq!(code, Code::Unauthenticated);
    }
    // An operator call with no credentials, its body never finished.
    let mut lifecycle = AgentLifecycleClient::new(channel.clone());
    let refused = tokio::time::timeout(
        PATIENCE,
        lifecycle.get_agent(GetAgentRequest {
            agent_id: "x".repeat(64),
        }),
    )
    .await
    .expect("answered");
    assert_eq!(code(refused), Code::Unauthenticated);
}

#[tokio::test]
async fn requests_larger_than_their_method_allows_are_refused() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    let mut lifecycle = app.operator.lifecycle();
    let huge = ProvisionRequest {
        name: "n".repeat(64 * 1024),
        ..ProvisionRequest::new("a", "gw", AgentRole::GatewayMain)
    };
    let status = lifecycle.provision(huge).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    let mut agent = AgentLifecycleClient::new(
        Channel::from_shared(app.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut heartbeat = Request::new(HeartbeatRequest {
        template_version: "v".repeat(2048),
    });
    heartbeat
        .metadata_mut()
        .insert("x-agent-token", "mca_x".parse().unwrap());
    let status = agent.heartbeat(heartbeat).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// A message whose field 1 is a number where `GetAgentRequest` has a
/// string: it does not decode as one.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAGetAgentRequest {
    #[prost(uint64, tag = "1")]
    agent_id: u64,
}

#[tokio::test]
async fn input_edges_are_invalid_arguments_naming_the_field() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    app.gateway("gw").await;
    let mut lifecycle = app.operator.lifecycle();
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations[0]
            .field
            .clone()
    };

    for (name, version, expected) in [
        ("admin\u{202E}nimda", "v1", "name"),
        ("zero\u{200B}width", "v1", "name"),
        ("fine", "v1\u{2066}", "template_version"),
        ("fine", "\u{FEFF}v1", "template_version"),
    ] {
        let request = ProvisionRequest {
            name: name.into(),
            template_version: version.into(),
            ..ProvisionRequest::new("a", "gw", AgentRole::GatewayMain)
        };
        let status = lifecycle.provision(request).await.unwrap_err();
        assert_eq!(field(status), expected, "{name:?} {version:?}");
    }
    let reply = app
        .operator
        .provision(ProvisionRequest::new("a", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();
    app.operator
        .provision(ProvisionRequest::new("b", "gw", AgentRole::GatewayMain))
        .await
        .unwrap();
    let mut agent = AgentClient::connect(&app.endpoint, &reply.agent_token)
        .unwrap()
        .with_template_version("v\u{200D}2");
    match agent.heartbeat().await {
        Err(mission_control_client::Error::Status(status)) => {
            assert_eq!(field(status), "template_version")
        }
        other => panic!("{other:?}"),
    }

    // History tokens are revisions, which fit a Postgres bigint.
    for token in [(1u64 << 63).to_string(), u64::MAX.to_string()] {
        let status = lifecycle
            .get_agent_history(GetAgentHistoryRequest {
                agent_id: "a".into(),
                page_size: 0,
                page_token: token,
            })
            .await
            .unwrap_err();
        assert_eq!(field(status), "page_token");
    }

    // List tokens are opaque: an agent id is not one, a real one works.
    let list = |page_token: String| ListAgentsRequest {
        page_size: 1,
        page_token,
        ..Default::default()
    };
    let status = lifecycle.list_agents(list("a".into())).await.unwrap_err();
    assert_eq!(field(status), "page_token");
    let first = lifecycle
        .list_agents(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.agents[0].id, "a");
    assert_ne!(first.next_page_token, "a");
    let second = lifecycle
        .list_agents(list(first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.agents[0].id, "b");
    let other_query = ListAgentsRequest {
        gateway_id: "gw".into(),
        ..list(first.next_page_token)
    };
    let status = lifecycle.list_agents(other_query).await.unwrap_err();
    assert_eq!(field(status), "page_token");

    // A message that does not decode is the caller's error, not ours.
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<NotAGetAgentRequest, NotAGetAgentRequest>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/missioncontrol.lifecycle.v1.AgentLifecycle/GetAgent",
    );
    let status = raw
        .unary(
            Request::new(NotAGetAgentRequest { agent_id: 7 }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn metrics_need_an_operator_when_credentials_are_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = database().await;
    let roles = RolesFile::new(&standard_roles());
    let mut flags = with_roles(db.url(), &roles);
    flags.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let app = spawn_app(flags).await;
    let addr = app.app.metrics_addr().expect("metrics are served");
    let get = |authorization: Option<&'static str>| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let header = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(get(None).await, "HTTP/1.1 401 Unauthorized");
    assert_eq!(get(Some("Bearer wrong")).await, "HTTP/1.1 401 Unauthorized");
    assert_eq!(get(Some("Bearer viewer-s3cret")).await, "HTTP/1.1 200 OK");
    assert_eq!(get(Some("bearer admin-s3cret")).await, "HTTP/1.1 200 OK");
}

/// A unary request whose only message is cut short, sent over raw HTTP/2:
/// the body then never ends, or (`end`) ends there. The `grpc-status` the
/// server ends it with.
async fn partial_unary(endpoint: &str, grpc_timeout: Option<&str>, end: bool) -> Option<String> {
    let authority = endpoint.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (client, driver) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(driver);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!(
        "http://{authority}/missioncontrol.lifecycle.v1.AgentLifecycle/GetAgent"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    if let Some(timeout) = grpc_timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let (response, mut body) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    // A frame header announcing 100 bytes, and only 10 of them.
    let mut partial = vec![0u8, 0, 0, 0, 100];
    partial.extend_from_slice(&[0u8; 10]);
    body.send_data(bytes::Bytes::from(partial), end).unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the server ends the call")
        .unwrap();
    let (head, mut rest) = response.into_parts();
    let status = match head.headers.get("grpc-status") {
        Some(status) => Some(status.clone()),
        None => rest
            .trailers()
            .await
            .ok()
            .flatten()
            .and_then(|t| t.get("grpc-status").cloned()),
    };
    drop(body);
    status.map(|s| s.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_unary_call_ends_at_its_deadline_or_the_servers() {
    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--request-timeout".into(), "1s".into()]);
    let app = spawn_app(flags).await;
    let deadline_exceeded = Some((Code::DeadlineExceeded as i32).to_string());
    // No grpc-timeout: the server's --request-timeout.
    assert_eq!(
        partial_unary(&app.endpoint, None, false).await,
        deadline_exceeded
    );
    // The client's grpc-timeout, shorter than the server's: ended there
    // (tonic says CANCELLED; the client's own deadline has said
    // DEADLINE_EXCEEDED by then).
    let cancelled = Some((Code::Cancelled as i32).to_string());
    let status = partial_unary(&app.endpoint, Some("200m"), false).await;
    assert!(
        status == deadline_exceeded || status == cancelled,
        "{status:?}"
    );
}

#[tokio::test]
async fn a_body_cut_mid_message_is_the_callers_error() {
    let db = database().await;
    let app = spawn_app(fast_flags(db.url())).await;
    assert_eq!(
        partial_unary(&app.endpoint, None, true).await,
        Some((Code::InvalidArgument as i32).to_string())
    );
}

#[tokio::test]
async fn health_watches_are_capped() {
    use futures_util::StreamExt;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let db = database().await;
    let mut flags = fast_flags(db.url());
    flags.extend(["--max-health-watches".into(), "2".into()]);
    let app = spawn_app(flags).await;
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut first = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let _second = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    first.next().await.expect("a status").unwrap();
    let third = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(third.get_details_retry_info().is_some());
    // Check stays open, and a closed watch frees its slot.
    health.check(HealthCheckRequest::default()).await.unwrap();
    drop(first);
    let mut reopened = false;
    for _ in 0..600 {
        if health.watch(HealthCheckRequest::default()).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the closed watch's slot was never freed");
}

#[tokio::test]
async fn a_client_certificates_subject_maps_to_a_role() {
    use mission_control_client::operator::OperatorClient;
    use mission_control_client::{ClientTls, Endpoints};
    use mission_control_server::testing::certs::TestPki;

    let pki = TestPki::new("mission-control edge test ca");
    let ca = pki.write_ca();
    let (server_cert, server_key) =
        pki.write_pair("server", &pki.server("server", &["localhost", "127.0.0.1"]));
    let (robot_cert, robot_key) = pki.write_pair("robot", &pki.client("robot"));
    let (stranger_cert, stranger_key) = pki.write_pair("stranger", &pki.client("stranger"));
    let roles = RolesFile::new(&format!(
        "{}robot viewer subject:CN=robot\n",
        standard_roles()
    ));
    let db = database().await;
    let mut flags = with_roles(db.url(), &roles);
    for (flag, file) in [
        ("--tls-cert", &server_cert),
        ("--tls-key", &server_key),
        ("--tls-client-ca", &ca),
    ] {
        flags.extend([flag.to_owned(), file.display().to_string()]);
    }
    let app = spawn_app(flags).await;
    let endpoint = format!("https://localhost:{}", app.app.addr().port());
    let operator = |cert: &std::path::Path, key: &std::path::Path| {
        let tls = ClientTls::from_files(Some(&ca), Some(cert), Some(key)).unwrap();
        OperatorClient::with_endpoints(Endpoints::new([endpoint.clone()], Some(&tls)).unwrap())
    };

    // The robot's certificate alone makes it a viewer.
    let robot = operator(&robot_cert, &robot_key);
    assert!(robot.list_gateways().await.unwrap().is_empty());
    let refused = robot.register_gateway("gw", "", false).await.unwrap_err();
    assert!(
        matches!(&refused, mission_control_client::Error::Status(s) if s.code() == Code::PermissionDenied),
        "{refused}"
    );
    // A bearer token wins over the certificate.
    let robot_as_admin = robot.clone().with_operator_token(ADMIN_TOKEN).unwrap();
    robot_as_admin
        .register_gateway("gw", "", false)
        .await
        .unwrap();
    // A trusted certificate that is no operator's is refused.
    let stranger = operator(&stranger_cert, &stranger_key);
    assert!(matches!(
        stranger.list_gateways().await,
        Err(mission_control_client::Error::TokenRejected(_))
    ));
}
