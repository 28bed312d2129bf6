//! The transport adapter: gRPC services over the runtime, plus standard
//! health (NOT_SERVING while the database is unreachable) and reflection.

mod convert;
mod error;
mod forward;
mod gateways;
mod lifecycle;
mod page_token;
mod rollouts;
mod validate;
mod watch;

use std::future::Future;

use mission_control_proto::v1::agent_lifecycle_server::AgentLifecycleServer;
use mission_control_proto::v1::gateways_server::GatewaysServer;
use mission_control_proto::v1::rollouts_server::RolloutsServer;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::edge::EdgeLayer;
use crate::edge::methods::{MAX_GATEWAY_MESSAGE, MAX_OPEN_MESSAGE, MAX_UNARY_REQUEST};
use crate::net::{ConnectionSettings, Incoming, Listener};
use crate::runtime::Lifecycle;

pub use forward::{FORWARDED_HEADER, ForwardLayer};

/// Serves every service on `listener`'s connections (plaintext or TLS)
/// until `shutdown` completes, then stops accepting and waits for calls in
/// flight.
pub async fn serve(
    lifecycle: Lifecycle,
    forward: ForwardLayer,
    edge: EdgeLayer,
    listener: Listener,
    connections: ConnectionSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        reporter,
        lifecycle.clone(),
        forward.leader_known(),
    ));

    // google.rpc error details too, so grpcurl can show BadRequest,
    // ErrorInfo and RetryInfo instead of raw bytes.
    let descriptors = [
        mission_control_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        v1 = v1.register_encoded_file_descriptor_set(set);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = v1
        .build_v1()
        .expect("the embedded descriptor sets are valid")
        .max_decoding_message_size(MAX_OPEN_MESSAGE);
    let reflection_v1alpha = v1alpha
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid")
        .max_decoding_message_size(MAX_OPEN_MESSAGE);
    let health = health.max_decoding_message_size(MAX_OPEN_MESSAGE);

    let router = connections
        .server_builder()
        // Idle tracking outermost: it sees every call, refused or not.
        .layer(listener.track_calls)
        // Browsers speak gRPC-Web (over HTTP/1.1 or 2): translated to gRPC
        // here, so everything inside sees the same calls as from any client.
        .layer(crate::web::GrpcWebOnlyLayer)
        // A follower forwards to the leader first: the leader authenticates.
        .layer(forward)
        // Authentication and size limits before any body is read.
        .layer(edge)
        // The dashboard and /metrics: plain HTTP beside the services.
        .add_routes(crate::web::routes(lifecycle.clone(), true))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // The generated service, with WatchAgent's events encoded once for
        // every watcher.
        .add_service(watch::LifecycleRoutes::new(
            lifecycle.clone(),
            MAX_UNARY_REQUEST,
        ))
        .add_service(
            RolloutsServer::new(rollouts::RolloutService::new(lifecycle.clone()))
                .max_decoding_message_size(MAX_UNARY_REQUEST),
        )
        .add_service(
            GatewaysServer::new(gateways::GatewayService::new(lifecycle))
                .max_decoding_message_size(MAX_GATEWAY_MESSAGE),
        );
    match listener.incoming {
        Incoming::Plain(incoming) => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Incoming::Tls(incoming) => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// `/metrics` alone on its own listener (`--metrics-listen`), for a scraper
/// that cannot present what the main port asks for (a client certificate
/// under mutual TLS) or a network that keeps scrapers off the API port.
/// Same router code, same edge layer, same connection discipline.
pub async fn serve_metrics(
    lifecycle: Lifecycle,
    edge: EdgeLayer,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let Incoming::Plain(incoming) = listener.incoming else {
        unreachable!("the metrics listener is plaintext")
    };
    tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(listener.track_calls)
        .layer(edge)
        .add_routes(crate::web::routes(lifecycle, false))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The health "service" that is `SERVING` on the leader only, for a load
/// balancer or an operator that wants to find it.
pub const LEADER_HEALTH_SERVICE: &str = "mission-control.leader";

/// Keeps the health service in step with the database, leadership and the
/// drain. The whole server and each service are `SERVING` while the
/// database is reachable and this replica can serve calls: as leader, or as
/// a follower that knows the leader to forward to.
async fn report_health(
    reporter: HealthReporter,
    lifecycle: Lifecycle,
    mut leader_known: tokio::sync::watch::Receiver<bool>,
) {
    use tonic::server::NamedService;
    let services = [
        "",
        <AgentLifecycleServer<lifecycle::LifecycleService> as NamedService>::NAME,
        <GatewaysServer<gateways::GatewayService> as NamedService>::NAME,
        <RolloutsServer<rollouts::RolloutService> as NamedService>::NAME,
    ];
    let mut reachable = lifecycle.database_reachable();
    let mut roles = lifecycle.roles();
    let stopping = lifecycle.draining();
    let status = |serving: bool| {
        if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    loop {
        roles.borrow_and_update();
        let leading = lifecycle.is_leader();
        let can_answer = leading || *leader_known.borrow_and_update();
        let serving = *reachable.borrow_and_update() && can_answer && !stopping.is_cancelled();
        for service in services {
            reporter.set_service_status(service, status(serving)).await;
        }
        let leads = leading && !stopping.is_cancelled();
        reporter
            .set_service_status(LEADER_HEALTH_SERVICE, status(leads))
            .await;
        if stopping.is_cancelled() {
            return;
        }
        tokio::select! {
            changed = reachable.changed() => if changed.is_err() { return },
            changed = roles.changed() => if changed.is_err() { return },
            changed = leader_known.changed() => if changed.is_err() { return },
            _ = stopping.cancelled() => {}
        }
    }
}
