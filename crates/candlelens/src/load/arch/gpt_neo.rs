//! GPT-Neo (125M, 1.3B, 2.7B): GPT-2's block with separate q/k/v projections (no biases),
//! global and local (`window_size`, 256 in the releases) attention alternating by
//! `attention_types`, and attention scores that are not scaled by `1/sqrt(d_head)`.

use serde_json::Value;

use super::{
    check_dim, endoftext_tokens, hidden_act, read_block, read_model, BlockNames, Checkpoint,
    DimKeys, Json, MlpWidth, ModelNames,
};
use crate::engine::config::{AttentionKind, ModelConfig};
use crate::engine::weights::Weights;
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
    let dims = j.dims(&DimKeys {
        n_layers: "num_layers",
        n_heads: "num_heads",
        n_kv_heads: None,
        d_head: None,
        d_mlp: MlpWidth::KeyOr4x("intermediate_size"),
        ..DimKeys::HF
    })?;
    let window = check_dim("window_size", j.usize_or("window_size", 256))?;
    let cfg = ModelConfig {
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        act: hidden_act(j, "activation_function", "gelu_new")?,
        // GPT-Neo was trained without the 1/sqrt(d_head) factor
        attn_scale: 1.0,
        layer_attention: layer_kinds(j.v, dims.n_layers, window)?,
        tied_embeddings: j.bool_or("tie_word_embeddings", true),
        ..ModelConfig::plain("gpt_neo", name, dims)
    };
    // as TransformerLens: <|endoftext|> before every prompt
    Ok(endoftext_tokens(j, cfg, 50256, "eos_token_id"))
}

pub(super) fn weights(ck: Checkpoint) -> Result<Weights> {
    let (dtype, dev) = (ck.dtype, ck.dev);
    let names = ModelNames {
        pos: Some("transformer.wpe.weight"),
        ..ModelNames::new(
            "transformer.wte.weight",
            "transformer.ln_f.weight",
            "lm_head.weight",
        )
    };
    let block = BlockNames {
        attn: [
            "attn.attention.q_proj",
            "attn.attention.k_proj",
            "attn.attention.v_proj",
            "attn.attention.out_proj",
        ],
        mlp: ["mlp.c_fc", "mlp.c_proj"],
        ln1: "ln_1",
        ln2: Some("ln_2"),
    };
    read_model(ck, &names, |src, l| {
        read_block(src, &format!("transformer.h.{l}."), &block, dtype, dev)
    })
}
