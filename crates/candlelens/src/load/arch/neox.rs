//! GPT-NeoX (Pythia): attention and MLP in parallel, each behind its own LayerNorm
//! (`use_parallel_residual`; sequential when it is false), rotary on the first
//! `partial_rotary_factor` (older configs: `rotary_pct`) of each head's dimensions with
//! rotate-half, a fused `query_key_value` projection laid out head by head (`[h, q|k|v, d_head]`
//! rows), biases everywhere, an untied `embed_out`.

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::{check_dim, get, hidden_act, norm, opt, Json};
use crate::engine::config::{
    AttentionKind, ModelConfig, NormKind, Positional, QkNorm, RotaryConfig,
};
use crate::engine::weights::{LayerWeights, TensorSource, Weights};
use crate::error::{LensError, Result};

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let d_model = j.dim("hidden_size")?;
    let n_heads = j.dim("num_attention_heads")?;
    let n_layers = j.dim("num_hidden_layers")?;
    let d_head = check_dim("hidden_size / num_attention_heads", d_model / n_heads)?;
    // transformers 5 writes rope_parameters; the released Pythia configs rotary_pct/rotary_emb_base
    let rp = j.v.get("rope_parameters").filter(|v| v.is_object());
    let pct = rp
        .and_then(|r| r.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| j.f64_or("rotary_pct", 0.25));
    let base = rp
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| j.f64_or("rotary_emb_base", 10_000.0));
    if !(pct > 0.0 && pct <= 1.0 && base.is_finite() && base > 0.0) {
        return Err(LensError::UnsupportedConfig {
            field: "partial_rotary_factor / rotary_emb_base".into(),
            value: format!("{pct} / {base}"),
            fix: "the rotary fraction must be in (0, 1] and the base positive".into(),
        });
    }
    // HF: int(head_size * factor); the rotated part must hold whole pairs
    let rot = ((d_head as f64 * pct) as usize).max(2) & !1;
    let parallel = j.bool_or("use_parallel_residual", true);
    Ok(ModelConfig {
        architecture: "gpt_neox".into(),
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
        norm_eps: j.f64_or("layer_norm_eps", 1e-5),
        positional: Positional::Rotary(RotaryConfig {
            dim: rot,
            base,
            local_base: None,
            scaling: None,
            interleaved: false,
        }),
        act: hidden_act(j, "hidden_act", "gelu")?,
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
        parallel_attn_mlp: parallel,
        parallel_ln2: parallel,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(0)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(0)),
        pad_token_id: j.opt_u32("pad_token_id").unwrap_or(1),
        default_prepend_bos: true,
    })
}

/// Splits the fused `query_key_value` rows (`[h, 3, d_head]` order, the same for the bias) into
/// `(q, k, v)` along axis 0.
fn split_qkv(t: &Tensor, n_heads: usize, d_head: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let rest: Vec<usize> = t.dims()[1..].to_vec();
    let mut shape = vec![n_heads, 3, d_head];
    shape.extend(&rest);
    let per_head = t.reshape(shape)?;
    let part = |i: usize| -> Result<Tensor> {
        let mut out = vec![n_heads * d_head];
        out.extend(&rest);
        Ok(per_head.narrow(1, i, 1)?.contiguous()?.reshape(out)?)
    };
    Ok((part(0)?, part(1)?, part(2)?))
}

pub(super) fn weights(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let (h, dh, d) = (cfg.n_heads, cfg.d_head, cfg.d_model);
    let w_e = get(src, "gpt_neox.embed_in.weight", dtype, dev)?;
    let mut layers = Vec::new();
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("gpt_neox.layers.{l}.{s}");
        let qkv = get(src, &n("attention.query_key_value.weight"), dtype, dev)?;
        if qkv.dims() != [3 * h * dh, d] {
            return Err(LensError::BadWeight {
                name: n("attention.query_key_value.weight"),
                problem: format!("has shape {:?}, expected {:?}", qkv.dims(), [3 * h * dh, d]),
            });
        }
        let (w_q, w_k, w_v) = split_qkv(&qkv, h, dh)?;
        let (b_q, b_k, b_v) = match opt(src, &n("attention.query_key_value.bias"), dtype, dev)? {
            Some(b) if b.dims() == [3 * h * dh] => {
                let (q, k, v) = split_qkv(&b, h, dh)?;
                (Some(q), Some(k), Some(v))
            }
            Some(b) => {
                return Err(LensError::BadWeight {
                    name: n("attention.query_key_value.bias"),
                    problem: format!("has shape {:?}, expected [{}]", b.dims(), 3 * h * dh),
                })
            }
            None => (None, None, None),
        };
        layers.push(LayerWeights {
            ln1: Some(norm(src, &n("input_layernorm.weight"), false, dtype, dev)?),
            ln1_post: None,
            ln2: Some(norm(
                src,
                &n("post_attention_layernorm.weight"),
                false,
                dtype,
                dev,
            )?),
            ln2_post: None,
            w_q,
            b_q,
            w_k,
            b_k,
            w_v,
            b_v,
            q_norm: None,
            k_norm: None,
            w_o: get(src, &n("attention.dense.weight"), dtype, dev)?,
            b_o: opt(src, &n("attention.dense.bias"), dtype, dev)?,
            router: None,
            shared_expert_gate: None,
            w_in: get(src, &n("mlp.dense_h_to_4h.weight"), dtype, dev)?,
            b_in: opt(src, &n("mlp.dense_h_to_4h.bias"), dtype, dev)?,
            w_gate: None,
            w_out: get(src, &n("mlp.dense_4h_to_h.weight"), dtype, dev)?,
            b_out: opt(src, &n("mlp.dense_4h_to_h.bias"), dtype, dev)?,
        });
    }
    let w_u = if cfg.tied_embeddings {
        w_e.clone()
    } else {
        get(src, "embed_out.weight", dtype, dev)?
    };
    Ok(Weights {
        w_e,
        w_pos: None,
        layers,
        ln_final: norm(src, "gpt_neox.final_layer_norm.weight", false, dtype, dev)?,
        w_u,
        b_u: None,
    })
}
