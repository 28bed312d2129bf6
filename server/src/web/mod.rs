//! Plain HTTP beside the gRPC services, on the same port and through the
//! same edge layer: the dashboard page and its assets (embedded in the
//! binary, carrying no data, open to anyone who can reach the port) and
//! Prometheus `/metrics` (a viewer's credentials when operators are
//! configured; see `edge::methods`).

mod assets;
mod grpc_web;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tonic::service::Routes;

use crate::runtime::Lifecycle;

pub use assets::CONTENT_SECURITY_POLICY;
pub use grpc_web::GrpcWebOnlyLayer;

pub const METRICS_PATH: &str = "/metrics";

/// `/metrics`, and with `dashboard` the page at `/` and its assets. Any
/// other path is left to tonic's fallback (gRPC `UNIMPLEMENTED`).
pub fn routes(lifecycle: Lifecycle, dashboard: bool) -> Routes {
    let mut routes = Routes::default();
    let router = routes.axum_router_mut();
    let mut http = std::mem::take(router).route(
        METRICS_PATH,
        get(move || {
            let lifecycle = lifecycle.clone();
            async move {
                // Counting a large fleet takes a while even in slices: off
                // the runtime's workers, so calls queued on the worker that
                // would run it are not held until it ends.
                match tokio::task::spawn_blocking(move || lifecycle.render_metrics()).await {
                    Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    if dashboard {
        http = assets::routes(http);
    }
    *router = http;
    routes
}
