//! Downloads from the Hugging Face hub (users' machines; this project's CI never calls it).
//! Files already in the HF cache (`$HF_HOME/hub`) are used without a request.

use std::path::PathBuf;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{LensError, Result};

/// A hub repository's files, fetched lazily.
pub struct HubRepo {
    repo_id: String,
    api: Option<hf_hub::api::sync::ApiRepo>,
    cache: hf_hub::CacheRepo,
}

fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::from_env().token())
}

impl HubRepo {
    /// A handle on `owner/name` (revision `main`).
    ///
    /// # Errors
    /// [`LensError::Hub`] if the client cannot be built.
    pub fn new(repo_id: &str) -> Result<Self> {
        let repo = Repo::new(repo_id.to_string(), RepoType::Model);
        let cache = Cache::from_env().repo(repo.clone());
        let api = ApiBuilder::from_env()
            .with_token(token())
            .with_progress(true)
            .build()
            .ok()
            .map(|a| a.repo(repo));
        Ok(HubRepo {
            repo_id: repo_id.to_string(),
            api,
            cache,
        })
    }

    /// The local path of a file, downloading it (with a progress bar) if it is not cached.
    ///
    /// # Errors
    /// [`LensError::Hub`] naming the fix: `HF_TOKEN` for gated repos (401/403), the repo id for 404,
    /// the network otherwise.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cache.get(file) {
            return Ok(p);
        }
        let api = self.api.as_ref().ok_or_else(|| LensError::Hub {
            repo: self.repo_id.clone(),
            file: file.to_string(),
            detail: "no HTTP client".into(),
            fix: "check your TLS setup".into(),
        })?;
        api.get(file)
            .map_err(|e| hub_error(&self.repo_id, file, &e))
    }

    /// Whether a file exists (cached, or listed by the hub).
    pub fn has(&self, file: &str) -> bool {
        self.get(file).is_ok()
    }
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
}
