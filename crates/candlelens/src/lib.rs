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

// The tree follows the data flow: load -> run (engine) -> cache (engine::hooks) -> analyse
// (interp, sae, studies) -> show (viz, notebook); util holds what several layers share.
// ARCHITECTURE.md at the repository's root draws it.
pub mod dataset;
pub mod engine;
pub mod error;
pub mod interp;
pub mod load;
pub mod notebook;
pub mod sae;
pub mod studies;
pub mod util;
pub mod viz;

// The flat paths notebooks and users write (`candlelens::patching::Patcher`,
// `candlelens::lre::Relation`, `candlelens::cache::ActivationCache`, ...).
pub use engine::hooks::cache;
pub use engine::model::generate;
pub use engine::runtime::memory;
pub use engine::text::{tokenizer, tokens};
pub use engine::{block, config, hooks, model, weights};
pub use interp::{
    analysis, attribution, factored, metrics, patching, probes, prompts, readout, steering,
};
pub use load::arch;
pub use studies::{binding, data, lre};
pub use util::progress;

pub use block::{ForwardCtx, PastKv};
pub use cache::ActivationCache;
pub use config::ModelConfig;
pub use error::{LensError, Result};
pub use hooks::{HookAudit, HookContext, HookFilter, HookPoint, Hooks};
pub use load::{LoadOptions, Processing};
pub use model::{HookedTransformer, LogitsAt};
pub use tokens::{Prompts, Tokens};

/// Everything a notebook needs, in one `use candlelens::prelude::*;`.
pub mod prelude {
    pub use crate::engine::config::ModelConfig;
    pub use crate::engine::hooks::ActivationCache;
    pub use crate::interp::analysis::{LogitAttribution, Pos, ResidStack};
    pub use crate::interp::factored::FactoredMatrix;
    // `Result` is left out on purpose: a one-argument alias in scope breaks code that writes
    // `Result<T, E>` (notebook cells, evcxr's generated code). Write `candlelens::Result`.
    pub use crate::engine::hooks::{
        layer_from_module_name, HookAudit, HookContext, HookFilter, HookPoint, Hooks,
    };
    pub use crate::engine::model::generate::GenerateOptions;
    pub use crate::engine::model::{HookedTransformer, LogitsAt};
    pub use crate::engine::text::tokens::Tokens;
    pub use crate::error::LensError;
    pub use crate::interp::attribution::AttributionPatcher;
    pub use crate::interp::metrics::{self, TokenGroups};
    pub use crate::interp::patching::{
        PatchGrid, PatchOptions, PatchTarget, Patcher, PathPatcher, Receivers,
    };
    pub use crate::interp::prompts::{PromptTest, TestPromptOptions};
    pub use crate::interp::readout::{Alignment, Readout};
    pub use crate::interp::steering::{Steering, SteeringVector};
    pub use crate::load::{LoadOptions, Processing};
    pub use crate::viz::{AttentionView, Figure, Table};
    pub use candle_core::{DType, Device, IndexOp, Tensor, D};
}

/// The README's and the user guide's Rust examples, compiled (and run, where not `no_run`) by
/// `cargo test --doc`: every snippet a user reads is checked against this crate.
#[cfg(doctest)]
mod guide {
    macro_rules! chapters {
        ($($name:ident = $path:literal),* $(,)?) => {
            $(
                #[doc = include_str!($path)]
                #[allow(dead_code)]
                struct $name;
            )*
        };
    }
    chapters! {
        Readme = "../../../README.md",
        Introduction = "../../../docs/src/introduction.md",
        Models = "../../../docs/src/models.md",
        CachingAndHooks = "../../../docs/src/caching-and-hooks.md",
        Analysis = "../../../docs/src/analysis.md",
        Patching = "../../../docs/src/patching.md",
        Steering = "../../../docs/src/steering.md",
        Probes = "../../../docs/src/probes.md",
        Datasets = "../../../docs/src/datasets.md",
        Circuits = "../../../docs/src/circuits.md",
        Saes = "../../../docs/src/saes.md",
        Lre = "../../../docs/src/lre.md",
        EntityBinding = "../../../docs/src/entity-binding.md",
        Notebooks = "../../../docs/src/notebooks.md",
        Cli = "../../../docs/src/cli.md",
        Errors = "../../../docs/src/errors.md",
        Speed = "../../../docs/src/speed.md",
        Correctness = "../../../docs/src/correctness.md",
        Layout = "../../../docs/src/layout.md",
    }
}
