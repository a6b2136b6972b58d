//! Phi-1, Phi-1.5 and Phi-2 (`model_type: phi`): one LayerNorm whose output feeds attention and
//! the MLP in parallel (GPT-J's block), rotate-half rotary on the first
//! `partial_rotary_factor` of each head (0.4 in Phi-2), biases on every projection and on the
//! unembedding. (Phi-3 and Phi-4-mini are Llama-style: see `llama.rs`.)

use candle_core::{DType, Device};
use serde_json::Value;

use super::{check_dim, get, hidden_act, norm, opt, rope_params, Json};
use crate::engine::config::{
    AttentionKind, ModelConfig, NormKind, Positional, QkNorm, RotaryConfig,
};
use crate::engine::weights::{LayerWeights, TensorSource, Weights};
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
    let d_model = j.dim("hidden_size")?;
    let n_heads = j.dim("num_attention_heads")?;
    let n_layers = j.dim("num_hidden_layers")?;
    let n_kv_heads = j.dim_or("num_key_value_heads", n_heads)?;
    let d_head = check_dim(
        "hidden_size / num_attention_heads",
        j.usize_or("head_dim", d_model / n_heads),
    )?;
    if j.bool_or("qk_layernorm", false) {
        return Err(LensError::UnsupportedConfig {
            field: "qk_layernorm".into(),
            value: "true".into(),
            fix: "per-head LayerNorms on q and k are not implemented for Phi; the released Phi-1, 1.5 and 2 set it to false".into(),
        });
    }
    let (base, scaling, _) = rope_params(j, 10_000.0)?;
    let dim = rotary_dims(d_head, partial_rotary_factor(j, 0.5)?)?;
    Ok(ModelConfig {
        architecture: "phi".into(),
        name: name.to_string(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: j.dim("intermediate_size")?,
        d_vocab: j.dim("vocab_size")?,
        n_ctx: j.usize_or("max_position_embeddings", 2048),
        norm: NormKind::LayerNorm,
        norm_eps: j.f64_or("layer_norm_eps", 1e-5),
        positional: Positional::Rotary(RotaryConfig {
            dim,
            base,
            local_base: None,
            scaling,
            interleaved: false,
        }),
        act: hidden_act(j, "hidden_act", "gelu_new")?,
        gated_mlp: false,
        moe: None,
        pre_norms: true,
        qk_norm: QkNorm::None,
        post_norms: false,
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        layer_attention: vec![AttentionKind::Global; n_layers],
        embed_scale: None,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: true,
        parallel_ln2: false,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(50256)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(50256)),
        pad_token_id: j.opt_u32("pad_token_id").unwrap_or(50256),
        // Phi's tokenizer adds no BOS; TransformerLens prepends <|endoftext|>
        default_prepend_bos: true,
    })
}

pub(super) fn weights(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let w_e = get(src, "model.embed_tokens.weight", dtype, dev)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("model.layers.{l}.{s}");
        layers.push(LayerWeights {
            ln1: Some(norm(src, &n("input_layernorm.weight"), false, dtype, dev)?),
            ln1_post: None,
            // the MLP reads ln1's output
            ln2: None,
            ln2_post: None,
            w_q: get(src, &n("self_attn.q_proj.weight"), dtype, dev)?,
            b_q: opt(src, &n("self_attn.q_proj.bias"), dtype, dev)?,
            w_k: get(src, &n("self_attn.k_proj.weight"), dtype, dev)?,
            b_k: opt(src, &n("self_attn.k_proj.bias"), dtype, dev)?,
            w_v: get(src, &n("self_attn.v_proj.weight"), dtype, dev)?,
            b_v: opt(src, &n("self_attn.v_proj.bias"), dtype, dev)?,
            q_norm: None,
            k_norm: None,
            w_o: get(src, &n("self_attn.dense.weight"), dtype, dev)?,
            b_o: opt(src, &n("self_attn.dense.bias"), dtype, dev)?,
            router: None,
            shared_expert_gate: None,
            w_in: get(src, &n("mlp.fc1.weight"), dtype, dev)?,
            b_in: opt(src, &n("mlp.fc1.bias"), dtype, dev)?,
            w_gate: None,
            w_out: get(src, &n("mlp.fc2.weight"), dtype, dev)?,
            b_out: opt(src, &n("mlp.fc2.bias"), dtype, dev)?,
        });
    }
    let (w_u, b_u) = if cfg.tied_embeddings {
        (w_e.clone(), opt(src, "lm_head.bias", dtype, dev)?)
    } else {
        (
            get(src, "lm_head.weight", dtype, dev)?,
            opt(src, "lm_head.bias", dtype, dev)?,
        )
    };
    Ok(Weights {
        w_e,
        w_pos: None,
        layers,
        ln_final: norm(src, "model.final_layernorm.weight", false, dtype, dev)?,
        w_u,
        b_u,
    })
}
