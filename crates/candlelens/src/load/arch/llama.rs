//! The Llama-style families: Llama, Mistral, Qwen 2/2.5, Qwen 3, Gemma 1/2/3, Phi-3 (and
//! Phi-4-mini), OLMo 2, and the mixtures of experts Mixtral and Qwen 2/3 MoE. They share the HF
//! tensor names (`model.layers.{l}.self_attn.q_proj`, ...) and differ in config switches: Phi-3
//! fuses `qkv_proj` and `gate_up_proj` and may rotate part of each head; OLMo 2 has no
//! pre-norms, only post-norms, and normalises q and k over all heads at once; the MoE families
//! put their experts side by side in one wide MLP (see
//! [`MoeConfig`](crate::engine::config::MoeConfig)).

use candle_core::Tensor;
use serde_json::Value;

use super::moe::{experts, moe_config};
use super::phi::{partial_rotary_factor, rotary_dims};
use super::{
    check_dim, get, hidden_act, norm, opt, rope_params, Checkpoint, DimKeys, Family, Json, MlpWidth,
};
use crate::engine::config::{
    Activation, AttentionKind, ModelConfig, NormKind, Positional, QkNorm, RotaryConfig,
};
use crate::engine::weights::{LayerWeights, Weights};
use crate::error::{LensError, Result};

/// Gemma 3's layer pattern: every `pattern`-th layer global, the rest sliding.
pub(crate) fn gemma3_layers(n_layers: usize, pattern: usize, window: usize) -> Vec<AttentionKind> {
    (0..n_layers)
        .map(|l| {
            if (l + 1) % pattern.max(1) == 0 {
                AttentionKind::Global
            } else {
                AttentionKind::Local { window }
            }
        })
        .collect()
}

/// Per-layer attention kinds from `layer_types` (transformers 5), else `fallback`.
fn layer_kinds(
    v: &Value,
    window: usize,
    fallback: impl FnOnce() -> Vec<AttentionKind>,
) -> Result<Vec<AttentionKind>> {
    match v.get("layer_types").and_then(Value::as_array) {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(AttentionKind::Local { window }),
                Some("full_attention") => Ok(AttentionKind::Global),
                other => Err(LensError::UnsupportedConfig {
                    field: "layer_types".into(),
                    value: format!("{other:?}"),
                    fix: "expected sliding_attention or full_attention".into(),
                }),
            })
            .collect(),
        None => Ok(fallback()),
    }
}

/// The config of a Llama-style family.
pub(super) fn config(family: Family, j: &Json, name: &str) -> Result<ModelConfig> {
    let v = j.v;
    let moe = moe_config(family, j)?;
    let dims = j.dims(&DimKeys {
        d_mlp: match &moe {
            Some(m) => MlpWidth::Given(m.n_experts * m.d_expert + m.d_shared),
            None => MlpWidth::Key("intermediate_size"),
        },
        ..DimKeys::HF
    })?;
    let (n_layers, d_model, d_head) = (dims.n_layers, dims.d_model, dims.d_head);
    let gemma = family.norm_plus_one();
    let default_base = if family == Family::Gemma3 {
        1_000_000.0
    } else {
        10_000.0
    };
    let (base, scaling, local_base) = rope_params(j, default_base)?;
    if j.bool_or("use_sliding_window", false) {
        return Err(LensError::UnsupportedConfig {
            field: "use_sliding_window".into(),
            value: "true".into(),
            fix: "Qwen-style sliding windows are not implemented; set it to false (the released Qwen configs do)".into(),
        });
    }
    let act = if gemma {
        // HF Gemma uses the tanh GELU whatever `hidden_act` says, unless hidden_activation is set.
        match j.str("hidden_activation") {
            Some(_) => hidden_act(j, "hidden_activation", "gelu_pytorch_tanh")?,
            None => Activation::GeluTanh,
        }
    } else {
        hidden_act(j, "hidden_act", "silu")?
    };
    // Phi-4-mini rotates 3/4 of each head; the others all of it
    let rotary_dim = if family == Family::Phi3 {
        rotary_dims(d_head, partial_rotary_factor(j, 1.0)?)?
    } else {
        d_head
    };
    let mut cfg = ModelConfig {
        norm: NormKind::RmsNorm,
        norm_eps: j.f64_or("rms_norm_eps", 1e-6),
        positional: Positional::Rotary(RotaryConfig {
            scaling,
            ..RotaryConfig::plain(rotary_dim, base)
        }),
        act,
        gated_mlp: true,
        moe,
        pre_norms: family != Family::Olmo2,
        qk_norm: match family {
            Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3 => QkNorm::PerHead,
            Family::Olmo2 => QkNorm::AllHeads,
            _ => QkNorm::None,
        },
        post_norms: matches!(family, Family::Gemma2 | Family::Gemma3 | Family::Olmo2),
        embed_scale: gemma.then(|| (d_model as f64).sqrt()),
        tied_embeddings: j.bool_or("tie_word_embeddings", gemma),
        bos_token_id: j.opt_u32("bos_token_id"),
        eos_token_id: j.opt_u32("eos_token_id"),
        pad_token_id: j.opt_u32("pad_token_id").unwrap_or(0),
        default_prepend_bos: true,
        ..ModelConfig::plain(j.str("model_type").unwrap_or_default(), name, dims)
    };
    if matches!(family, Family::Gemma2 | Family::Gemma3) {
        cfg.attn_scale = 1.0 / j.f64_or("query_pre_attn_scalar", d_head as f64).sqrt();
        cfg.attn_softcap = j.opt_f64("attn_logit_softcapping");
        cfg.final_softcap = j.opt_f64("final_logit_softcapping");
        let window = j.usize_or("sliding_window", 4096);
        cfg.layer_attention = if family == Family::Gemma2 {
            // transformers 4: even layers slide
            layer_kinds(v, window, || {
                (0..n_layers)
                    .map(|l| {
                        if l % 2 == 0 {
                            AttentionKind::Local { window }
                        } else {
                            AttentionKind::Global
                        }
                    })
                    .collect()
            })?
        } else {
            layer_kinds(v, window, || {
                gemma3_layers(n_layers, j.usize_or("sliding_window_pattern", 6), window)
            })?
        };
    }
    if matches!(family, Family::Mistral | Family::Mixtral | Family::Phi3) {
        // every layer slides when the config sets a window (Mistral 7B v0.1, Phi-3); null: all
        // global
        if let Some(window) = j.v.get("sliding_window").and_then(Value::as_u64) {
            let window = check_dim("sliding_window", window as usize)?;
            cfg.layer_attention = vec![AttentionKind::Local { window }; n_layers];
        }
    }
    if family == Family::Olmo2 && cfg.bos_token_id.is_none() {
        // OLMo 2's configs name no BOS; its tokenizer's bos_token is <|endoftext|>, the EOS id
        cfg.bos_token_id = cfg.eos_token_id;
    }
    if family == Family::Gemma3 {
        if let Positional::Rotary(r) = &mut cfg.positional {
            r.local_base = Some(local_base.unwrap_or(10_000.0));
        }
    }
    Ok(cfg)
}

/// Splits the rows of a fused projection `t [sum(parts), d_in]` into consecutive blocks of
/// `parts` rows (Phi-3's `qkv_proj`: q, k, v; `gate_up_proj`: gate, up).
fn split_rows(name: &str, t: &Tensor, parts: &[usize], d_in: usize) -> Result<Vec<Tensor>> {
    let total: usize = parts.iter().sum();
    if t.dims() != [total, d_in] {
        return Err(LensError::BadWeight {
            name: name.to_string(),
            problem: format!("has shape {:?}, expected {:?}", t.dims(), [total, d_in]),
        });
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(parts.len());
    for &rows in parts {
        out.push(t.narrow(0, start, rows)?.contiguous()?);
        start += rows;
    }
    Ok(out)
}

/// Maps a Llama-style checkpoint into the canonical layout.
///
/// # Errors
/// Missing or mis-shaped tensors.
pub(super) fn weights(family: Family, ck: Checkpoint) -> Result<Weights> {
    let (cfg, src, dtype, dev) = (ck.cfg, ck.src, ck.dtype, ck.dev);
    let p1 = family.norm_plus_one();
    let (h, kv, dh, d, dmlp) = (
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_head,
        cfg.d_model,
        cfg.d_mlp,
    );
    let w_e = get(src, "model.embed_tokens.weight", dtype, dev)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let pre = format!("model.layers.{l}");
        let n = |s: &str| format!("{pre}.{s}");
        let mut load_norm = |s: &str| norm(src, &n(s), p1, dtype, dev).map(Some);
        // HF names: `post_attention_layernorm` is ln2 where there are no post-norms (Llama),
        // the attention post-norm where there are (Gemma 2/3, OLMo 2)
        let (ln1, ln1_post, ln2, ln2_post) = match (cfg.pre_norms, cfg.post_norms) {
            (true, false) => (
                load_norm("input_layernorm.weight")?,
                None,
                load_norm("post_attention_layernorm.weight")?,
                None,
            ),
            (true, true) => (
                load_norm("input_layernorm.weight")?,
                load_norm("post_attention_layernorm.weight")?,
                load_norm("pre_feedforward_layernorm.weight")?,
                load_norm("post_feedforward_layernorm.weight")?,
            ),
            (false, _) => (
                None,
                load_norm("post_attention_layernorm.weight")?,
                None,
                load_norm("post_feedforward_layernorm.weight")?,
            ),
        };
        let (q_norm, k_norm) = match cfg.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead | QkNorm::AllHeads => {
                let q = norm(src, &n("self_attn.q_norm.weight"), p1, dtype, dev)?;
                let k = norm(src, &n("self_attn.k_norm.weight"), p1, dtype, dev)?;
                (Some(q.w), Some(k.w))
            }
        };
        let (w_q, w_k, w_v) = if family == Family::Phi3 {
            let name = n("self_attn.qkv_proj.weight");
            let qkv = get(src, &name, dtype, dev)?;
            let mut parts = split_rows(&name, &qkv, &[h * dh, kv * dh, kv * dh], d)?.into_iter();
            let mut next = || {
                parts
                    .next()
                    .ok_or_else(|| LensError::Internal("qkv split".into()))
            };
            (next()?, next()?, next()?)
        } else {
            (
                get(src, &n("self_attn.q_proj.weight"), dtype, dev)?,
                get(src, &n("self_attn.k_proj.weight"), dtype, dev)?,
                get(src, &n("self_attn.v_proj.weight"), dtype, dev)?,
            )
        };
        let moe = match &cfg.moe {
            Some(m) => Some(experts(family, m, &pre, src, d, dtype, dev)?),
            None => None,
        };
        let (w_gate, w_in) = if let Some(e) = &moe {
            (e.gate.clone(), e.up.clone())
        } else if family == Family::Phi3 {
            // `gate, up = gate_up_proj(x).chunk(2)`: the gate's rows come first
            let name = n("mlp.gate_up_proj.weight");
            let gate_up = get(src, &name, dtype, dev)?;
            let mut parts = split_rows(&name, &gate_up, &[dmlp, dmlp], d)?.into_iter();
            let mut next = || {
                parts
                    .next()
                    .ok_or_else(|| LensError::Internal("gate_up split".into()))
            };
            (next()?, next()?)
        } else {
            (
                get(src, &n("mlp.gate_proj.weight"), dtype, dev)?,
                get(src, &n("mlp.up_proj.weight"), dtype, dev)?,
            )
        };
        layers.push(LayerWeights {
            ln1,
            ln1_post,
            ln2,
            ln2_post,
            w_q,
            b_q: opt(src, &n("self_attn.q_proj.bias"), dtype, dev)?,
            w_k,
            b_k: opt(src, &n("self_attn.k_proj.bias"), dtype, dev)?,
            w_v,
            b_v: opt(src, &n("self_attn.v_proj.bias"), dtype, dev)?,
            q_norm,
            k_norm,
            w_o: get(src, &n("self_attn.o_proj.weight"), dtype, dev)?,
            b_o: opt(src, &n("self_attn.o_proj.bias"), dtype, dev)?,
            router: moe.as_ref().map(|e| e.router.clone()),
            shared_expert_gate: moe.as_ref().and_then(|e| e.shared_gate.clone()),
            w_in,
            b_in: opt(src, &n("mlp.up_proj.bias"), dtype, dev)?,
            w_gate: Some(w_gate),
            w_out: match &moe {
                Some(e) => e.down_t.t()?,
                None => get(src, &n("mlp.down_proj.weight"), dtype, dev)?,
            },
            b_out: opt(src, &n("mlp.down_proj.bias"), dtype, dev)?,
        });
    }
    let ln_final = norm(src, "model.norm.weight", p1, dtype, dev)?;
    let w_u = if cfg.tied_embeddings {
        w_e.clone()
    } else {
        // Some checkpoints tie without saying so.
        opt(src, "lm_head.weight", dtype, dev)?.unwrap_or_else(|| w_e.clone())
    };
    Ok(Weights {
        w_e,
        w_pos: None,
        layers,
        ln_final,
        w_u,
        b_u: None,
    })
}
