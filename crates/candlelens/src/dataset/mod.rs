//! Activation datasets on disk — **cache** in load → run → cache → analyse → show, for corpora
//! too large to hold: a corpus cut into fixed-length contexts (as SAELens's activation store
//! cuts it), run through the model in batches, one or more hook points written to safetensors
//! shards with a manifest, and read back shard by shard for probes and SAE training.
//!
//! Layout of a dataset folder `DIR`:
//! - `DIR/plan.json`: what is being stored (model, hooks with widths, context size, batch,
//!   contexts per shard, number of contexts and shards, a sha256 of the contexts' token ids).
//!   Written first; a run into a folder whose plan differs (another model, hook, corpus or
//!   context) is refused.
//! - `DIR/<hook>/shard-NNNNN.safetensors` per hook and shard: `activations [rows, d]` f32,
//!   `token_ids [rows]`, `context_index [rows]` and `position [rows]` (u32), one row per real
//!   position of the shard's contexts except a leading BOS (SAELens leaves it out: the attention
//!   sink's activation is orders of magnitude larger than the rest). Each file is written to a
//!   unique temporary name and renamed, so a shard that exists is whole.
//! - `DIR/manifest.json`: the plan plus every shard's rows, bytes and sha256, written (whole)
//!   by the run that finds every shard present. Python's `safetensors` and numpy read the
//!   shards as they are.
//!
//! Memory is bounded by one shard (contexts per shard × context size × width per hook), not by
//! the dataset. A killed run resumes: shards already written are kept, never rewritten.
//! `shard = (i, n)` writes only the shards `k` with `k % n == i`, so `n` independent processes
//! (a scheduler's array job) together write what one run writes, bit for bit: each shard's
//! batches are the same whoever computes them.

mod read;
mod write;

pub use read::{ActivationDataset, ShardRows};
pub use write::{store_activations, StoreOptions, StoreReport};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One stored hook point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHook {
    /// Its TransformerLens name.
    pub name: String,
    /// The width of its rows.
    pub d: usize,
}

/// What a dataset holds (`plan.json`; `manifest.json` adds the shards).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The model's name.
    pub model: String,
    /// The corpus's name.
    pub corpus: String,
    /// The hook points stored.
    pub hooks: Vec<StoredHook>,
    /// Tokens per context (BOS included where the model prepends it).
    pub context_size: usize,
    /// Contexts per forward.
    pub batch_size: usize,
    /// Contexts per shard.
    pub contexts_per_shard: usize,
    /// Contexts in the dataset.
    pub n_contexts: usize,
    /// Shards per hook.
    pub n_shards: usize,
    /// sha256 of the contexts' token ids (little-endian u32, row after row).
    pub tokens_sha256: String,
}

/// One hook's file of one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFile {
    /// The path, relative to the dataset folder.
    pub path: String,
    /// Rows in it.
    pub rows: usize,
    /// Its size.
    pub bytes: u64,
    /// Its sha256.
    pub sha256: String,
}

/// A complete dataset (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What it holds.
    pub plan: Plan,
    /// Per shard, one file per hook in the plan's order.
    pub shards: Vec<Vec<ShardFile>>,
}

/// The relative path of hook `hook`'s file of shard `k`.
pub(crate) fn shard_path(hook: &str, k: usize) -> String {
    format!("{hook}/shard-{k:05}.safetensors")
}

/// sha256 of `tokens`' ids (little-endian u32, row after row): the plan's `tokens_sha256`.
pub(crate) fn tokens_sha256(tokens: &crate::engine::text::tokens::Tokens) -> String {
    let mut h = Sha256::new();
    for row in tokens.rows() {
        for id in row {
            h.update(id.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
