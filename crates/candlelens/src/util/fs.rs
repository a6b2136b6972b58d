//! Reading the files a user names (configs, datasets, prompt lists, corpora) with errors that
//! say which file and what it should be.

use std::path::Path;

use crate::error::{LensError, Result};

/// The text of `path`.
///
/// # Errors
/// [`LensError::MissingFile`] carrying `fix` when there is no such file; [`LensError::Io`]
/// when it cannot be read (permissions, not UTF-8).
pub fn read_text(path: &Path, fix: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| open_error(path, fix, e))
}

/// `path` opened for reading.
///
/// # Errors
/// As [`read_text`].
pub fn open(path: &Path, fix: &str) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| open_error(path, fix, e))
}

/// [`LensError::MissingFile`] with `fix` for a file that is not there, [`LensError::Io`] else.
fn open_error(path: &Path, fix: &str, e: std::io::Error) -> LensError {
    match e.kind() {
        std::io::ErrorKind::NotFound => LensError::MissingFile {
            path: path.to_path_buf(),
            fix: fix.into(),
        },
        _ => LensError::io(path, e),
    }
}

/// `path` parsed as JSON.
///
/// # Errors
/// As [`read_text`]; [`LensError::Json`] naming the file when it is not JSON.
pub fn read_json(path: &Path, fix: &str) -> Result<serde_json::Value> {
    let text = read_text(path, fix)?;
    serde_json::from_str(&text).map_err(|e| LensError::Json {
        what: path.display().to_string(),
        detail: e.to_string(),
    })
}
