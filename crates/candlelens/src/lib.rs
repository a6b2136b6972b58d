//! # Candlelens
//!
//! Mechanistic interpretability in Rust: load a transformer with one call, cache every
//! activation under its TransformerLens name, hook and patch, and analyse — on
//! [candle](https://github.com/huggingface/candle) tensors.
//!
//! ```no_run
//! use candlelens::prelude::*;
//! # fn main() -> candlelens::Result<()> {
//! let model = HookedTransformer::from_pretrained("smollm2-135m")?;
//! let tokens = model.to_tokens("The Eiffel Tower is in the city of", None)?;
//! let (logits, cache) = model.run_with_cache(&tokens, None)?;
//! let resid = cache.get("blocks.5.hook_resid_pre")?; // [batch, pos, d_model]
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod arch;
pub mod binding;
pub mod block;
pub mod cache;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod load;
pub mod lre;
pub mod metrics;
pub mod model;
pub mod notebook;
pub mod patching;
pub mod progress;
pub mod prompts;
mod rope;
pub mod tokenizer;
pub mod tokens;
pub mod viz;
pub mod weights;

pub use block::{ForwardCtx, PastKv};
pub use cache::ActivationCache;
pub use config::ModelConfig;
pub use error::{LensError, Result};
pub use hooks::{HookFilter, HookPoint, Hooks};
pub use load::LoadOptions;
pub use model::{HookedTransformer, LogitsAt};
pub use tokens::Tokens;

/// Everything a notebook needs, in one `use candlelens::prelude::*;`.
pub mod prelude {
    pub use crate::analysis::{Attribution, Pos, ResidStack};
    pub use crate::cache::ActivationCache;
    pub use crate::config::ModelConfig;
    // `Result` is left out on purpose: a one-argument alias in scope breaks code that writes
    // `Result<T, E>` (notebook cells, evcxr's generated code). Write `candlelens::Result`.
    pub use crate::error::LensError;
    pub use crate::generate::GenerateOptions;
    pub use crate::hooks::{layer_from_module_name, HookFilter, HookPoint, Hooks};
    pub use crate::load::LoadOptions;
    pub use crate::metrics::{self, TokenGroups};
    pub use crate::model::{HookedTransformer, LogitsAt};
    pub use crate::patching::{PatchGrid, PatchTarget, Patcher};
    pub use crate::prompts::PromptTest;
    pub use crate::tokens::Tokens;
    pub use crate::viz::{AttentionView, Figure, Table};
    pub use crate::Prompts;
    pub use candle_core::{DType, Device, IndexOp, Tensor, D};
}

/// One prompt or several: what `to_tokens` accepts.
pub trait Prompts {
    /// The prompts as string slices.
    fn prompts(&self) -> Vec<&str>;
}

impl Prompts for &str {
    fn prompts(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Prompts for String {
    fn prompts(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Prompts for &String {
    fn prompts(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Prompts for &[&str] {
    fn prompts(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl<const N: usize> Prompts for [&str; N] {
    fn prompts(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl Prompts for Vec<&str> {
    fn prompts(&self) -> Vec<&str> {
        self.clone()
    }
}

impl Prompts for &[String] {
    fn prompts(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

impl Prompts for Vec<String> {
    fn prompts(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}
