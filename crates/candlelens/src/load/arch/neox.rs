//! GPT-NeoX (Pythia): attention and MLP in parallel, each behind its own LayerNorm
//! (`use_parallel_residual`; sequential when it is false), rotary on the first
//! `partial_rotary_factor` (older configs: `rotary_pct`) of each head's dimensions with
//! rotate-half, a fused `query_key_value` projection laid out head by head (`[h, q|k|v, d_head]`
//! rows), biases everywhere, an untied `embed_out`.

use candle_core::Tensor;
use serde_json::Value;

use super::{
    get, hidden_act, norm, opt, read_model, Checkpoint, DimKeys, Json, MlpWidth, ModelNames,
};
use crate::engine::config::{ModelConfig, RotaryConfig};
use crate::engine::weights::{LayerWeights, Weights};
use crate::error::{LensError, Result};

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let dims = j.dims(&DimKeys {
        n_kv_heads: None,
        d_head: None,
        d_mlp: MlpWidth::KeyOr4x("intermediate_size"),
        ..DimKeys::HF
    })?;
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
    let rot = ((dims.d_head as f64 * pct) as usize).max(2) & !1;
    let parallel = j.bool_or("use_parallel_residual", true);
    Ok(ModelConfig {
        norm_eps: j.f64_or("layer_norm_eps", 1e-5),
        positional: RotaryConfig::halves(rot, base),
        act: hidden_act(j, "hidden_act", "gelu")?,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: parallel,
        parallel_ln2: parallel,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(0)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(0)),
        pad_token_id: j.opt_u32("pad_token_id").unwrap_or(1),
        default_prepend_bos: true,
        ..ModelConfig::plain("gpt_neox", name, dims)
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

pub(super) fn weights(ck: Checkpoint) -> Result<Weights> {
    let (cfg, dtype, dev) = (ck.cfg, ck.dtype, ck.dev);
    let (h, dh, d) = (cfg.n_heads, cfg.d_head, cfg.d_model);
    let names = ModelNames::new(
        "gpt_neox.embed_in.weight",
        "gpt_neox.final_layer_norm.weight",
        "embed_out.weight",
    );
    read_model(ck, &names, |src, l| {
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
        Ok(LayerWeights {
            ln1: Some(norm(src, &n("input_layernorm.weight"), false, dtype, dev)?),
            ln2: Some(norm(
                src,
                &n("post_attention_layernorm.weight"),
                false,
                dtype,
                dev,
            )?),
            b_q,
            b_k,
            b_v,
            b_o: opt(src, &n("attention.dense.bias"), dtype, dev)?,
            b_in: opt(src, &n("mlp.dense_h_to_4h.bias"), dtype, dev)?,
            b_out: opt(src, &n("mlp.dense_4h_to_h.bias"), dtype, dev)?,
            ..LayerWeights::projections(
                w_q,
                w_k,
                w_v,
                get(src, &n("attention.dense.weight"), dtype, dev)?,
                get(src, &n("mlp.dense_h_to_4h.weight"), dtype, dev)?,
                get(src, &n("mlp.dense_4h_to_h.weight"), dtype, dev)?,
            )
        })
    })
}
