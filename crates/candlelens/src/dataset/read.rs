//! Reading an activation dataset back, shard by shard.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::Manifest;
use crate::error::{LensError, Result};

/// The rows of one shard of one hook.
#[derive(Clone, Debug)]
pub struct ShardRows {
    /// `[rows, d]` f32.
    pub activations: Tensor,
    /// The token at each row.
    pub token_ids: Vec<u32>,
    /// The context each row belongs to (its index in the dataset).
    pub context_index: Vec<u32>,
    /// The row's position in its context.
    pub position: Vec<u32>,
}

/// The number of rows of a shard file (its `activations`' first dimension).
pub(crate) fn rows_in(path: &Path) -> Result<usize> {
    let t = read_file(path)?;
    Ok(t.activations.dim(0)?)
}

fn read_file(path: &Path) -> Result<ShardRows> {
    let corrupt = |detail: String| LensError::CorruptFile {
        path: path.to_path_buf(),
        detail,
    };
    if !path.exists() {
        return Err(LensError::MissingFile {
            path: path.to_path_buf(),
            fix: "a shard of the dataset is missing: run the same store command again to write it"
                .into(),
        });
    }
    let mut ts = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| corrupt(format!("not a readable shard: {e}")))?;
    let mut take = |name: &str| {
        ts.remove(name)
            .ok_or_else(|| corrupt(format!("the shard has no '{name}' tensor")))
    };
    let activations = take("activations")?.to_dtype(DType::F32)?;
    let u32s = |t: Tensor| -> Result<Vec<u32>> { Ok(t.to_dtype(DType::U32)?.to_vec1()?) };
    let (token_ids, context_index, position) = (
        u32s(take("token_ids")?)?,
        u32s(take("context_index")?)?,
        u32s(take("position")?)?,
    );
    let n = activations.dims2()?.0;
    if [token_ids.len(), context_index.len(), position.len()] != [n; 3] {
        return Err(corrupt(format!(
            "{n} activation rows but {} token ids, {} context indices and {} positions",
            token_ids.len(),
            context_index.len(),
            position.len()
        )));
    }
    Ok(ShardRows {
        activations,
        token_ids,
        context_index,
        position,
    })
}

/// A complete activation dataset on disk ([`store_activations`](super::store_activations)).
#[derive(Clone, Debug)]
pub struct ActivationDataset {
    dir: PathBuf,
    manifest: Manifest,
}

impl ActivationDataset {
    /// Opens the dataset in `dir` from its `manifest.json`.
    ///
    /// # Errors
    /// [`LensError::MissingFile`] without a manifest (the dataset is incomplete: run the store
    /// command again — it resumes); [`LensError::BadData`] for a manifest that does not parse.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join("manifest.json");
        if !path.exists() {
            return Err(LensError::MissingFile {
                path,
                fix: "the dataset is not complete (a run was stopped, or the other shards of a --shard i/n job have not finished): run the same store command again; it keeps the shards already written".into(),
            });
        }
        let manifest: Manifest = serde_json::from_value(crate::util::fs::read_json(&path, "")?)
            .map_err(|e| LensError::BadData {
                what: path.display().to_string(),
                detail: format!("not a dataset manifest: {e}"),
            })?;
        Ok(ActivationDataset { dir, manifest })
    }

    /// What it holds.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The position of `hook` among the stored hooks.
    fn hook_index(&self, hook: &str) -> Result<usize> {
        let hooks = &self.manifest.plan.hooks;
        hooks
            .iter()
            .position(|h| h.name == hook)
            .ok_or_else(|| LensError::UnknownChoice {
                what: "stored hook".into(),
                given: hook.to_string(),
                choices: hooks
                    .iter()
                    .map(|h| h.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Rows stored for each hook.
    pub fn n_rows(&self) -> usize {
        self.manifest
            .shards
            .iter()
            .map(|s| s.first().map_or(0, |f| f.rows))
            .sum()
    }

    /// Shard `k` of `hook`, checked against the manifest's rows and width.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for a hook not stored; [`LensError::OutOfRange`] for a shard
    /// past the last; [`LensError::MissingFile`] / [`LensError::CorruptFile`] for a file that
    /// is gone or does not hold what the manifest says.
    pub fn shard(&self, hook: &str, k: usize) -> Result<ShardRows> {
        let h = self.hook_index(hook)?;
        let file = self
            .manifest
            .shards
            .get(k)
            .and_then(|s| s.get(h))
            .ok_or_else(|| LensError::OutOfRange {
                what: "shard".into(),
                index: k,
                len: self.manifest.shards.len(),
            })?;
        let path = self.dir.join(&file.path);
        let rows = read_file(&path)?;
        let d = self.manifest.plan.hooks[h].d;
        if rows.activations.dims() != [file.rows, d] {
            return Err(LensError::CorruptFile {
                path,
                detail: format!(
                    "holds activations {:?}, the manifest says [{}, {d}]",
                    rows.activations.dims(),
                    file.rows
                ),
            });
        }
        Ok(rows)
    }

    /// Every shard of `hook` in order (one in memory at a time).
    pub fn shards<'a>(&'a self, hook: &'a str) -> impl Iterator<Item = Result<ShardRows>> + 'a {
        (0..self.manifest.shards.len()).map(move |k| self.shard(hook, k))
    }

    /// Every row of `hook`, `[n_rows, d]` — e.g. what
    /// [`train_topk`](crate::sae::train::train_topk) trains on.
    ///
    /// # Errors
    /// As [`Self::shard`].
    pub fn activations(&self, hook: &str) -> Result<Tensor> {
        let parts = self
            .shards(hook)
            .map(|s| Ok(s?.activations))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The rows of `hook` as an in-memory [`ActivationStore`](crate::sae::store::ActivationStore)
    /// over `contexts` — the contexts the dataset was cut into (`Corpus::contexts` with the
    /// plan's context size), checked against the plan's sha256 — for the feature, neuron and
    /// direction views.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for other contexts; as [`Self::activations`].
    pub fn to_store(
        &self,
        hook: &str,
        contexts: &crate::engine::text::tokens::Tokens,
    ) -> Result<crate::sae::store::ActivationStore> {
        if super::tokens_sha256(contexts) != self.manifest.plan.tokens_sha256 {
            return Err(LensError::mismatch(
                "dataset and contexts",
                format!(
                    "these {} contexts are not the {} the dataset was written from; cut the same corpus with Corpus::contexts(model, {}, ...)",
                    contexts.batch(),
                    self.manifest.plan.n_contexts,
                    self.manifest.plan.context_size
                ),
            ));
        }
        let h = self.hook_index(hook)?;
        let mut acts = Vec::new();
        let mut index = Vec::new();
        for s in self.shards(hook) {
            let s = s?;
            index.extend(
                s.context_index
                    .iter()
                    .zip(&s.position)
                    .map(|(&c, &p)| (c as usize, p as usize)),
            );
            acts.push(s.activations);
        }
        Ok(crate::sae::store::ActivationStore {
            hook: crate::engine::hooks::HookPoint::parse(&self.manifest.plan.hooks[h].name)?,
            acts: Tensor::cat(&acts, 0)?,
            index,
            tokens: contexts.clone(),
            seconds: 0.0,
        })
    }

    /// Checks every file's sha256 against the manifest.
    ///
    /// # Errors
    /// [`LensError::ChecksumMismatch`] naming the first file that differs.
    pub fn verify(&self) -> Result<()> {
        for file in self.manifest.shards.iter().flatten() {
            let path = self.dir.join(&file.path);
            let got = crate::load::verify::sha256_file(&path)?;
            if got != file.sha256 {
                return Err(LensError::ChecksumMismatch {
                    path,
                    got,
                    want: file.sha256.clone(),
                    command: "the shard changed after it was written: delete it and manifest.json, then run the store command again".into(),
                });
            }
        }
        Ok(())
    }
}
