//! gRPC-Web for browsers, beside everything else on the port. tonic-web's
//! service answers any HTTP/1.1 request that is not gRPC-Web with 400, so
//! only gRPC-Web requests go through it: it turns them into gRPC calls (and
//! their answers back), and every other request (native gRPC, the page,
//! `/metrics`) goes straight on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use tonic::body::Body;
use tonic_web::GrpcWebLayer;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebOnlyLayer;

impl<S> Layer<S> for GrpcWebOnlyLayer {
    type Service = GrpcWebOnly<S>;

    fn layer(&self, inner: S) -> GrpcWebOnly<S> {
        GrpcWebOnly { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcWebOnly<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for GrpcWebOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is the one that was made ready (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc_web(&request) {
            Box::pin(GrpcWebLayer::new().layer(inner).call(request))
        } else {
            Box::pin(inner.call(request))
        }
    }
}

/// `application/grpc-web`, `-text`, and their `+proto` forms.
fn is_grpc_web(request: &http::Request<Body>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc-web"))
}
