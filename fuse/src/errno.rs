//! Protocol errors as errno values.

use cairn_client::ClientError;
use cairn_proto::ErrorCode;
use fuser::Errno;

/// The errno a file system call returns for `e`.
pub fn errno(e: &ClientError) -> Errno {
    match e {
        ClientError::Protocol { code, .. } => code_errno(*code),
        ClientError::Invalid(_) => Errno::EINVAL,
        // The failover timeout passed with no node answering.
        _ => Errno::EIO,
    }
}

pub fn code_errno(code: ErrorCode) -> Errno {
    match code {
        ErrorCode::NotFound => Errno::ENOENT,
        ErrorCode::AlreadyExists => Errno::EEXIST,
        ErrorCode::NotEmpty => Errno::ENOTEMPTY,
        ErrorCode::IsDirectory => Errno::EISDIR,
        ErrorCode::NotDirectory => Errno::ENOTDIR,
        ErrorCode::InvalidPath | ErrorCode::BadRequest => Errno::EINVAL,
        ErrorCode::Unauthorized | ErrorCode::Forbidden => Errno::EACCES,
        ErrorCode::SharingViolation => Errno::EBUSY,
        ErrorCode::LockConflict => Errno::EAGAIN,
        // What open(2) with O_NOFOLLOW gives on a link.
        ErrorCode::IsSymlink => Errno::ELOOP,
        // The mount's session is at its limit of open files: the mount is
        // the "system" here (a lock past a handle's limit is ENOLCK: see
        // `locks`).
        ErrorCode::TooMany => Errno::ENFILE,
        ErrorCode::StaleHandle => Errno::ESTALE,
        ErrorCode::PayloadTooLarge => Errno::EFBIG,
        ErrorCode::InsufficientStorage => Errno::ENOSPC,
        ErrorCode::RangeNotSatisfiable => Errno::EINVAL,
        ErrorCode::PreconditionFailed
        | ErrorCode::Corrupt
        | ErrorCode::Unavailable
        | ErrorCode::Internal
        | ErrorCode::NoSession => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_an_errno() {
        for code in ErrorCode::ALL {
            let e = ClientError::Protocol {
                code,
                message: String::new(),
            };
            assert_ne!(errno(&e).code(), 0);
        }
        assert_eq!(code_errno(ErrorCode::NotFound), Errno::ENOENT);
        assert_eq!(code_errno(ErrorCode::NotEmpty), Errno::ENOTEMPTY);
        assert_eq!(errno(&ClientError::Connection("gone".into())), Errno::EIO);
    }
}
