//! Reading the files a user names (configs, datasets, prompt lists, corpora) with errors that
//! say which file and what it should be, and writing files whole or not at all.

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

/// A temporary name beside `path`, unique to this process and call (`.{name}.{pid}-{n}.tmp`):
/// never a name a user's file has, never shared by two writers.
fn temp_beside(path: &Path) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Writes `path` whole or not at all: `write` fills a temporary path beside it (a file or a
/// folder), which is then renamed into place; on any failure the temporary is removed and
/// `path` is as it was. A folder is never renamed over an existing one.
///
/// # Errors
/// [`LensError::Io`] naming the path; whatever `write` returns.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_beside(path);
    let cleanup = |tmp: &Path| {
        if tmp.is_dir() {
            let _ = std::fs::remove_dir_all(tmp);
        } else {
            let _ = std::fs::remove_file(tmp);
        }
    };
    if let Err(e) = write(&tmp) {
        cleanup(&tmp);
        return Err(e);
    }
    if tmp.is_dir() && path.exists() {
        cleanup(&tmp);
        return Err(LensError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a folder is already there; choose another path or remove it first",
            ),
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        cleanup(&tmp);
        LensError::write(path, e)
    })
}

/// [`write_atomically`] of bytes.
///
/// # Errors
/// As [`write_atomically`].
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| LensError::write(path, e))
    })
}

/// Writes `tensors` as a safetensors file at `file`; a failing write is
/// [`LensError::WriteFailed`] naming `reported` — the file or folder the caller is making, when
/// `file` is a temporary of [`write_atomically`]. The file is serialised in memory and written
/// with one `write`: safetensors' own `serialize_to_file` goes through a temporary of its own
/// (`.tmpXXXXXX`), which a killed process would leave where no sweep looks for it.
///
/// # Errors
/// [`LensError::WriteFailed`]; [`LensError::Internal`] for tensors safetensors cannot describe.
pub fn write_safetensors(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    file: &Path,
    reported: &Path,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors, None)
        .map_err(|e| LensError::Internal(format!("serialising {}: {e}", reported.display())))?;
    std::fs::write(file, bytes).map_err(|e| LensError::write(reported, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing_and_the_old_file_alone() {
        let dir = std::env::temp_dir().join(format!("candlelens-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("fig.svg");
        std::fs::write(&p, "old").unwrap();
        let err = write_atomically(&p, |tmp| {
            std::fs::write(tmp, "half").unwrap();
            Err(LensError::Drawing("killed".into()))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        write_bytes(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        // a folder is never renamed over an existing one
        let folder = dir.join("sae");
        std::fs::create_dir_all(folder.join("mine")).unwrap();
        let err = write_atomically(&folder, |tmp| {
            std::fs::create_dir_all(tmp).map_err(|e| LensError::io(tmp, e))
        });
        assert!(err.is_err());
        assert!(folder.join("mine").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
