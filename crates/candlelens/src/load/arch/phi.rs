//! Phi-1, Phi-1.5 and Phi-2 (`model_type: phi`): one LayerNorm whose output feeds attention and
//! the MLP in parallel (GPT-J's block), rotate-half rotary on the first
//! `partial_rotary_factor` of each head (0.4 in Phi-2), biases on every projection and on the
//! unembedding. (Phi-3 and Phi-4-mini are Llama-style: see `llama.rs`.)

use serde_json::Value;

use super::{
    endoftext_tokens, hidden_act, read_block, read_model, rope_params, BlockNames, Checkpoint,
    DimKeys, Json, ModelNames,
};
use crate::engine::config::{ModelConfig, Positional, RotaryConfig};
use crate::engine::weights::Weights;
use crate::error::{LensError, Result};

/// The fraction of each head that rotates: `rope_parameters.partial_rotary_factor`
/// (transformers 5), else the top-level field, else `default`; checked to lie in (0, 1].
pub(super) fn partial_rotary_factor(j: &Json, default: f64) -> Result<f64> {
    let pct =
        j.v.get("rope_parameters")
            .and_then(|r| r.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or_else(|| j.opt_f64("partial_rotary_factor"))
            .unwrap_or(default);
    if !(pct > 0.0 && pct <= 1.0) {
        return Err(LensError::UnsupportedConfig {
            field: "partial_rotary_factor".into(),
            value: pct.to_string(),
            fix: "the rotating fraction of each head must be in (0, 1]".into(),
        });
    }
    Ok(pct)
}

/// HF's `int(d_head * factor)` rotating dimensions, which must hold whole pairs.
///
/// # Errors
/// [`LensError::UnsupportedConfig`] when the product is odd or zero.
pub(super) fn rotary_dims(d_head: usize, pct: f64) -> Result<usize> {
    let dim = (d_head as f64 * pct) as usize;
    if dim == 0 || !dim.is_multiple_of(2) {
        return Err(LensError::UnsupportedConfig {
            field: "partial_rotary_factor".into(),
            value: format!("{pct} of head_dim {d_head} = {dim} dimensions"),
            fix: "rotary needs an even, positive number of dimensions per head".into(),
        });
    }
    Ok(dim)
}

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let dims = j.dims(&DimKeys::HF)?;
    if j.bool_or("qk_layernorm", false) {
        return Err(LensError::UnsupportedConfig {
            field: "qk_layernorm".into(),
            value: "true".into(),
            fix: "per-head LayerNorms on q and k are not implemented for Phi; the released Phi-1, 1.5 and 2 set it to false".into(),
        });
    }
    let (base, scaling, _) = rope_params(j, 10_000.0)?;
    let dim = rotary_dims(dims.d_head, partial_rotary_factor(j, 0.5)?)?;
    let cfg = ModelConfig {
        norm_eps: j.f64_or("layer_norm_eps", 1e-5),
        positional: Positional::Rotary(RotaryConfig {
            scaling,
            ..RotaryConfig::plain(dim, base)
        }),
        act: hidden_act(j, "hidden_act", "gelu_new")?,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: true,
        ..ModelConfig::plain("phi", name, dims)
    };
    // Phi's tokenizer adds no BOS; TransformerLens prepends <|endoftext|>
    Ok(endoftext_tokens(j, cfg, 50256, "pad_token_id"))
}

pub(super) fn weights(ck: Checkpoint) -> Result<Weights> {
    let (dtype, dev) = (ck.dtype, ck.dev);
    let names = ModelNames {
        unembed_bias: Some("lm_head.bias"),
        ..ModelNames::new(
            "model.embed_tokens.weight",
            "model.final_layernorm.weight",
            "lm_head.weight",
        )
    };
    // the MLP reads ln1's output
    let block = BlockNames {
        attn: [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.dense",
        ],
        mlp: ["mlp.fc1", "mlp.fc2"],
        ln1: "input_layernorm",
        ln2: None,
    };
    read_model(ck, &names, |src, l| {
        read_block(src, &format!("model.layers.{l}."), &block, dtype, dev)
    })
}
