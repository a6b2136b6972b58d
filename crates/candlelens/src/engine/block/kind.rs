//! The shape of a model's blocks ([`BlockKind`]) and where a run can enter one ([`Stage`]):
//! what code outside the block asks instead of reading the config's switches.

use crate::engine::config::ModelConfig;

/// How a block joins its attention and MLP branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// `resid_mid = resid_pre + attn_out`, `resid_post = resid_mid + mlp_out` (GPT-2, Llama,
    /// Gemma, Qwen, Mistral, OLMo 2, the MoE families).
    Sequential,
    /// `resid_post = resid_pre + attn_out + mlp_out`, both branches reading `resid_pre`; the
    /// MLP through a norm of its own (`own_ln2`: GPT-NeoX / Pythia) or through `ln1`'s output
    /// (GPT-J, Phi-1/1.5/2).
    Parallel {
        /// Whether the MLP has its own pre-norm (`ln2`).
        own_ln2: bool,
    },
}

impl BlockKind {
    /// The kind of `cfg`'s blocks.
    pub fn of(cfg: &ModelConfig) -> Self {
        if cfg.parallel_attn_mlp {
            BlockKind::Parallel {
                own_ln2: cfg.parallel_ln2,
            }
        } else {
            BlockKind::Sequential
        }
    }

    /// Whether the block has a residual stream between its halves (`hook_resid_mid`); a
    /// parallel block's MLP does not read its own attention's output.
    pub fn has_resid_mid(self) -> bool {
        self == BlockKind::Sequential
    }

    /// Whether the MLP has a pre-norm of its own (`ln2`), on a model with pre-norms.
    pub fn has_ln2(self) -> bool {
        !matches!(self, BlockKind::Parallel { own_ln2: false })
    }
}

/// Where a run enters a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// At `resid_pre`: the whole block runs.
    Pre,
    /// At `resid_mid` (sequential blocks): only the MLP half runs.
    Mid,
}
