//! GPT-Neo (125M, 1.3B, 2.7B): GPT-2's block with separate q/k/v projections (no biases),
//! global and local (`window_size`, 256 in the releases) attention alternating by
//! `attention_types`, and attention scores that are not scaled by `1/sqrt(d_head)`.

use candle_core::{DType, Device};
use serde_json::Value;

use super::{check_dim, get, hidden_act, norm, opt, Json};
use crate::engine::config::{AttentionKind, ModelConfig, NormKind, Positional, QkNorm};
use crate::engine::weights::{LayerWeights, TensorSource, Weights};
use crate::error::{LensError, Result};

/// The per-layer kinds: `attention_layers` (`["global", "local", ...]`), else `attention_types`
/// expanded (`[[["global", "local"], 12]]`: the pattern repeated 12 times).
fn layer_kinds(v: &Value, n_layers: usize, window: usize) -> Result<Vec<AttentionKind>> {
    let bad = |value: String| LensError::UnsupportedConfig {
        field: "attention_types".into(),
        value,
        fix: "expected [[[\"global\", \"local\"], n], ...] naming one kind per layer".into(),
    };
    let names: Vec<String> = match v.get("attention_layers").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(x.to_string()))
            })
            .collect::<Result<_>>()?,
        None => {
            let types = v
                .get("attention_types")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("missing".into()))?;
            let mut out = Vec::new();
            for t in types {
                let (Some(pattern), Some(times)) = (
                    t.get(0).and_then(Value::as_array),
                    t.get(1).and_then(Value::as_u64),
                ) else {
                    return Err(bad(t.to_string()));
                };
                for _ in 0..(times as usize).min(n_layers + 1) {
                    for p in pattern {
                        out.push(p.as_str().ok_or_else(|| bad(p.to_string()))?.to_string());
                    }
                }
            }
            out
        }
    };
    if names.len() != n_layers {
        return Err(LensError::UnsupportedConfig {
            field: "attention_types".into(),
            value: format!("{} layers", names.len()),
            fix: format!("num_layers is {n_layers}; name one attention kind per layer"),
        });
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "global" => Ok(AttentionKind::Global),
            "local" => Ok(AttentionKind::Local { window }),
            other => Err(bad(other.to_string())),
        })
        .collect()
}

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let d_model = j.dim("hidden_size")?;
    let n_heads = j.dim("num_heads")?;
    let n_layers = j.dim("num_layers")?;
    let d_head = check_dim("hidden_size / num_heads", d_model / n_heads)?;
    let window = check_dim("window_size", j.usize_or("window_size", 256))?;
    Ok(ModelConfig {
        architecture: "gpt_neo".into(),
        name: name.to_string(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: j.dim_or("intermediate_size", 4 * d_model)?,
        d_vocab: j.dim("vocab_size")?,
        n_ctx: j.usize_or("max_position_embeddings", 2048),
        norm: NormKind::LayerNorm,
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        positional: Positional::Learned,
        act: hidden_act(j, "activation_function", "gelu_new")?,
        gated_mlp: false,
        moe: None,
        pre_norms: true,
        qk_norm: QkNorm::None,
        post_norms: false,
        // GPT-Neo was trained without the 1/sqrt(d_head) factor
        attn_scale: 1.0,
        attn_softcap: None,
        final_softcap: None,
        layer_attention: layer_kinds(j.v, n_layers, window)?,
        embed_scale: None,
        tied_embeddings: j.bool_or("tie_word_embeddings", true),
        parallel_attn_mlp: false,
        parallel_ln2: false,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(50256)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(50256)),
        pad_token_id: j.opt_u32("eos_token_id").unwrap_or(50256),
        // as TransformerLens: <|endoftext|> before every prompt
        default_prepend_bos: true,
    })
}

pub(super) fn weights(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let w_e = get(src, "transformer.wte.weight", dtype, dev)?;
    let w_pos = get(src, "transformer.wpe.weight", dtype, dev)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("transformer.h.{l}.{s}");
        let a = |s: &str| format!("transformer.h.{l}.attn.attention.{s}");
        layers.push(LayerWeights {
            ln1: Some(norm(src, &n("ln_1.weight"), false, dtype, dev)?),
            ln1_post: None,
            ln2: Some(norm(src, &n("ln_2.weight"), false, dtype, dev)?),
            ln2_post: None,
            w_q: get(src, &a("q_proj.weight"), dtype, dev)?,
            b_q: None,
            w_k: get(src, &a("k_proj.weight"), dtype, dev)?,
            b_k: None,
            w_v: get(src, &a("v_proj.weight"), dtype, dev)?,
            b_v: None,
            q_norm: None,
            k_norm: None,
            w_o: get(src, &a("out_proj.weight"), dtype, dev)?,
            b_o: opt(src, &a("out_proj.bias"), dtype, dev)?,
            router: None,
            shared_expert_gate: None,
            w_in: get(src, &n("mlp.c_fc.weight"), dtype, dev)?,
            b_in: opt(src, &n("mlp.c_fc.bias"), dtype, dev)?,
            w_gate: None,
            w_out: get(src, &n("mlp.c_proj.weight"), dtype, dev)?,
            b_out: opt(src, &n("mlp.c_proj.bias"), dtype, dev)?,
        });
    }
    let w_u = if cfg.tied_embeddings {
        w_e.clone()
    } else {
        get(src, "lm_head.weight", dtype, dev)?
    };
    Ok(Weights {
        w_e,
        w_pos: Some(w_pos),
        layers,
        ln_final: norm(src, "transformer.ln_f.weight", false, dtype, dev)?,
        w_u,
        b_u: None,
    })
}
