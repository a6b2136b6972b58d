//! Architecture families: each is a config reader plus a mapping from its Hugging Face tensor
//! names into the canonical [`Weights`]. No family has its own forward pass.

use candle_core::{DType, Device};
use serde_json::Value;

use crate::config::{
    Activation, AttentionKind, ModelConfig, NormKind, Positional, RopeScaling, RotaryConfig,
};
use crate::error::{LensError, Result};
use crate::weights::{to_compute, LayerWeights, NormWeights, TensorSource, Weights};

/// The families with a weight mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3 and look-alikes (SmolLM2).
    Llama,
    /// Gemma 3 (text).
    Gemma3,
}

/// Names of the supported HF `model_type`s, for error messages.
pub const SUPPORTED: &str = "llama, gemma3_text (GGUF: llama, gemma3)";

impl Family {
    /// The family of an HF `model_type` or GGUF `general.architecture`.
    ///
    /// # Errors
    /// [`LensError::UnsupportedArchitecture`].
    pub fn from_name(arch: &str) -> Result<Family> {
        match arch {
            "llama" | "LlamaForCausalLM" => Ok(Family::Llama),
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Ok(Family::Gemma3),
            other => Err(LensError::UnsupportedArchitecture {
                arch: other.to_string(),
                supported: SUPPORTED.into(),
            }),
        }
    }

    /// Whether RMSNorm weights are stored as `w` and used as `1 + w` (Gemma).
    pub fn norm_plus_one(&self) -> bool {
        matches!(self, Family::Gemma3)
    }
}

/// Reads a JSON field as f64/usize with a typed error.
pub(crate) struct Json<'a> {
    pub v: &'a Value,
    pub what: &'a str,
}

impl Json<'_> {
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.v
            .get(key)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| LensError::Json {
                what: self.what.into(),
                detail: format!("missing integer field '{key}'"),
            })
    }
    pub fn usize_or(&self, key: &str, default: usize) -> usize {
        self.v
            .get(key)
            .and_then(Value::as_u64)
            .map_or(default, |x| x as usize)
    }
    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.v.get(key).and_then(Value::as_f64).unwrap_or(default)
    }
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.v.get(key).and_then(Value::as_f64)
    }
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.v.get(key).and_then(Value::as_bool).unwrap_or(default)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.v.get(key).and_then(Value::as_str)
    }
    pub fn opt_u32(&self, key: &str) -> Option<u32> {
        // eos_token_id may be a list; take the first
        match self.v.get(key) {
            Some(Value::Number(n)) => n.as_u64().map(|x| x as u32),
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as u32),
            _ => None,
        }
    }
}

fn hidden_act(j: &Json, key: &str, default: &str) -> Result<Activation> {
    let act = j.str(key).unwrap_or(default);
    match act {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(LensError::UnsupportedConfig {
            field: key.into(),
            value: other.into(),
            fix: "supported activations: silu, gelu, gelu_new, gelu_pytorch_tanh, relu".into(),
        }),
    }
}

fn rope_scaling_from(rs: &Value, what: &str) -> Result<Option<RopeScaling>> {
    let r = Json { v: rs, what };
    let kind = r.str("rope_type").or(r.str("type")).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: r.f64_or("factor", 1.0),
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: r.f64_or("factor", 8.0),
            low_freq_factor: r.f64_or("low_freq_factor", 1.0),
            high_freq_factor: r.f64_or("high_freq_factor", 4.0),
            original_max_position_embeddings: r.f64_or("original_max_position_embeddings", 8192.0),
        })),
        other => Err(LensError::UnsupportedConfig {
            field: "rope_type".into(),
            value: other.into(),
            fix: "supported: default, linear, llama3".into(),
        }),
    }
}

/// Rotary parameters from either config format: transformers 4 (`rope_theta`, `rope_scaling`,
/// `rope_local_base_freq`) or transformers 5 (`rope_parameters`, per layer type for Gemma 3).
/// Returns `(global base, global scaling, local base)`.
fn rope_params(j: &Json, default_base: f64) -> Result<(f64, Option<RopeScaling>, Option<f64>)> {
    if let Some(rp) = j.v.get("rope_parameters").filter(|v| v.is_object()) {
        let (global, local) = match rp.get("full_attention") {
            Some(g) => (g, rp.get("sliding_attention")),
            None => (rp, None),
        };
        let base = global
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(default_base);
        let scaling = rope_scaling_from(global, j.what)?;
        let local_base = local
            .and_then(|l| l.get("rope_theta"))
            .and_then(Value::as_f64);
        return Ok((base, scaling, local_base));
    }
    let scaling = match j.v.get("rope_scaling").filter(|v| !v.is_null()) {
        Some(rs) => rope_scaling_from(rs, j.what)?,
        None => None,
    };
    Ok((
        j.f64_or("rope_theta", default_base),
        scaling,
        j.opt_f64("rope_local_base_freq"),
    ))
}

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

/// A [`ModelConfig`] from an HF `config.json`.
///
/// # Errors
/// Unsupported architecture or field values, or missing fields.
pub fn config_from_hf(v: &Value, name: &str) -> Result<(Family, ModelConfig)> {
    let j = Json {
        v,
        what: "config.json",
    };
    let model_type = j
        .str("model_type")
        .ok_or_else(|| LensError::Json {
            what: "config.json".into(),
            detail: "missing 'model_type'".into(),
        })?
        .to_string();
    let family = Family::from_name(&model_type)?;
    let d_model = j.usize("hidden_size")?;
    let n_heads = j.usize("num_attention_heads")?;
    let n_layers = j.usize("num_hidden_layers")?;
    let d_head = j.usize_or("head_dim", d_model / n_heads);
    let n_kv_heads = j.usize_or("num_key_value_heads", n_heads);
    let default_base = if family == Family::Gemma3 {
        1_000_000.0
    } else {
        10_000.0
    };
    let (base, scaling, local_base) = rope_params(&j, default_base)?;
    let mut cfg = ModelConfig {
        architecture: model_type.clone(),
        name: name.to_string(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        d_head,
        d_mlp: j.usize("intermediate_size")?,
        d_vocab: j.usize("vocab_size")?,
        n_ctx: j.usize_or("max_position_embeddings", 2048),
        norm: NormKind::RmsNorm,
        norm_eps: j.f64_or("rms_norm_eps", 1e-6),
        positional: Positional::Rotary(RotaryConfig {
            dim: d_head,
            base,
            local_base: None,
            scaling,
        }),
        act: hidden_act(&j, "hidden_act", "silu")?,
        gated_mlp: true,
        qk_norm: false,
        post_norms: false,
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        layer_attention: vec![AttentionKind::Global; n_layers],
        embed_scale: None,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: false,
        bos_token_id: j.opt_u32("bos_token_id"),
        eos_token_id: j.opt_u32("eos_token_id"),
        pad_token_id: j.opt_u32("pad_token_id").unwrap_or(0),
        default_prepend_bos: true,
    };
    match family {
        // biases (attention_bias, mlp_bias) are read when the checkpoint has them
        Family::Llama => {}
        Family::Gemma3 => {
            cfg.act = hidden_act(&j, "hidden_activation", "gelu_pytorch_tanh")?;
            cfg.qk_norm = true;
            cfg.post_norms = true;
            cfg.tied_embeddings = j.bool_or("tie_word_embeddings", true);
            cfg.embed_scale = Some((d_model as f64).sqrt());
            cfg.attn_scale = 1.0 / j.f64_or("query_pre_attn_scalar", d_head as f64).sqrt();
            cfg.attn_softcap = j.opt_f64("attn_logit_softcapping");
            cfg.final_softcap = j.opt_f64("final_logit_softcapping");
            let window = j.usize_or("sliding_window", 4096);
            cfg.layer_attention = match v.get("layer_types").and_then(Value::as_array) {
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
                    .collect::<Result<Vec<_>>>()?,
                None => gemma3_layers(n_layers, j.usize_or("sliding_window_pattern", 6), window),
            };
            if let Positional::Rotary(r) = &mut cfg.positional {
                r.local_base = Some(local_base.unwrap_or(10_000.0));
            }
        }
    }
    cfg.validate()?;
    Ok((family, cfg))
}

fn norm(
    src: &mut dyn TensorSource,
    name: &str,
    plus_one: bool,
    dtype: DType,
    dev: &Device,
) -> Result<NormWeights> {
    let mut w = src.require(name)?.to_dtype(DType::F32)?;
    if plus_one {
        w = (w + 1.0)?;
    }
    let b = src.get(&name.replace(".weight", ".bias"))?;
    Ok(NormWeights {
        w: to_compute(w, dtype, dev)?,
        b: b.map(|b| to_compute(b, dtype, dev)).transpose()?,
    })
}

/// Maps a Llama-style checkpoint (Llama, Qwen, Gemma naming: `model.layers.{l}.self_attn.q_proj`)
/// into the canonical layout.
///
/// # Errors
/// Missing or mis-shaped tensors.
pub fn llama_like_weights(
    family: Family,
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let p1 = family.norm_plus_one();
    let get = |src: &mut dyn TensorSource, n: &str| -> Result<candle_core::Tensor> {
        to_compute(src.require(n)?, dtype, dev)
    };
    let w_e = get(src, "model.embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let pre = format!("model.layers.{l}");
        let opt = |src: &mut dyn TensorSource, n: String| -> Result<Option<candle_core::Tensor>> {
            src.get(&n)?.map(|t| to_compute(t, dtype, dev)).transpose()
        };
        let (ln1_post, ln2, ln2_post) = if cfg.post_norms {
            (
                Some(norm(
                    src,
                    &format!("{pre}.post_attention_layernorm.weight"),
                    p1,
                    dtype,
                    dev,
                )?),
                norm(
                    src,
                    &format!("{pre}.pre_feedforward_layernorm.weight"),
                    p1,
                    dtype,
                    dev,
                )?,
                Some(norm(
                    src,
                    &format!("{pre}.post_feedforward_layernorm.weight"),
                    p1,
                    dtype,
                    dev,
                )?),
            )
        } else {
            (
                None,
                norm(
                    src,
                    &format!("{pre}.post_attention_layernorm.weight"),
                    p1,
                    dtype,
                    dev,
                )?,
                None,
            )
        };
        let (q_norm, k_norm) = if cfg.qk_norm {
            let q = norm(
                src,
                &format!("{pre}.self_attn.q_norm.weight"),
                p1,
                dtype,
                dev,
            )?;
            let k = norm(
                src,
                &format!("{pre}.self_attn.k_norm.weight"),
                p1,
                dtype,
                dev,
            )?;
            (Some(q.w), Some(k.w))
        } else {
            (None, None)
        };
        layers.push(LayerWeights {
            ln1: norm(
                src,
                &format!("{pre}.input_layernorm.weight"),
                p1,
                dtype,
                dev,
            )?,
            ln1_post,
            ln2,
            ln2_post,
            w_q: get(src, &format!("{pre}.self_attn.q_proj.weight"))?,
            b_q: opt(src, format!("{pre}.self_attn.q_proj.bias"))?,
            w_k: get(src, &format!("{pre}.self_attn.k_proj.weight"))?,
            b_k: opt(src, format!("{pre}.self_attn.k_proj.bias"))?,
            w_v: get(src, &format!("{pre}.self_attn.v_proj.weight"))?,
            b_v: opt(src, format!("{pre}.self_attn.v_proj.bias"))?,
            q_norm,
            k_norm,
            w_o: get(src, &format!("{pre}.self_attn.o_proj.weight"))?,
            b_o: opt(src, format!("{pre}.self_attn.o_proj.bias"))?,
            w_in: get(src, &format!("{pre}.mlp.up_proj.weight"))?,
            b_in: opt(src, format!("{pre}.mlp.up_proj.bias"))?,
            w_gate: Some(get(src, &format!("{pre}.mlp.gate_proj.weight"))?),
            w_out: get(src, &format!("{pre}.mlp.down_proj.weight"))?,
            b_out: opt(src, format!("{pre}.mlp.down_proj.bias"))?,
        });
    }
    let ln_final = norm(src, "model.norm.weight", p1, dtype, dev)?;
    let w_u = if cfg.tied_embeddings {
        w_e.clone()
    } else {
        match src.get("lm_head.weight")? {
            Some(t) => to_compute(t, dtype, dev)?,
            // Some checkpoints tie without saying so.
            None => w_e.clone(),
        }
    };
    let w = Weights {
        w_e,
        w_pos: None,
        layers,
        ln_final,
        w_u,
        b_u: None,
    };
    w.validate(cfg)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config(family: &str) -> Value {
        let p = format!(
            "{}/tests/fixtures/tiny/{family}/config.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn transformers4_and_5_rope_formats_agree() {
        let v5 = tiny_config("llama");
        let mut v4 = v5.clone();
        let rp = v4
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        v4["rope_theta"] = rp["rope_theta"].clone();
        v4["rope_scaling"] = rp.clone();
        let (_, a) = config_from_hf(&v5, "x").unwrap();
        let (_, b) = config_from_hf(&v4, "x").unwrap();
        assert_eq!(a, b);
        let Positional::Rotary(r) = &a.positional else {
            panic!()
        };
        assert_eq!(r.base, 500000.0);
        assert!(matches!(r.scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));

        let g5 = tiny_config("gemma3");
        let mut g4 = g5.clone();
        let rp = g4
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        g4["rope_theta"] = rp["full_attention"]["rope_theta"].clone();
        g4["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"].clone();
        let (_, a) = config_from_hf(&g5, "x").unwrap();
        let (_, b) = config_from_hf(&g4, "x").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.layer_attention,
            vec![
                AttentionKind::Local { window: 4 },
                AttentionKind::Local { window: 4 },
                AttentionKind::Global
            ]
        );
        assert!((a.attn_scale - 1.0 / 24f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn gemma3_pattern_is_every_sixth_global() {
        let kinds = gemma3_layers(18, 6, 512);
        let globals: Vec<usize> = (0..18)
            .filter(|&l| kinds[l] == AttentionKind::Global)
            .collect();
        assert_eq!(globals, vec![5, 11, 17]);
    }
}
