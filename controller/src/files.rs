//! Reading a file the controller is given (a manifest, the operator's CA and trust bundle, the
//! module, the pods kept across restarts) as a regular file of bounded size: a FIFO would block
//! the reader for good, a link to `/dev/zero` would never end, a device may act on being opened.
//! The file is looked at, opened without blocking and looked at again once open, so that a FIFO
//! put in its place meanwhile is refused rather than waited on; at most `limit` bytes are read.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be looked at, opened or read.
    #[error("cannot be read: {0}")]
    Read(std::io::Error),
    /// Something other than a regular file.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than the limit it was read with.
    #[error("is {size} bytes or more, more than the {limit} it may have")]
    TooLarge {
        /// Its size (or how much was read before the limit was passed).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8 text where text was wanted.
    #[error("is not UTF-8 text")]
    NotText,
}

/// What a file that is not a regular file is.
fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The bytes of the regular file `path` (links followed), of at most `limit` bytes.
///
/// # Errors
/// When it cannot be read, is not a regular file, or is larger than `limit`.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let regular = |metadata: &std::fs::Metadata| {
        let file_type = metadata.file_type();
        if !file_type.is_file() {
            return Err(FileError::NotRegular(kind(file_type)));
        }
        if metadata.len() > limit {
            return Err(FileError::TooLarge {
                size: metadata.len(),
                limit,
            });
        }
        Ok(())
    };
    regular(&std::fs::metadata(path).map_err(FileError::Read)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(FileError::Read)?;
    regular(&file.metadata().map_err(FileError::Read)?)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(FileError::Read)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_regular`], as UTF-8 text.
///
/// # Errors
/// As [`read_regular`], and when the bytes are not UTF-8.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_regular(path, limit)?).map_err(|_| FileError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Nobody writes the FIFO: a reader that opened it would wait for good.
        let started = std::time::Instant::now();
        assert!(matches!(
            read_regular(&fifo, 1024),
            Err(FileError::NotRegular("a FIFO"))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_regular(&zero, 1024),
            Err(FileError::NotRegular("a character device"))
        ));
        assert!(matches!(
            read_regular(dir.path(), 1024),
            Err(FileError::NotRegular("a directory"))
        ));
    }

    #[test]
    fn a_file_is_read_up_to_its_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        let err = read_regular(&file, 9).unwrap_err();
        assert!(
            matches!(err, FileError::TooLarge { size: 10, limit: 9 }),
            "{err}"
        );
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_text(&file, 10), Err(FileError::NotText)));
    }
}
