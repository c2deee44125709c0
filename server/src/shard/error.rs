//! The wire error code of each failure the engine reports to a shard, in
//! one place, so that a partition and a pipeline run answer the same
//! failure with the same code (they disagreed: a stage output over the
//! batch limit was a `StorageError` where the same publish was an
//! `InvalidRequest`).

use hadron_engine::AppendError;
use hadron_wire::ErrorCode;

/// The code an append's failure is answered with: the caller's input for
/// an empty, too long or too large batch (nothing was written), the log's
/// state for a poisoned or damaged log.
pub fn append_code(e: &AppendError) -> ErrorCode {
    match e {
        AppendError::Empty | AppendError::TooManyRecords { .. } | AppendError::TooLarge { .. } => {
            ErrorCode::InvalidRequest
        }
        AppendError::Poisoned(_) => ErrorCode::ReadOnly,
        AppendError::Damaged(_) => ErrorCode::Damaged,
        // A variant added to the engine later: a storage problem until it
        // gets its own line here.
        _ => ErrorCode::StorageError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_append_failure_has_one_code() {
        let cases = [
            (AppendError::Empty, ErrorCode::InvalidRequest),
            (
                AppendError::TooManyRecords { count: 70_000 },
                ErrorCode::InvalidRequest,
            ),
            (
                AppendError::TooLarge {
                    bytes: 5 << 20,
                    max: 4 << 20,
                },
                ErrorCode::InvalidRequest,
            ),
            (AppendError::Poisoned("EIO".into()), ErrorCode::ReadOnly),
            (AppendError::Damaged("byte 4096".into()), ErrorCode::Damaged),
        ];
        for (e, code) in cases {
            assert_eq!(append_code(&e), code, "{e}");
        }
    }
}
