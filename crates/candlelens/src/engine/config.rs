//! [`ModelConfig`]: one architecture-neutral description of a decoder-only transformer.
//!
//! Every supported family (GPT-2, GPT-J, GPT-Neo, GPT-NeoX, Llama, Mistral, Phi, OLMo 2, Qwen,
//! Gemma 1/2/3) is this struct with different
//! switches; the one generic forward in [`crate::engine::model`] reads nothing else.

use serde::Serialize;

/// Which normalisation the blocks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b` (GPT-2).
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * w` (Llama, Qwen, Gemma; Gemma's `1 + w` is folded in at load).
    RmsNorm,
}

/// The MLP nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Activation {
    /// Exact erf GELU.
    Gelu,
    /// The tanh approximation of GELU (`gelu_new` in GPT-2, `gelu_pytorch_tanh` in Gemma).
    GeluTanh,
    /// `x * sigmoid(x)` (Llama, Qwen).
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// How positions enter the model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Positional {
    /// A learned `W_pos [n_ctx, d_model]` added to the embedding (GPT-2).
    Learned,
    /// Rotary embeddings on q and k ("rotate half", the HF / NeoX convention).
    Rotary(RotaryConfig),
}

/// Rotary position embedding parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RotaryConfig {
    /// Number of dimensions of each head that rotate (`d_head` unless partial rotary).
    pub dim: usize,
    /// Base of the frequencies for global-attention layers.
    pub base: f64,
    /// Base for sliding-window (local) layers where it differs (Gemma 3: 10 000).
    pub local_base: Option<f64>,
    /// Frequency rescaling (Llama 3 style), applied to global layers.
    pub scaling: Option<RopeScaling>,
    /// Rotate adjacent pairs `(0,1), (2,3), ...` (GPT-J) instead of the two halves of the head.
    pub interleaved: bool,
}

impl RotaryConfig {
    /// Rotary on the first `dim` dimensions of each head, rotating its two halves (HF's
    /// `rotate_half`), frequencies of `base`, unscaled, one base for every layer.
    pub fn plain(dim: usize, base: f64) -> RotaryConfig {
        RotaryConfig {
            dim,
            base,
            local_base: None,
            scaling: None,
            interleaved: false,
        }
    }

    /// [`Self::plain`] as the model's positional scheme.
    pub fn halves(dim: usize, base: f64) -> Positional {
        Positional::Rotary(RotaryConfig::plain(dim, base))
    }
}

/// Rotary frequency scaling rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF "linear").
    Linear {
        /// The divisor of the positions.
        factor: f64,
    },
    /// The `llama3` rule: long wavelengths divided by `factor`, short ones kept, smooth between.
    Llama3 {
        /// The divisor of the long-wavelength frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was first trained with.
        original_max_position_embeddings: f64,
    },
}

/// Where queries and keys are RMS-normalised (before rotary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum QkNorm {
    /// No norm on queries and keys.
    None,
    /// Each head over its `d_head` dimensions, one scale `[d_head]` shared by the heads
    /// (Qwen 3, Gemma 3).
    PerHead,
    /// All heads at once, over `n_heads * d_head` for queries and `n_kv_heads * d_head` for
    /// keys, with a scale of that width (OLMo 2).
    AllHeads,
}

/// A sparse mixture-of-experts MLP (Mixtral, Qwen 2/3 MoE): a router picks `top_k` of
/// `n_experts` gated MLPs per token. The experts are laid side by side as one MLP of
/// `d_mlp = n_experts * d_expert + d_shared` hidden units (expert `e` owns units
/// `e * d_expert ..`, an always-on shared expert the last `d_shared`), so `hook_pre`,
/// `hook_post`, `W_in` and `W_out` keep their dense shapes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MoeConfig {
    /// Number of routed experts.
    pub n_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Hidden width of one routed expert.
    pub d_expert: usize,
    /// Hidden width of the shared expert (Qwen 2 MoE), 0 where there is none.
    pub d_shared: usize,
    /// Whether the top-k routing probabilities are renormalised to sum to 1 (Mixtral, Qwen 3
    /// MoE) or kept as softmax probabilities over all experts (Qwen 2 MoE).
    pub norm_topk_prob: bool,
}

impl MoeConfig {
    /// The hidden units of expert `e`: `e * d_expert .. (e + 1) * d_expert`.
    pub fn units(&self, e: usize) -> std::ops::Range<usize> {
        e * self.d_expert..(e + 1) * self.d_expert
    }

    /// The hidden units of the shared expert (empty where there is none).
    pub fn shared_units(&self) -> std::ops::Range<usize> {
        let start = self.n_experts * self.d_expert;
        start..start + self.d_shared
    }
}

/// Whether a layer attends to every earlier position or only to a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AttentionKind {
    /// Full causal attention.
    Global,
    /// Causal attention to the last `window` positions (the query's own included).
    Local {
        /// The window's length in positions.
        window: usize,
    },
}

/// An architecture-neutral description of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The family the weights came from (`llama`, `gemma3`, `gpt2`, ...), for display.
    pub architecture: String,
    /// A human name (alias, repo id or file name).
    pub name: String,
    /// The model's size (`n_layers`, `d_model`, heads, widths, vocabulary, context), read as
    /// `cfg.n_layers` etc. through `Deref`.
    #[serde(flatten)]
    pub dims: Dims,
    /// The normalisation the blocks and the final norm use.
    pub norm: NormKind,
    /// The epsilon of every norm.
    pub norm_eps: f64,
    /// How positions enter the model (learned `W_pos` or rotary).
    pub positional: Positional,
    /// The MLP nonlinearity.
    pub act: Activation,
    /// `act(x W_gate) * (x W_in)` instead of `act(x W_in)`.
    pub gated_mlp: bool,
    /// A sparse mixture of experts in every block's MLP (Mixtral, Qwen 2/3 MoE); `d_mlp`
    /// then counts the units of all experts.
    pub moe: Option<MoeConfig>,
    /// Norms before attention and the MLP (`ln1`, `ln2`); OLMo 2 has none, only the
    /// post-norms on their outputs.
    pub pre_norms: bool,
    /// RMSNorm of queries and keys before rotary (per head: Qwen 3, Gemma 3; over all heads:
    /// OLMo 2).
    pub qk_norm: QkNorm,
    /// Norms on the attention and MLP outputs before they join the residual (Gemma 2/3,
    /// OLMo 2).
    pub post_norms: bool,
    /// Attention scores multiplied by this before softmax (usually `1/sqrt(d_head)`).
    pub attn_scale: f64,
    /// `cap * tanh(scores / cap)` on attention scores (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `cap * tanh(logits / cap)` on the final logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Per-layer attention kind (sliding windows).
    pub layer_attention: Vec<AttentionKind>,
    /// Embeddings multiplied by this (Gemma: `sqrt(d_model)`).
    pub embed_scale: Option<f64>,
    /// `W_U = W_E^T`.
    pub tied_embeddings: bool,
    /// Attention and MLP both read the block's input and add to the residual in parallel
    /// (GPT-J, GPT-NeoX): there is no `resid_mid`.
    pub parallel_attn_mlp: bool,
    /// In a parallel block, the MLP reads its own norm `ln2(resid_pre)` (GPT-NeoX) rather than
    /// `ln1`'s output (GPT-J).
    pub parallel_ln2: bool,
    /// The BOS token id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// The EOS token id, if the model has one.
    pub eos_token_id: Option<u32>,
    /// The padding id used when batching prompts of different lengths.
    pub pad_token_id: u32,
    /// Whether `to_tokens` prepends BOS by default (follows the tokenizer's own default, but
    /// for the GPT-2-style families, where it follows TransformerLens and prepends).
    pub default_prepend_bos: bool,
    /// Whether the model's own (Hugging Face) tokenizer prepends BOS: what a script calling
    /// `tokenizer(text)` runs — false for GPT-2, whose `default_prepend_bos` is true.
    pub hf_prepends_bos: bool,
    /// The TransformerLens weight processing applied on load (none by default; see
    /// [`HookedTransformer::process_weights`](crate::HookedTransformer::process_weights)).
    pub processing: Processing,
}

/// The size of a model: the part of its config every family reads from keys of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Dims {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Key/value heads: `n_heads` for MHA, fewer for grouped-query attention, 1 for MQA.
    pub n_kv_heads: usize,
    /// Dimension of each attention head.
    pub d_head: usize,
    /// Width of the MLP's hidden layer.
    pub d_mlp: usize,
    /// Vocabulary size (rows of `W_E`, columns of `W_U`).
    pub d_vocab: usize,
    /// Maximum context length.
    pub n_ctx: usize,
}

impl std::ops::Deref for ModelConfig {
    type Target = Dims;

    fn deref(&self) -> &Dims {
        &self.dims
    }
}

impl std::ops::DerefMut for ModelConfig {
    fn deref_mut(&mut self) -> &mut Dims {
        &mut self.dims
    }
}

impl ModelConfig {
    /// A config of `dims` with every switch at its plainest — pre-LayerNorm (epsilon `1e-5`)
    /// blocks run one after the other, learned positions, a dense GELU MLP, global attention
    /// scaled by `1/sqrt(d_head)`, no soft-caps, an untied unembedding, no special tokens —
    /// for a family's reader to override what its family does differently (struct update
    /// syntax), so that each reader states only its family's differences.
    pub fn plain(architecture: &str, name: &str, dims: Dims) -> ModelConfig {
        ModelConfig {
            architecture: architecture.to_string(),
            name: name.to_string(),
            dims,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            positional: Positional::Learned,
            act: Activation::Gelu,
            gated_mlp: false,
            moe: None,
            pre_norms: true,
            qk_norm: QkNorm::None,
            post_norms: false,
            attn_scale: 1.0 / (dims.d_head as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            layer_attention: vec![AttentionKind::Global; dims.n_layers],
            embed_scale: None,
            tied_embeddings: false,
            parallel_attn_mlp: false,
            parallel_ln2: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: 0,
            default_prepend_bos: false,
            hf_prepends_bos: false,
            processing: Processing::NONE,
        }
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Parameter count (weights only, tied embeddings counted once).
    pub fn n_params(&self) -> usize {
        let attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads);
        let mut mlp = self.d_model * self.d_mlp * if self.gated_mlp { 3 } else { 2 };
        if let Some(moe) = &self.moe {
            // the router, and the shared expert's gate
            mlp += self.d_model * (moe.n_experts + usize::from(moe.d_shared > 0));
        }
        let embed = self.d_vocab * self.d_model * if self.tied_embeddings { 1 } else { 2 };
        self.n_layers * (attn + mlp) + embed
    }

    /// Checks internal consistency; every loader calls this before building the model.
    ///
    /// # Errors
    /// [`crate::LensError::UnsupportedConfig`] naming the inconsistent field.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |field: &str, value: String, fix: &str| {
            Err(crate::error::LensError::UnsupportedConfig {
                field: field.into(),
                value,
                fix: fix.into(),
            })
        };
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.d_head == 0 {
            return bad(
                "n_layers/d_model/n_heads/d_head",
                format!(
                    "{}/{}/{}/{}",
                    self.n_layers, self.d_model, self.n_heads, self.d_head
                ),
                "all must be positive",
            );
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                self.n_kv_heads.to_string(),
                "must divide n_heads",
            );
        }
        if self.layer_attention.len() != self.n_layers {
            return bad(
                "layer_attention",
                format!("{} entries", self.layer_attention.len()),
                "needs one entry per layer",
            );
        }
        if !self.pre_norms && (self.parallel_attn_mlp || !self.post_norms) {
            return bad(
                "pre_norms",
                "false".into(),
                "a block without pre-norms needs post-norms and sequential attention and MLP (OLMo 2)",
            );
        }
        if let Some(moe) = &self.moe {
            if moe.n_experts == 0 || moe.top_k == 0 || moe.top_k > moe.n_experts {
                return bad(
                    "num_experts_per_tok",
                    format!("{} of {} experts", moe.top_k, moe.n_experts),
                    "must be between 1 and the number of experts",
                );
            }
            if moe.d_expert == 0 || self.d_mlp != moe.n_experts * moe.d_expert + moe.d_shared {
                return bad(
                    "moe_intermediate_size",
                    moe.d_expert.to_string(),
                    "must be positive; d_mlp counts every expert's units",
                );
            }
            if !self.gated_mlp {
                return bad("moe", "ungated experts".into(), "experts are gated MLPs");
            }
        }
        if let Positional::Rotary(r) = &self.positional {
            if r.dim == 0 || r.dim > self.d_head || r.dim % 2 != 0 {
                return bad(
                    "rotary_dim",
                    r.dim.to_string(),
                    "must be even and at most d_head",
                );
            }
            for (field, base) in [
                ("rope_theta", Some(r.base)),
                ("rope_local_base_freq", r.local_base),
            ] {
                if let Some(b) = base {
                    if !(b.is_finite() && b > 0.0) {
                        return bad(
                            field,
                            b.to_string(),
                            "the rotary base must be a positive number (10000 for most models)",
                        );
                    }
                }
            }
            if let Some(sc) = &r.scaling {
                let factors: Vec<(&str, f64)> = match sc {
                    RopeScaling::Linear { factor } => vec![("rope_scaling.factor", *factor)],
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => vec![
                        ("rope_scaling.factor", *factor),
                        ("rope_scaling.low_freq_factor", *low_freq_factor),
                        ("rope_scaling.high_freq_factor", *high_freq_factor),
                        (
                            "rope_scaling.original_max_position_embeddings",
                            *original_max_position_embeddings,
                        ),
                    ],
                };
                for (field, v) in factors {
                    if !(v.is_finite() && v > 0.0) {
                        return bad(field, v.to_string(), "must be a positive number");
                    }
                }
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = sc
                {
                    if high_freq_factor <= low_freq_factor {
                        return bad(
                            "rope_scaling.high_freq_factor",
                            high_freq_factor.to_string(),
                            "must exceed low_freq_factor (the llama3 rule divides by their difference)",
                        );
                    }
                }
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(
                "rms_norm_eps / layer_norm_eps",
                self.norm_eps.to_string(),
                "the norm epsilon must be a small non-negative number (1e-5, 1e-6)",
            );
        }
        if !(self.attn_scale.is_finite() && self.attn_scale > 0.0) {
            return bad(
                "query_pre_attn_scalar / attention scale",
                self.attn_scale.to_string(),
                "the attention scale must be a positive number (query_pre_attn_scalar > 0)",
            );
        }
        for (field, cap) in [
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
        ] {
            if let Some(c) = cap {
                if !(c.is_finite() && c > 0.0) {
                    return bad(
                        field,
                        c.to_string(),
                        "a softcap must be positive (or null for none)",
                    );
                }
            }
        }
        if let Some(e) = self.embed_scale {
            if !(e.is_finite() && e > 0.0) {
                return bad(
                    "embedding scale",
                    e.to_string(),
                    "must be a positive number",
                );
            }
        }
        if self
            .layer_attention
            .iter()
            .any(|k| matches!(k, AttentionKind::Local { window: 0 }))
        {
            return bad(
                "sliding_window",
                "0".into(),
                "a sliding window must hold at least one token (or be null for global attention)",
            );
        }
        Ok(())
    }
}

/// Which of TransformerLens's weight-processing steps to apply on load
/// (`LoadOptions::processing`,
/// `HookedTransformer::process_weights`).
///
/// Candlelens loads without processing (the checkpoint's own weights, as Hugging Face runs
/// them); TransformerLens's `from_pretrained` processes by default
/// ([`Self::transformer_lens_defaults`]) and its `from_pretrained_no_processing` does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Processing {
    /// Fold each norm's weight (and LayerNorm's bias) into the matrices that read it.
    pub fold_ln: bool,
    /// Centre the weights that write to the residual stream (LayerNorm models only).
    pub center_writing_weights: bool,
    /// Centre the unembedding over the vocabulary (not with a final-logit softcap).
    pub center_unembed: bool,
    /// Fold the value biases into the attention output bias.
    pub fold_value_biases: bool,
    /// Leave out, as TransformerLens does, a step this model cannot take or has nothing for
    /// (centring writing weights under RMSNorm, centring the unembedding under a softcap,
    /// folding value biases it does not have, folding a mixture of experts' norms) instead of
    /// an error. `HookedTransformer::process_weights`
    /// returns what was applied.
    pub skip_inapplicable: bool,
}

impl Processing {
    /// No processing: the checkpoint's weights as they are (the default).
    pub const NONE: Processing = Processing {
        fold_ln: false,
        center_writing_weights: false,
        center_unembed: false,
        fold_value_biases: false,
        skip_inapplicable: false,
    };

    /// TransformerLens's `from_pretrained` defaults: all four steps, each left out where
    /// TransformerLens leaves it out (see [`Self::skip_inapplicable`]).
    pub fn transformer_lens_defaults() -> Processing {
        Processing {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
            skip_inapplicable: true,
        }
    }

    /// Whether no step is asked for.
    pub fn is_none(&self) -> bool {
        !(self.fold_ln
            || self.center_writing_weights
            || self.center_unembed
            || self.fold_value_biases)
    }

    /// The steps asked for, by TransformerLens's names (`"none"` for none).
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            ("fold_ln", self.fold_ln),
            ("center_writing_weights", self.center_writing_weights),
            ("center_unembed", self.center_unembed),
            ("fold_value_biases", self.fold_value_biases),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}
