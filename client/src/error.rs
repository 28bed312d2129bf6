use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service refused the token: retrying will not help.
    #[error("token rejected: {0}")]
    TokenRejected(String),
    #[error("invalid token: it must be non-empty printable ASCII")]
    InvalidToken,
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// Any other refusal; shown as e.g. `NotFound: agent "a-1" not found`.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// Whether waiting and trying again may succeed.
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
