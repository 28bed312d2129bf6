//! How a command fails: one line on stderr, `error: <CODE>: <message>`, and
//! a non-zero exit code. Never a backtrace.

use std::process::ExitCode;

use mission_control_client::Error;
use tonic::Code;

#[derive(Debug)]
pub enum Failure {
    /// The service answered with an error, or could not be reached.
    Rpc(Error),
    /// The arguments make no sense together (clap checks the rest).
    Usage(String),
    /// A watch stream ended with a status; `hint` says what to do about it.
    Stream { status: tonic::Status, hint: String },
    /// A followed rollout stopped short of completing (paused or cancelled).
    Halted(String),
    /// A measured target was missed (`mcctl bench`).
    TargetMissed(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Rpc(error)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Rpc(Error::Status(status))
    }
}

impl Failure {
    /// The lines to print on stderr.
    pub fn describe(&self) -> String {
        match self {
            Failure::Rpc(error) => {
                let (code, message) = code_and_message(error);
                format!("error: {code}: {message}")
            }
            Failure::Usage(message) => format!("error: INVALID_ARGUMENT: {message}"),
            Failure::Halted(message) => format!("stopped: {message}"),
            Failure::TargetMissed(message) => format!("target missed: {message}"),
            Failure::Stream { status, hint } => {
                let code = code_name(status.code());
                let mut text = format!("error: {code}: {}", status_message(status));
                if !hint.is_empty() {
                    text.push_str(&format!("\n  {hint}"));
                }
                text
            }
        }
    }

    /// Whether the endpoint could not serve (so another one might).
    pub fn endpoint_unavailable(&self) -> bool {
        let status = match self {
            Failure::Rpc(Error::Status(status)) | Failure::Stream { status, .. } => status,
            _ => return false,
        };
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
    }

    /// 2 for bad usage (as clap does), 3 for a followed rollout that
    /// paused or was cancelled (or a bench that could not set up), 4 for a
    /// bench target missed, 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Halted(_) => ExitCode::from(3),
            Failure::TargetMissed(_) => ExitCode::from(4),
            _ => ExitCode::FAILURE,
        }
    }
}

fn code_and_message(error: &Error) -> (String, String) {
    match error {
        Error::Status(status) => (code_name(status.code()), status_message(status)),
        Error::TokenRejected(message) => (code_name(Code::Unauthenticated), message.clone()),
        Error::InvalidToken | Error::InvalidEndpoint(_) => {
            (code_name(Code::InvalidArgument), error.to_string())
        }
        Error::MalformedReply(_) => (code_name(Code::Internal), error.to_string()),
        Error::AckNotSent => (code_name(Code::Unavailable), error.to_string()),
    }
}

/// The message, or for transport failures (which carry little in the
/// message) the chain of causes, e.g. "tcp connect error: Connection refused".
fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    message
}

/// `NotFound` -> `NOT_FOUND`, as the gRPC spec spells codes.
pub fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_in_the_grpc_spec() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn failures_read_as_one_line_with_the_code() {
        let failure = Failure::from(tonic::Status::not_found("agent a1 not found"));
        assert_eq!(failure.describe(), "error: NOT_FOUND: agent a1 not found");
        assert_eq!(failure.exit_code(), ExitCode::FAILURE);
        let rejected = Failure::Rpc(Error::TokenRejected("unknown token".into()));
        assert_eq!(rejected.describe(), "error: UNAUTHENTICATED: unknown token");
        let usage = Failure::Usage("shares sum to 1.2".into());
        assert_eq!(
            usage.describe(),
            "error: INVALID_ARGUMENT: shares sum to 1.2"
        );
        assert_eq!(usage.exit_code(), ExitCode::from(2));
    }
}
