//! The one place that maps runtime errors to gRPC status codes, with rich
//! error details (google.rpc) where they help a client act.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::runtime::LifecycleError;

const DOMAIN: &str = "missioncontrol.lifecycle.v1";

pub fn status(error: LifecycleError) -> Status {
    match error {
        LifecycleError::InvalidArgument { field, message } => Status::with_error_details(
            Code::InvalidArgument,
            format!("{field}: {message}"),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        LifecycleError::NotFound(message) => Status::not_found(message),
        LifecycleError::Unauthenticated(message) => Status::unauthenticated(message),
        LifecycleError::FailedPrecondition(message) => Status::failed_precondition(message),
        LifecycleError::Unavailable(message) => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        ),
        LifecycleError::OutOfRange {
            message,
            oldest_revision,
        } => with_revision(
            Code::OutOfRange,
            message,
            "REVISION_COMPACTED",
            ("oldest_revision", oldest_revision),
        ),
        LifecycleError::RevisionAhead {
            message,
            current_revision,
        } => with_revision(
            Code::OutOfRange,
            message,
            "REVISION_AHEAD",
            ("current_revision", current_revision),
        ),
        LifecycleError::ResourceExhausted {
            message,
            resume_revision,
        } => with_revision(
            Code::ResourceExhausted,
            message,
            "WATCH_TOO_SLOW",
            ("resume_revision", resume_revision),
        ),
        LifecycleError::Throttled {
            message,
            retry_after,
        } => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        LifecycleError::TooManyStreams(message) => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(5))),
        ),
        LifecycleError::Internal(message) => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error")
        }
    }
}

/// A status whose ErrorInfo names the revision a watch client acts on.
fn with_revision(
    code: Code,
    message: String,
    reason: &str,
    (key, revision): (&str, u64),
) -> Status {
    let metadata = HashMap::from([(key.to_owned(), revision.to_string())]);
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

impl From<LifecycleError> for Status {
    fn from(error: LifecycleError) -> Self {
        status(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = status(LifecycleError::invalid("agent_id", "is required"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "agent_id: is required");
        let details = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(details.field_violations[0].field, "agent_id");
    }

    #[test]
    fn a_slow_watcher_learns_where_to_resume() {
        let status = status(LifecycleError::ResourceExhausted {
            message: "behind".into(),
            resume_revision: 42,
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_error_info().expect("ErrorInfo details");
        assert_eq!(info.metadata["resume_revision"], "42");
    }
}
