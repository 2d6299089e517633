//! The one place where errors become gRPC statuses.

use crate::core::token::TokenError;
use crate::core::StateError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Denied(#[from] crate::core::authz::Denied),
    /// No leader could be reached before the deadline.
    #[error("no Raft leader answered within {waited_ms} ms (last known leader: {last_leader}{}); the cluster may be electing a leader or have lost quorum: `warren cluster info` shows which managers are reachable", last_error_note(.last_error))]
    NoLeader {
        waited_ms: u64,
        last_leader: String,
        last_error: String,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Unavailable, and certainly not applied (this manager leads without a quorum and took
    /// nothing): a client need not wonder whether it took effect.
    #[error("{0}")]
    NotApplied(String),
    #[error("{0}")]
    Internal(String),
}

fn last_error_note(e: &str) -> String {
    if e.is_empty() {
        String::new()
    } else {
        format!("; last error: {}", crate::core::state::cut(e))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::State(s) => match s {
                StateError::InvalidArgument { .. } => Code::InvalidArgument,
                StateError::AlreadyExists { .. } => Code::AlreadyExists,
                StateError::NotFound { .. } => Code::NotFound,
                StateError::VersionConflict { .. } => Code::Aborted,
                StateError::FailedPrecondition(_) => Code::FailedPrecondition,
            },
            ApiError::Token(TokenError::Malformed(_)) => Code::InvalidArgument,
            ApiError::Token(_) => Code::PermissionDenied,
            ApiError::Denied(crate::core::authz::Denied::Unauthenticated { .. }) => Code::Unauthenticated,
            ApiError::Denied(_) => Code::PermissionDenied,
            ApiError::NoLeader { .. } | ApiError::Unavailable(_) | ApiError::NotApplied(_) => {
                Code::Unavailable
            }
            ApiError::Internal(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if matches!(e, ApiError::NotApplied(_)) {
            status.metadata_mut().insert(
                OUTCOME_HEADER,
                tonic::metadata::MetadataValue::from_static(NOT_APPLIED),
            );
        }
        status
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Metadata on an error status telling the client what became of its request.
pub const OUTCOME_HEADER: &str = "x-warren-outcome";
pub const NOT_APPLIED: &str = "not-applied";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases = [
            (
                ApiError::State(StateError::invalid("name", "bad")),
                Code::InvalidArgument,
            ),
            (
                ApiError::State(StateError::AlreadyExists {
                    kind: "service".into(),
                    name: "a".into(),
                }),
                Code::AlreadyExists,
            ),
            (
                ApiError::State(StateError::NotFound {
                    kind: "service".into(),
                    name: "a".into(),
                }),
                Code::NotFound,
            ),
            (
                ApiError::State(StateError::FailedPrecondition("x".into())),
                Code::FailedPrecondition,
            ),
            (
                ApiError::State(StateError::VersionConflict {
                    kind: "service".into(),
                    name: "a".into(),
                    expected: 1,
                    actual: 2,
                }),
                Code::Aborted,
            ),
            (
                ApiError::NoLeader {
                    waited_ms: 1,
                    last_leader: "none".into(),
                    last_error: String::new(),
                },
                Code::Unavailable,
            ),
            (ApiError::Internal("x".into()), Code::Internal),
            (ApiError::Token(TokenError::Malformed("x")), Code::InvalidArgument),
            (
                ApiError::Token(TokenError::Expired { role: "manager" }),
                Code::PermissionDenied,
            ),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s: Status = e.into();
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), msg);
        }
    }
}
