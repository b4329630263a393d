//! Errors to gRPC status codes, in one place, with the reason in the message.
//!
//! | error | code |
//! | --- | --- |
//! | malformed or invalid command | `INVALID_ARGUMENT` |
//! | bad signature or key | `UNAUTHENTICATED` |
//! | role does not allow the kind | `PERMISSION_DENIED` |
//! | replayed nonce, session exists | `ALREADY_EXISTS` |
//! | rate limit, payload guard | `RESOURCE_EXHAUSTED` |
//! | conflict (stale base version, ...), Lamport regression or skew | `FAILED_PRECONDITION` |
//! | unknown session | `NOT_FOUND` |
//! | seq or size beyond the head | `OUT_OF_RANGE` |
//! | stored log corrupted | `DATA_LOSS` |
//! | storage failure, shutting down | `UNAVAILABLE` |
//!
//! Every message starts with the name of the counter that counted it: the store's reason
//! counter for appends, `auth_failures` and `read_limit_drops` for refused callers, and
//! `request_errors` (counted per method and code by [`crate::calls`]) for everything else.

use theta_store::{AppendError, ReadError};
use tonic::{Code, Status};

use crate::history::HistoryError;

/// The status code of an append error.
pub fn append_code(e: &AppendError) -> Code {
    match e {
        AppendError::Malformed(_) | AppendError::Invalid { .. } => Code::InvalidArgument,
        AppendError::Signature(_) => Code::Unauthenticated,
        AppendError::PermissionDenied { .. } | AppendError::NotAdmitted { .. } => Code::PermissionDenied,
        AppendError::Replay { .. } | AppendError::SessionExists { .. } => Code::AlreadyExists,
        AppendError::RateLimited { .. } | AppendError::PayloadTooLarge { .. } => Code::ResourceExhausted,
        AppendError::Conflict { .. } | AppendError::LamportRegression { .. } | AppendError::LamportSkew { .. } => {
            Code::FailedPrecondition
        }
        AppendError::UnknownSession { .. } => Code::NotFound,
        AppendError::Corrupted { .. } => Code::DataLoss,
        AppendError::Storage(_) | AppendError::ShuttingDown => Code::Unavailable,
    }
}

/// The status of an append error.
pub fn append_status(e: &AppendError) -> Status {
    Status::new(append_code(e), format!("{}: {e}", e.code().counter()))
}

/// The status of a read error.
pub fn read_status(e: &ReadError) -> Status {
    let code = match e {
        ReadError::UnknownSession { .. } => Code::NotFound,
        ReadError::OutOfRange { .. } => Code::OutOfRange,
        ReadError::Corrupted { .. } => Code::DataLoss,
        ReadError::Storage(_) => Code::Unavailable,
    };
    Status::new(code, format!("{REQUEST_ERRORS}: {e}"))
}

/// Counter name of errors without a more specific counter (`theta_request_errors_total`).
pub const REQUEST_ERRORS: &str = "request_errors";

/// The status of a history error.
pub fn history_status(e: &HistoryError) -> Status {
    match e {
        HistoryError::Read(r) => read_status(r),
        HistoryError::Fold(f) => Status::data_loss(format!("{REQUEST_ERRORS}: {f}")),
        HistoryError::OutOfRange { .. } => Status::out_of_range(format!("{REQUEST_ERRORS}: {e}")),
    }
}

/// A malformed request field.
pub fn bad_field(field: &str, why: &str) -> Status {
    Status::invalid_argument(format!("{REQUEST_ERRORS}: {field}: {why}"))
}
