//! The embedded models checked against their pinned sha256 before they load, so that a file
//! damaged after `scripts/fetch-models` wrote it (flipped bytes, an editor's save, a copy cut
//! short) is named instead of producing garbage logits.
//!
//! Hashing 100–250 MB takes about a second, so the verdict is cached beside the file in
//! `<file>.sha256-ok` as `size mtime hash`: a later load re-hashes only when the file's size or
//! modification time changed. A models folder that cannot be written to is verified on every
//! load.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::error::{LensError, Result};

/// The sha256 of a file, as lowercase hex.
///
/// # Errors
/// [`LensError::Io`] when the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| LensError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| LensError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the cached verdict for `path` lives.
pub fn verdict_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256-ok");
    path.with_file_name(name)
}

/// `size mtime_ns` of a file: what a cached verdict is keyed by.
fn stamp(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| LensError::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    // the inode and the status-change time too: a rewrite that restores size and mtime
    // (touch -r) still changes ctime, which no user call can set back
    #[cfg(unix)]
    let extra = {
        use std::os::unix::fs::MetadataExt;
        format!(" {} {} {}", meta.ino(), meta.ctime(), meta.ctime_nsec())
    };
    #[cfg(not(unix))]
    let extra = String::new();
    Ok(format!("{} {mtime}{extra}", meta.len()))
}

/// Checks an embedded model's file against its pinned sha256 (`want`, hex).
///
/// A verdict cached by an earlier call is trusted while the file keeps its size, modification
/// time, inode and status-change time (which a rewrite changes even when it restores the
/// others); otherwise the file is hashed and, when it matches, the verdict is written
/// (atomically; a read-only folder is fine).
///
/// # Errors
/// [`LensError::ChecksumMismatch`] naming the file, both hashes and the fetch command that
/// replaces it; [`LensError::Io`] when it cannot be read.
pub fn check_pinned(path: &Path, want: &str, alias: &str) -> Result<()> {
    let stamp = stamp(path)?;
    let expected_verdict = format!("{stamp} {want}");
    let verdict = verdict_path(path);
    if std::fs::read_to_string(&verdict).is_ok_and(|v| v.trim() == expected_verdict) {
        return Ok(());
    }
    let got = sha256_file(path)?;
    if !got.eq_ignore_ascii_case(want) {
        // a stale verdict must not outlive the file it spoke for
        let _ = std::fs::remove_file(&verdict);
        return Err(LensError::ChecksumMismatch {
            path: path.to_path_buf(),
            want: want.to_string(),
            got,
            command: format!("scripts/fetch-models {alias}"),
        });
    }
    let tmp = verdict.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, &expected_verdict).is_ok() && std::fs::rename(&tmp, &verdict).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("candlelens-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sha256_matches_the_fips_test_vector() {
        // FIPS 180-2, appendix B.1: SHA-256("abc")
        let dir = scratch("abc");
        let p = dir.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_byte_is_named_and_a_good_file_is_cached() {
        let dir = scratch("flip");
        let p = dir.join("model.gguf");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let want = sha256_file(&p).unwrap();

        check_pinned(&p, &want, "tiny").unwrap();
        let verdict = std::fs::read_to_string(verdict_path(&p)).unwrap();
        assert!(verdict.ends_with(&want), "{verdict}");

        // same size, one byte changed (the mtime moves with the write)
        let mut bad = data.clone();
        bad[50_000] ^= 0x40;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, &bad).unwrap();
        let err = check_pinned(&p, &want, "tiny").unwrap_err();
        assert!(matches!(err, LensError::ChecksumMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("model.gguf") && msg.contains(&want), "{msg}");
        assert!(msg.contains("scripts/fetch-models tiny"), "{msg}");
        assert!(!verdict_path(&p).exists(), "stale verdict kept");

        // restored: verified again and cached again
        std::fs::write(&p, &data).unwrap();
        check_pinned(&p, &want, "tiny").unwrap();
        assert!(verdict_path(&p).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_verdict_for_another_stamp_is_not_trusted() {
        let dir = scratch("stamp");
        let p = dir.join("m.gguf");
        std::fs::write(&p, b"weights").unwrap();
        let want = sha256_file(&p).unwrap();
        // a verdict claiming the right hash but for a different size
        std::fs::write(verdict_path(&p), format!("999 0 {want}")).unwrap();
        std::fs::write(&p, b"weightz").unwrap();
        assert!(check_pinned(&p, &want, "m").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rewrite_that_restores_size_and_mtime_is_hashed_again() {
        let dir = scratch("touch");
        let p = dir.join("m.gguf");
        std::fs::write(&p, b"weights").unwrap();
        let want = sha256_file(&p).unwrap();
        check_pinned(&p, &want, "m").unwrap();
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // the same size, then the old modification time put back (touch -r)
        std::fs::write(&p, b"weightz").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(check_pinned(&p, &want, "m").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
