use tonic::Code;

/// Why a client call or loop failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service refused the token (`UNAUTHENTICATED`): retrying will not
    /// help.
    #[error("token rejected: {0}")]
    TokenRejected(String),
    /// The token given to a constructor is empty or not printable ASCII, so
    /// it cannot be sent as gRPC metadata.
    #[error("invalid token: it must be non-empty printable ASCII")]
    InvalidToken,
    /// The endpoint given to a constructor is not a valid URI.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// A reply lacked a field the service always sets, e.g. the agent in a
    /// `WakeAgent` or `DeleteAgent` reply: the service speaks another
    /// version of the protocol.
    #[error("malformed reply: {0}")]
    MalformedReply(&'static str),
    /// An acknowledgement could not be sent because the gateway stream it
    /// belongs to has ended. The service's deadlines cover the command (it
    /// is retried or expires); the next connection gets what is still due.
    #[error("acknowledgement not sent: the gateway stream it came on has ended")]
    AckNotSent,
    /// Any other refusal; shown as e.g. `NotFound: agent "a-1" not found`.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// How long the service asked the caller to wait before trying again
    /// (a google.rpc `RetryInfo`), if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        use tonic_types::StatusExt;
        match self {
            Error::Status(status) => status.get_details_retry_info()?.retry_delay,
            _ => None,
        }
    }

    /// Whether waiting and trying again may succeed: `UNAVAILABLE`,
    /// `DEADLINE_EXCEEDED`, `ABORTED`, `RESOURCE_EXHAUSTED`, `UNKNOWN` and
    /// `INTERNAL` are; a rejected token, bad input and every other code are
    /// not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status(status) => matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Unknown
                    | Code::Internal
            ),
            _ => false,
        }
    }

    pub(crate) fn from_status(status: tonic::Status) -> Self {
        if status.code() == Code::Unauthenticated {
            Error::TokenRejected(status.message().to_owned())
        } else {
            Error::Status(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn the_services_retry_info_is_read_from_the_status() {
        let throttled = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "too many heartbeats",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let error = Error::from_status(throttled);
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        let plain = Error::from_status(tonic::Status::unavailable("down"));
        assert_eq!(plain.retry_after(), None);
    }
}
