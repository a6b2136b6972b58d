//! Downloads from the Hugging Face hub (users' machines; this project's CI never calls it).
//! Files already in the HF cache (`$HF_HOME/hub`) are used without a request.
//!
//! A download that receives nothing for [`stall_timeout`] (a proxy or firewall that accepts the
//! connection and never answers) is abandoned with [`LensError::Hub`] naming the endpoint; a
//! response cut short (fewer bytes than the hub announced) is removed from the cache before the
//! error is returned, so no later run reads a truncated file. Chunk failures are retried twice.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{LensError, Result};

/// The environment variable for [`stall_timeout`], in seconds.
pub const HUB_TIMEOUT_VAR: &str = "CANDLELENS_HUB_TIMEOUT";

/// How long a download may go without receiving a byte before it is abandoned:
/// `CANDLELENS_HUB_TIMEOUT` seconds, default 30.
///
/// # Errors
/// [`LensError::BadParameter`] when the variable is set to anything but a positive number of
/// seconds (at most a day).
pub fn stall_timeout() -> Result<Duration> {
    match std::env::var(HUB_TIMEOUT_VAR) {
        Err(_) => Ok(Duration::from_secs(30)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(LensError::bad_parameter(
                HUB_TIMEOUT_VAR,
                &v,
                "set it to a number of seconds between 0 and 86400 (e.g. 60), or unset it for the default 30",
            )),
        },
    }
}

/// A hub repository's files, fetched lazily.
pub struct HubRepo {
    repo_id: String,
    repo: Repo,
    api: Option<Api>,
    cache: hf_hub::CacheRepo,
    endpoint: String,
    timeout: Duration,
}

fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::from_env().token())
}

/// What the download thread reports: when it last received data, how many bytes the hub
/// announced and how many arrived.
struct Watch {
    last: Instant,
    size: usize,
    received: usize,
}

/// hf-hub's progress callback: feeds the watchdog and draws the bar.
struct Watcher {
    state: Arc<Mutex<Watch>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Watcher {
    fn with<F: FnOnce(&mut Watch)>(&self, f: F) {
        if let Ok(mut w) = self.state.lock() {
            f(&mut w);
        }
    }
}

impl Progress for Watcher {
    fn init(&mut self, size: usize, filename: &str) {
        self.with(|w| {
            w.size = size;
            w.received = 0;
            w.last = Instant::now();
        });
        if let Some(b) = &self.bar {
            b.set_length(size as u64);
            b.set_position(0);
            b.set_message(filename.to_string());
        }
    }

    fn update(&mut self, size: usize) {
        self.with(|w| {
            w.received += size;
            w.last = Instant::now();
        });
        if let Some(b) = &self.bar {
            b.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl HubRepo {
    /// A handle on `owner/name` (revision `main`), with the endpoint (`HF_ENDPOINT`) and cache
    /// (`HF_HOME`) from the environment.
    ///
    /// # Errors
    /// [`LensError::Hub`] if the client cannot be built.
    pub fn new(repo_id: &str) -> Result<Self> {
        Self::at_revision(repo_id, None)
    }

    /// [`Self::new`] at a revision: a branch, tag or commit (Pythia's training checkpoints are
    /// branches `step1000`, ...); `None` is `main`.
    ///
    /// # Errors
    /// [`LensError::Hub`] if the client cannot be built.
    pub fn at_revision(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        Self::with(repo_id, revision, &endpoint, None, stall_timeout()?)
    }

    fn with(
        repo_id: &str,
        revision: Option<&str>,
        endpoint: &str,
        cache_dir: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self> {
        let repo = match revision {
            Some(rev) => Repo::with_revision(repo_id.to_string(), RepoType::Model, rev.to_string()),
            None => Repo::new(repo_id.to_string(), RepoType::Model),
        };
        let (cache, mut builder) = match cache_dir {
            Some(dir) => (
                Cache::new(dir.to_path_buf()),
                ApiBuilder::from_cache(Cache::new(dir.to_path_buf())),
            ),
            None => (Cache::from_env(), ApiBuilder::from_env()),
        };
        builder = builder
            .with_endpoint(endpoint.to_string())
            .with_token(token())
            .with_progress(false)
            .with_retries(2);
        Ok(HubRepo {
            repo_id: repo_id.to_string(),
            cache: cache.repo(repo.clone()),
            repo,
            api: builder.build().ok(),
            endpoint: endpoint.to_string(),
            timeout,
        })
    }

    /// The local path of a file, downloading it (with a progress bar on a terminal) if it is
    /// not cached. A download silent for [`stall_timeout`] is abandoned; a truncated one is
    /// removed from the cache.
    ///
    /// # Errors
    /// [`LensError::Hub`] naming the fix: `HF_TOKEN` for gated repos (401/403), the repo id for 404,
    /// the endpoint and `CANDLELENS_HUB_TIMEOUT` for a stalled connection, a retry for a
    /// truncated file, the network otherwise.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cache.get(file) {
            return Ok(p);
        }
        let err = |detail: String, fix: String| LensError::Hub {
            repo: self.repo_id.clone(),
            file: file.to_string(),
            detail,
            fix,
        };
        let api = self
            .api
            .clone()
            .ok_or_else(|| err("no HTTP client".into(), "check your TLS setup".into()))?;
        let state = Arc::new(Mutex::new(Watch {
            last: Instant::now(),
            size: 0,
            received: 0,
        }));
        let use_bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let watcher = Watcher {
            state: Arc::clone(&state),
            bar: use_bar.then(|| indicatif::ProgressBar::new(0)),
        };
        let (tx, rx) = mpsc::channel();
        let (repo, name) = (self.repo.clone(), file.to_string());
        std::thread::spawn(move || {
            let _ = tx.send(api.repo(repo).download_with_progress(&name, watcher));
        });
        let path = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break r.map_err(|e| hub_error(&self.repo_id, file, &e))?,
                Err(RecvTimeoutError::Timeout) => {
                    let idle = state.lock().map(|w| w.last.elapsed()).unwrap_or_default();
                    if idle > self.timeout {
                        return Err(err(
                            format!("no data from {} for {:.0} s", self.endpoint, idle.as_secs_f64()),
                            format!(
                                "the connection stalled (a proxy or firewall?): check the network or HF_ENDPOINT, \
                                 raise {HUB_TIMEOUT_VAR}=<seconds> for a slow link, or put the files in the HF cache \
                                 (HF_HOME); offline, use the embedded models (smollm2-135m, gemma-3-270m)"
                            ),
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LensError::Internal(
                        "the download thread ended without a result".into(),
                    ))
                }
            }
        };
        let (size, received) = state.lock().map(|w| (w.size, w.received)).unwrap_or((0, 0));
        let on_disk = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && on_disk != size as u64 {
            // the response ended early: take the file back out of the cache
            remove_from_cache(&path);
            return Err(err(
                format!(
                    "the download was cut short: {on_disk} of {size} bytes ({received} received)"
                ),
                "run the command again to retry; the partial file was removed from the cache"
                    .into(),
            ));
        }
        // a large (LFS) file's blob is named by its sha256, which the hub announced: check the
        // bytes that arrived against it before anyone reads them
        if let Some(want) = lfs_sha256(&path) {
            let got = crate::load::verify::sha256_file(&path)?;
            if got != want {
                remove_from_cache(&path);
                return Err(err(
                    format!("the downloaded file's sha256 is {got}, the hub announced {want}"),
                    "the bytes were damaged on the way (a proxy?): run the command again to retry; the file was removed from the cache".into(),
                ));
            }
        }
        Ok(path)
    }

    /// Whether a file exists (cached, or listed by the hub).
    pub fn has(&self, file: &str) -> bool {
        self.get(file).is_ok()
    }
}

/// Removes a snapshot entry and the blob it points to from the HF cache.
fn remove_from_cache(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}

/// The sha256 a cached file must have, when its blob is named by one (the hub's
/// `x-linked-etag` of an LFS file); small files are named by their git sha1 and are not checked.
fn lfs_sha256(path: &Path) -> Option<String> {
    let blob = std::fs::canonicalize(path).ok()?;
    let name = blob.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| name.to_ascii_lowercase())
}

/// The typed error for a failed download, naming the fix for the HTTP status.
fn hub_error(repo: &str, file: &str, e: &ApiError) -> LensError {
    let status = match e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            _ => None,
        },
        _ => None,
    };
    let fix = match status {
        Some(401) | Some(403) => "The repo is gated or private: accept its licence on the hub, then set HF_TOKEN=<your token> (or run `huggingface-cli login`)",
        Some(404) => "No such repo or file: check the repo id (e.g. 'google/gemma-3-270m')",
        _ => "Check the network, or set HF_HOME to a cache that has the files; offline, use the embedded models (smollm2-135m, gemma-3-270m)",
    };
    LensError::Hub {
        repo: repo.to_string(),
        file: file.to_string(),
        detail: e.to_string(),
        fix: fix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> ApiError {
        let resp = ureq::Response::new(code, "status", "").unwrap();
        ApiError::RequestError(Box::new(ureq::Error::Status(code, resp)))
    }

    #[test]
    fn gated_repos_name_the_token_fix() {
        for code in [401, 403] {
            let msg = hub_error("google/gemma-2b-it", "config.json", &status(code)).to_string();
            assert!(msg.contains("HF_TOKEN"), "{msg}");
            assert!(msg.contains("google/gemma-2b-it/config.json"), "{msg}");
        }
        let msg = hub_error("nobody/nothing", "config.json", &status(404)).to_string();
        assert!(msg.contains("check the repo id"), "{msg}");
    }

    /// A local "hub" that answers each request with `respond(request_head)` (None: hold the
    /// connection open and say nothing). Returns its endpoint.
    fn fake_hub(respond: fn(&str) -> Option<Vec<u8>>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                match respond(&String::from_utf8_lossy(&head)) {
                    Some(reply) => {
                        let _ = stream.write_all(&reply);
                    }
                    None => held.push(stream),
                }
            }
        });
        endpoint
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("candlelens-hub-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// `someone/model` on the fake hub at `endpoint`, cached in a fresh folder `name`.
    fn fake_repo(endpoint: &str, name: &str, timeout: Duration) -> (HubRepo, PathBuf) {
        let dir = scratch(name);
        let repo = HubRepo::with("someone/model", None, endpoint, Some(&dir), timeout).unwrap();
        (repo, dir)
    }

    #[test]
    fn a_stalled_connection_is_a_typed_error_within_the_timeout() {
        let endpoint = fake_hub(|_| None);
        let (repo, dir) = fake_repo(&endpoint, "stall", Duration::from_millis(800));
        let t0 = Instant::now();
        let err = repo.get("config.json").unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(err.contains("no data from http://127.0.0.1"), "{err}");
        assert!(err.contains(HUB_TIMEOUT_VAR), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_truncated_download_does_not_stay_in_the_cache() {
        let endpoint = fake_hub(|head| {
            Some(if head.contains("bytes=0-0") {
                // metadata: the file has 100 bytes
                b"HTTP/1.1 206 Partial Content\r\nx-repo-commit: c0ffee\r\netag: \"e7a9\"\r\ncontent-range: bytes 0-0/100\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx".to_vec()
            } else {
                // the body stops after 40 bytes and the connection closes (no content-length)
                let mut r = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
                r.extend([b'a'; 40]);
                r
            })
        });
        let (repo, dir) = fake_repo(&endpoint, "truncated", Duration::from_secs(5));
        let err = repo.get("model.safetensors").unwrap_err().to_string();
        assert!(err.contains("cut short: 40 of 100 bytes"), "{err}");
        // nothing of it is left where a later run would find it
        assert!(repo.cache.get("model.safetensors").is_none());
        let blobs = dir.join("models--someone--model").join("blobs");
        let left: Vec<_> = std::fs::read_dir(&blobs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.iter()
                .all(|p| p.extension().is_some_and(|e| e == "lock")),
            "{left:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn lfs_reply(head: &str, etag: &str, body: &[u8]) -> Vec<u8> {
        if head.contains("bytes=0-0") {
            format!(
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: c0ffee\r\nx-linked-etag: \"{etag}\"\r\netag: \"abc\"\r\ncontent-range: bytes 0-0/{}\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
                body.len()
            )
            .into_bytes()
        } else {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(body);
            r
        }
    }

    const BODY: &[u8] = b"0123456789012345678901234567890123456789012345678901234567890123456789";

    fn body_sha() -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(BODY)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn an_lfs_download_is_checked_against_its_sha256() {
        // the right bytes under the wrong hash: refused and removed
        let endpoint = fake_hub(|head| Some(lfs_reply(head, &"0".repeat(64), BODY)));
        let (repo, dir) = fake_repo(&endpoint, "lfs-bad", Duration::from_secs(5));
        let err = repo.get("model.safetensors").unwrap_err().to_string();
        assert!(err.contains("the hub announced 0000"), "{err}");
        assert!(repo.cache.get("model.safetensors").is_none());
        let _ = std::fs::remove_dir_all(&dir);

        // the right hash: accepted
        let endpoint = fake_hub(|head| Some(lfs_reply(head, &body_sha(), BODY)));
        let (repo, dir) = fake_repo(&endpoint, "lfs-good", Duration::from_secs(5));
        let path = repo.get("model.safetensors").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), BODY);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
