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
    /// No leader could be reached before the deadline.
    #[error("no Raft leader answered within {waited_ms} ms (last known leader: {last_leader}); the cluster may be electing a leader or have lost quorum")]
    NoLeader { waited_ms: u64, last_leader: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
            ApiError::NoLeader { .. } | ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

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
