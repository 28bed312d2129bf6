//! The `tower` layer in front of every service. It decides from the path
//! and the headers alone, before a byte of the body is read: who may call
//! (roles), how large a unary request may be, and how many health watches
//! may be open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::body::Checked;
use super::credentials::Role;
use super::methods::{self, Access, Method};
use super::operators::Operators;
use mission_control_proto::metadata;

/// What the layer checks against; cheap to clone.
#[derive(Clone)]
pub struct EdgeLayer {
    gate: Arc<Gate>,
}

struct Gate {
    operators: Arc<Operators>,
    request_timeout: Duration,
    health_watches: Arc<Semaphore>,
    max_health_watches: usize,
}

impl EdgeLayer {
    pub fn new(
        operators: Arc<Operators>,
        max_health_watches: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            gate: Arc::new(Gate {
                operators,
                request_timeout,
                health_watches: Arc::new(Semaphore::new(max_health_watches)),
                max_health_watches,
            }),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Edge<S>
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
        let method = methods::method(request.uri().path());
        let subject = match method.access {
            // A forwarded call comes over the forwarding replica's
            // connection: that certificate is the replica's, not the
            // caller's, and grants nothing.
            Access::Operator(_) if !request.headers().contains_key(metadata::FORWARDED_BY) => {
                peer_subject(&request)
            }
            _ => None,
        };
        if let Err(status) = self
            .gate
            .admit(method, request.headers(), subject.as_deref())
        {
            return if method.plain_http {
                refuse_http(&status)
            } else {
                refuse(status)
            };
        }
        let permit = if method.health_watch {
            match self.gate.health_watches.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return refuse(Status::with_error_details(
                        Code::ResourceExhausted,
                        format!(
                            "too many health watches open (at most {}); use Check or retry later",
                            self.gate.max_health_watches
                        ),
                        ErrorDetails::with_retry_info(Some(Duration::from_secs(5))),
                    ));
                }
            }
        } else {
            None
        };
        // gRPC bodies only: a plain HTTP request's body is not framed.
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let request = if grpc || method.max_request_bytes.is_some() {
            request.map(|body| Body::new(Checked::new(body, method.max_request_bytes, grpc)))
        } else {
            request
        };
        // Until the response starts: reading a unary request included, a
        // stream's messages not. (A client's shorter `grpc-timeout` is
        // enforced by tonic too.)
        let timeout = method.max_request_bytes.map(|_| self.gate.request_timeout);
        // The clone is the one that was made ready (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let call = inner.call(request);
            let response = match timeout {
                Some(timeout) => match tokio::time::timeout(timeout, call).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "the call took longer than the server's request timeout ({timeout:?})"
                        ))
                        .into_http());
                    }
                },
                None => call.await?,
            };
            Ok(match permit {
                Some(permit) => response.map(|body| {
                    Body::new(Permitted {
                        inner: body,
                        _permit: permit,
                    })
                }),
                None => response,
            })
        })
    }
}

/// The subject of the client certificate the connection was made with
/// (mutual TLS: verified against `--tls-client-ca` by then).
fn peer_subject(request: &http::Request<Body>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certificates = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    super::subject::subject(certificates.first()?.as_ref())
}

fn refuse<E: Send + 'static>(status: Status) -> BoxFuture<http::Response<Body>, E> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

/// A refusal a plain HTTP client (a Prometheus scraper) understands.
fn refuse_http<E: Send + 'static>(status: &Status) -> BoxFuture<http::Response<Body>, E> {
    let code = match status.code() {
        Code::Unauthenticated => http::StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => http::StatusCode::FORBIDDEN,
        _ => http::StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = http::Response::new(Body::new(format!("{}\n", status.message())));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if code == http::StatusCode::UNAUTHORIZED {
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    Box::pin(std::future::ready(Ok(response)))
}

impl Gate {
    /// Whether the caller may call `method`, from the headers and the
    /// client certificate's subject (with mutual TLS) alone.
    fn admit(
        &self,
        method: Method,
        headers: &HeaderMap,
        subject: Option<&str>,
    ) -> Result<(), Status> {
        match method.access {
            Access::Open => Ok(()),
            Access::Agent => present(headers, &metadata::AGENT_TOKEN_NAME),
            Access::Gateway => present(headers, &metadata::GATEWAY_TOKEN_NAME),
            Access::Operator(needed) => self.operator(needed, headers, subject),
        }
    }

    fn operator(
        &self,
        needed: Role,
        headers: &HeaderMap,
        subject: Option<&str>,
    ) -> Result<(), Status> {
        if !self.operators.required() {
            return Ok(());
        }
        let bearer = headers
            .get(metadata::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_credentials)
            .filter(|token| !token.is_empty());
        let operator = match (bearer, subject) {
            (Some(token), _) => self
                .operators
                .by_token(token)
                .ok_or_else(|| Status::unauthenticated("invalid operator token"))?,
            (None, Some(subject)) => self.operators.by_subject(subject).ok_or_else(|| {
                Status::unauthenticated("this client certificate is not an operator")
            })?,
            (None, None) if headers.contains_key(metadata::FORWARDED_BY) => {
                return Err(Status::unauthenticated(
                    "this call was forwarded by another replica and needs \
                     `authorization: Bearer <token>` (a client certificate's role counts \
                     only on the replica it connects to)",
                ));
            }
            (None, None) => {
                return Err(Status::unauthenticated(
                    "this call needs operator credentials: `authorization: Bearer <token>`",
                ));
            }
        };
        if operator.role < needed {
            tracing::debug!(operator = %operator.name, role = %operator.role, needed = %needed, "operator call refused");
            return Err(Status::permission_denied(format!(
                "operator {:?} has the {} role; this call needs {needed}",
                operator.name, operator.role
            )));
        }
        Ok(())
    }
}

/// The token itself is checked by the service (against the fleet); here
/// only that there is one, so nothing is read for a caller without.
fn present(headers: &HeaderMap, header: &HeaderName) -> Result<(), Status> {
    match headers.get(header).map(|value| value.to_str()) {
        Some(Ok(value)) if !value.trim().is_empty() => Ok(()),
        Some(_) => Err(Status::unauthenticated(format!(
            "invalid {header} metadata"
        ))),
        None => Err(Status::unauthenticated(format!(
            "missing {header} metadata"
        ))),
    }
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110).
pub fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credentials.trim())
}

/// A response body that holds a health-watch slot until it is dropped.
struct Permitted {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Permitted {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<tonic::codegen::Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::credentials::hash_line;

    fn gate(roles: &str, admin_token: Option<&str>) -> Gate {
        let path = std::env::temp_dir().join(format!("mc-gate-{}", fastrand::u64(..)));
        std::fs::write(&path, roles).unwrap();
        let operators = Operators::load(Some(path.clone()), admin_token).unwrap();
        let _ = std::fs::remove_file(path);
        Gate {
            operators: Arc::new(operators),
            request_timeout: Duration::from_secs(1),
            health_watches: Arc::new(Semaphore::new(1)),
            max_health_watches: 1,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    fn code(result: Result<(), Status>) -> Code {
        result.err().map_or(Code::Ok, |status| status.code())
    }

    #[test]
    fn roles_decide_operator_calls_and_bearer_parsing_is_strict() {
        let gate = gate(
            &format!("dash viewer {}\n", hash_line("view")),
            Some("boss"),
        );
        let viewer_call = methods::method("/missioncontrol.lifecycle.v1.AgentLifecycle/GetAgent");
        let admin_call = methods::method("/missioncontrol.lifecycle.v1.AgentLifecycle/Provision");
        let cases: [(&str, Code, Code); 10] = [
            ("Bearer view", Code::Ok, Code::PermissionDenied),
            ("bearer view", Code::Ok, Code::PermissionDenied),
            ("  Bearer   boss ", Code::Ok, Code::Ok),
            ("Bearer nope", Code::Unauthenticated, Code::Unauthenticated),
            ("boss", Code::Unauthenticated, Code::Unauthenticated),
            ("Basic boss", Code::Unauthenticated, Code::Unauthenticated),
            ("Bearer", Code::Unauthenticated, Code::Unauthenticated),
            ("Bearer ", Code::Unauthenticated, Code::Unauthenticated),
            ("Bearer\tboss", Code::Unauthenticated, Code::Unauthenticated),
            ("Bearersboss", Code::Unauthenticated, Code::Unauthenticated),
        ];
        for (value, on_viewer_call, on_admin_call) in cases {
            let h = headers(&[("authorization", value)]);
            assert_eq!(
                code(gate.admit(viewer_call, &h, None)),
                on_viewer_call,
                "{value}"
            );
            assert_eq!(
                code(gate.admit(admin_call, &h, None)),
                on_admin_call,
                "{value}"
            );
        }
        assert_eq!(
            code(gate.admit(admin_call, &HeaderMap::new(), None)),
            Code::Unauthenticated
        );
    }

    #[test]
    fn agents_and_gateways_need_their_header_and_open_calls_need_nothing() {
        let gate = gate("", None);
        let heartbeat = methods::method("/missioncontrol.lifecycle.v1.AgentLifecycle/Heartbeat");
        let connect = methods::method("/missioncontrol.lifecycle.v1.Gateways/ConnectGateway");
        let health = methods::method("/grpc.health.v1.Health/Check");
        let none = HeaderMap::new();
        assert_eq!(
            code(gate.admit(heartbeat, &none, None)),
            Code::Unauthenticated
        );
        assert_eq!(
            code(gate.admit(connect, &none, None)),
            Code::Unauthenticated
        );
        let agent = headers(&[("x-agent-token", "mca_x")]);
        assert_eq!(code(gate.admit(heartbeat, &agent, None)), Code::Ok);
        assert_eq!(
            code(gate.admit(connect, &agent, None)),
            Code::Unauthenticated
        );
        assert_eq!(code(gate.admit(health, &none, None)), Code::Ok);
        // An empty roles file closes operator calls to everyone.
        let list = methods::method("/missioncontrol.lifecycle.v1.Gateways/ListGateways");
        assert_eq!(code(gate.admit(list, &agent, None)), Code::Unauthenticated);
    }

    #[test]
    fn certificate_subjects_map_to_roles() {
        let gate = gate("robot viewer subject:CN=robot\n", None);
        let get = methods::method("/missioncontrol.lifecycle.v1.AgentLifecycle/GetAgent");
        let delete = methods::method("/missioncontrol.lifecycle.v1.AgentLifecycle/DeleteAgent");
        let none = HeaderMap::new();
        assert_eq!(code(gate.admit(get, &none, Some("CN=robot"))), Code::Ok);
        assert_eq!(
            code(gate.admit(delete, &none, Some("CN=robot"))),
            Code::PermissionDenied
        );
        assert_eq!(
            code(gate.admit(get, &none, Some("CN=other"))),
            Code::Unauthenticated
        );
    }
}
