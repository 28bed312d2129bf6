//! The transport adapter: gRPC services over the runtime, plus standard
//! health (NOT_SERVING while the database is unreachable) and reflection.

mod convert;
mod error;
mod gateways;
mod lifecycle;
mod page_token;
mod validate;

use std::future::Future;
use std::time::Duration;

use mission_control_proto::v1::agent_lifecycle_server::AgentLifecycleServer;
use mission_control_proto::v1::gateways_server::GatewaysServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::edge::EdgeLayer;
use crate::edge::methods::{MAX_GATEWAY_MESSAGE, MAX_OPEN_MESSAGE, MAX_UNARY_REQUEST};
use crate::runtime::Lifecycle;

pub use mission_control_proto::metadata::{
    AGENT_TOKEN as AGENT_TOKEN_HEADER, GATEWAY_TOKEN as GATEWAY_TOKEN_HEADER,
};

/// Serves every service on `listener` until `shutdown` completes, then
/// stops accepting and waits for calls in flight.
pub async fn serve(
    lifecycle: Lifecycle,
    edge: EdgeLayer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(reporter, lifecycle.clone()));

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

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .timeout(edge.request_timeout())
        // Authentication and size limits before any body is read.
        .layer(edge)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AgentLifecycleServer::new(lifecycle::LifecycleService::new(lifecycle.clone()))
                .max_decoding_message_size(MAX_UNARY_REQUEST),
        )
        .add_service(
            GatewaysServer::new(gateways::GatewayService::new(lifecycle))
                .max_decoding_message_size(MAX_GATEWAY_MESSAGE),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Keeps the health service in step with the database (and the drain).
async fn report_health(reporter: HealthReporter, lifecycle: Lifecycle) {
    use tonic::server::NamedService;
    let services = [
        "",
        <AgentLifecycleServer<lifecycle::LifecycleService> as NamedService>::NAME,
        <GatewaysServer<gateways::GatewayService> as NamedService>::NAME,
    ];
    let mut reachable = lifecycle.database_reachable();
    let stopping = lifecycle.draining();
    loop {
        let serving = *reachable.borrow_and_update() && !stopping.is_cancelled();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in services {
            reporter.set_service_status(service, status).await;
        }
        if stopping.is_cancelled() {
            return;
        }
        tokio::select! {
            changed = reachable.changed() => if changed.is_err() { return },
            _ = stopping.cancelled() => {}
        }
    }
}
