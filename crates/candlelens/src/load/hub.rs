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
        let err = |detail: String, fix: &str| LensError::Hub {
            repo: self.repo_id.clone(),
            file: file.to_string(),
            detail,
            fix: fix.to_string(),
        };
        let api = self
            .api
            .as_ref()
            .ok_or_else(|| err("no HTTP client".into(), "check your TLS setup"))?;
        api.get(file).map_err(|e| {
            let status = match &e {
                ApiError::RequestError(r) => match r.as_ref() {
                    ureq::Error::Status(code, _) => Some(*code),
                    _ => None,
                },
                _ => None,
            };
            match status {
                Some(401) | Some(403) => err(
                    e.to_string(),
                    "The repo is gated or private: accept its licence on the hub, then set HF_TOKEN=<your token> (or run `huggingface-cli login`)",
                ),
                Some(404) => err(
                    e.to_string(),
                    "No such repo or file: check the repo id (e.g. 'google/gemma-3-270m')",
                ),
                _ => err(
                    e.to_string(),
                    "Check the network, or set HF_HOME to a cache that has the files; offline, use the embedded models (smollm2-135m, gemma-3-270m)",
                ),
            }
        })
    }

    /// Whether a file exists (cached, or listed by the hub).
    pub fn has(&self, file: &str) -> bool {
        self.get(file).is_ok()
    }
}
