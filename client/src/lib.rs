//! Client library for the mission-control agent lifecycle service.
//!
//! - [`agent`]: check in and keep a lease alive, paced by the server.
//! - [`gateway`]: receive wake and retire commands as a `Stream`, and
//!   acknowledge each; reconnects with backoff and jitter.
//! - [`operator`]: provision, wake, delete, list and watch.
//!
//! The generated stubs and messages for every service are re-exported from
//! [`proto`] (and at the crate root), for anything the helpers do not cover.
//! Nothing here depends on Postgres.

#![warn(missing_docs, clippy::missing_errors_doc)]

pub mod agent;
mod backoff;
pub mod endpoints;
mod error;
pub mod gateway;
pub mod operator;
mod rollouts;

pub use backoff::Backoff;
pub use endpoints::Endpoints;
pub use error::Error;
pub use mission_control_proto as proto;
pub use mission_control_proto::tls::ClientTls;
pub use mission_control_proto::v1::*;

/// The metadata key an agent sends its token in.
pub const AGENT_TOKEN_HEADER: &str = mission_control_proto::metadata::AGENT_TOKEN;
/// The metadata key a gateway sends its token in.
pub const GATEWAY_TOKEN_HEADER: &str = mission_control_proto::metadata::GATEWAY_TOKEN;
/// The metadata key operator calls carry `Bearer <operator token>` in.
pub const OPERATOR_TOKEN_HEADER: &str = mission_control_proto::metadata::AUTHORIZATION;

/// `scheme` then `token` as a metadata value: the token non-empty printable
/// ASCII, the value marked sensitive so it stays out of debug output and
/// HTTP/2 header compression tables.
pub(crate) fn token_metadata(
    scheme: &str,
    token: &str,
) -> Result<tonic::metadata::AsciiMetadataValue, Error> {
    if token.is_empty() {
        return Err(Error::InvalidToken);
    }
    let mut value: tonic::metadata::AsciiMetadataValue = format!("{scheme}{token}")
        .parse()
        .map_err(|_| Error::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// A channel to `endpoint` (e.g. `http://127.0.0.1:50051`, or `https://…`
/// with the system's trust store) that connects on first use and reconnects
/// by itself. For TLS settings or several endpoints, see [`Endpoints`].
///
/// # Errors
///
/// [`Error::InvalidEndpoint`] if `endpoint` is not a valid URI.
pub fn channel(endpoint: &str) -> Result<tonic::transport::Channel, Error> {
    Ok(mission_control_proto::tls::endpoint(endpoint, None)
        .map_err(|e| Error::InvalidEndpoint(e.to_string()))?
        .connect_lazy())
}

/// Converts a `google.protobuf.Duration` to a std duration (negative: zero).
pub fn to_duration(d: &prost_types::Duration) -> std::time::Duration {
    if d.seconds < 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(d.seconds as u64, d.nanos.max(0) as u32)
}

/// Converts a `google.protobuf.Timestamp` to a system time.
pub fn to_system_time(t: &prost_types::Timestamp) -> std::time::SystemTime {
    let nanos = std::time::Duration::from_nanos(t.nanos.max(0) as u64);
    if t.seconds >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds as u64) + nanos
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(t.seconds.unsigned_abs()) + nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_metadata_is_sensitive_and_refuses_empty_or_non_ascii_tokens() {
        let value = token_metadata("Bearer ", "s3cret").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(value.is_sensitive());
        assert!(matches!(token_metadata("", ""), Err(Error::InvalidToken)));
        assert!(matches!(
            token_metadata("Bearer ", ""),
            Err(Error::InvalidToken)
        ));
        assert!(matches!(
            token_metadata("", "tök\n"),
            Err(Error::InvalidToken)
        ));
    }
}
