//! Architecture families: each is a config reader plus a mapping from its Hugging Face tensor
//! names into the canonical [`Weights`]. No family has its own forward pass: the differences
//! between GPT-2, GPT-J, GPT-Neo, GPT-NeoX, Llama, Mistral, Phi, OLMo 2, Qwen and Gemma are
//! switches in [`ModelConfig`].

mod gpt2;
mod gpt_neo;
mod gptj;
mod llama;
mod moe;
mod neox;
mod phi;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::engine::config::{Activation, ModelConfig, RopeScaling};
use crate::engine::weights::{to_compute, NormWeights, TensorSource, Weights};
use crate::error::{LensError, Result};

pub(crate) use llama::gemma3_layers;

/// The families with a weight mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// GPT-2 (all sizes): LayerNorm, learned positions, Conv1D weights, tied unembedding.
    Gpt2,
    /// GPT-J: parallel attention and MLP, partial interleaved rotary, unembedding bias.
    GptJ,
    /// GPT-NeoX / Pythia: parallel attention and MLP with a norm each, partial rotate-half
    /// rotary, fused per-head q/k/v.
    GptNeoX,
    /// GPT-Neo: GPT-2 with alternating global/local attention and unscaled scores.
    GptNeo,
    /// Llama 2/3 and look-alikes (SmolLM2).
    Llama,
    /// Mistral: Llama with a sliding window on every layer (when `sliding_window` is set).
    Mistral,
    /// Mixtral: Mistral with a sparse mixture of experts (top-k renormalised).
    Mixtral,
    /// OLMo 2: post-norms only, q/k RMSNorm over all heads.
    Olmo2,
    /// Phi-1, 1.5, 2: one LayerNorm, parallel attention and MLP, partial rotary, biases.
    Phi,
    /// Phi-3 and Phi-4-mini: Llama with fused `qkv_proj` / `gate_up_proj`, sliding window,
    /// partial rotary.
    Phi3,
    /// Qwen 2 / 2.5: q/k/v biases.
    Qwen2,
    /// Qwen 2 MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen 2 with routed experts and a gated
    /// shared expert.
    Qwen2Moe,
    /// Qwen 3: per-head q/k RMSNorm.
    Qwen3,
    /// Qwen 3 MoE (Qwen3-30B-A3B, 235B-A22B): Qwen 3 with routed experts.
    Qwen3Moe,
    /// Gemma 1: `(1 + w)` RMSNorm, gated GELU, scaled embeddings.
    Gemma,
    /// Gemma 2: Gemma plus post-norms, softcaps and alternating sliding windows.
    Gemma2,
    /// Gemma 3 (text): Gemma 2 without softcaps, plus q/k norms and local/global RoPE bases.
    Gemma3,
}

/// Names of the supported HF `model_type`s, for error messages.
pub const SUPPORTED: &str =
    "gpt2, gptj, gpt_neo, gpt_neox, llama, mistral, mixtral, phi, phi3, olmo2, qwen2, qwen2_moe, qwen3, qwen3_moe, gemma, gemma2, gemma3_text (GGUF: llama, gemma3)";

impl Family {
    /// The family of an HF `model_type` or GGUF `general.architecture`.
    ///
    /// # Errors
    /// [`LensError::UnsupportedArchitecture`].
    pub fn from_name(arch: &str) -> Result<Family> {
        Ok(match arch {
            "gpt2" => Family::Gpt2,
            "gptj" => Family::GptJ,
            "gpt_neox" => Family::GptNeoX,
            "gpt_neo" => Family::GptNeo,
            "phi" => Family::Phi,
            "phi3" => Family::Phi3,
            "olmo2" => Family::Olmo2,
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "mixtral" => Family::Mixtral,
            "qwen2_moe" => Family::Qwen2Moe,
            "qwen3_moe" => Family::Qwen3Moe,
            "gemma" => Family::Gemma,
            "gemma2" => Family::Gemma2,
            "gemma3" | "gemma3_text" => Family::Gemma3,
            other => {
                return Err(LensError::UnsupportedArchitecture {
                    arch: other.to_string(),
                    supported: format!("{SUPPORTED}{}", closest(other)),
                })
            }
        })
    }

    /// Every supported family, in the order `lens models` lists them.
    pub const ALL: [Family; 17] = [
        Family::Gpt2,
        Family::GptJ,
        Family::GptNeo,
        Family::GptNeoX,
        Family::Llama,
        Family::Mistral,
        Family::Mixtral,
        Family::Phi,
        Family::Phi3,
        Family::Olmo2,
        Family::Qwen2,
        Family::Qwen2Moe,
        Family::Qwen3,
        Family::Qwen3Moe,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
    ];

    /// The HF `model_type` this family reads.
    pub fn model_type(&self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gptj",
            Family::GptNeo => "gpt_neo",
            Family::GptNeoX => "gpt_neox",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Mixtral => "mixtral",
            Family::Phi => "phi",
            Family::Phi3 => "phi3",
            Family::Olmo2 => "olmo2",
            Family::Qwen2 => "qwen2",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
        }
    }

    /// A registered alias of this family (see `lens models`).
    pub fn example_alias(&self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gpt-j-6b",
            Family::GptNeo => "gpt-neo-125m",
            Family::GptNeoX => "pythia-70m",
            Family::Llama => "smollm2-135m",
            Family::Mistral => "mistral-7b",
            Family::Mixtral => "mixtral-8x7b",
            Family::Phi => "phi-2",
            Family::Phi3 => "phi-3-mini",
            Family::Olmo2 => "olmo-2-1b",
            Family::Qwen2 => "qwen2.5-0.5b",
            Family::Qwen2Moe => "qwen1.5-moe-a2.7b",
            Family::Qwen3 => "qwen3-0.6b",
            Family::Qwen3Moe => "qwen3-30b-a3b",
            Family::Gemma => "gemma-2b-it",
            Family::Gemma2 => "gemma-2-2b-it",
            Family::Gemma3 => "gemma-3-270m",
        }
    }

    /// Whether RMSNorm weights are stored as `w` and used as `1 + w` (Gemma).
    pub fn norm_plus_one(&self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }
}

/// A note naming the closest supported family for well-known unsupported `model_type`s.
fn closest(arch: &str) -> &'static str {
    match arch {
        "t5" | "mt5" | "umt5" | "bart" | "mbart" | "pegasus" | "marian" | "whisper" => {
            ". This is an encoder-decoder model; Candlelens runs decoder-only language models (closest: gpt2, llama)"
        }
        "bert" | "roberta" | "deberta" | "deberta-v2" | "distilbert" | "electra" | "modernbert" => {
            ". This is an encoder-only model; Candlelens runs decoder-only language models (closest: gpt2)"
        }
        "clip" | "siglip" | "vit" | "llava" | "paligemma" | "idefics3" | "qwen2_vl" => {
            ". This is a vision or multimodal checkpoint; load its text model instead (e.g. gemma3_text, qwen2)"
        }
        "deepseek_v2" | "deepseek_v3" | "olmoe" | "granitemoe" | "dbrx" => {
            ". This mixture of experts is not supported yet (closest: mixtral, qwen3_moe)"
        }
        "phimoe" => ". Phi-3.5-MoE is not supported yet (closest: phi3)",
        "olmo" => ". OLMo 1 is not supported (closest: olmo2, llama)",
        _ => "",
    }
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
    let model_type = j.str("model_type").ok_or_else(|| {
        let architectures = v
            .get("architectures")
            .map(|a| format!(" (it lists architectures {a})"))
            .unwrap_or_default();
        LensError::Json {
            what: "config.json".into(),
            detail: format!(
                "missing 'model_type'{architectures}; add the field with one of the supported types: {SUPPORTED}"
            ),
        }
    })?;
    let family = Family::from_name(model_type)?;
    let cfg = match family {
        Family::Gpt2 => gpt2::config(&j, name)?,
        Family::GptJ => gptj::config(&j, name)?,
        Family::GptNeoX => neox::config(&j, name)?,
        Family::GptNeo => gpt_neo::config(&j, name)?,
        Family::Phi => phi::config(&j, name)?,
        _ => llama::config(family, &j, name)?,
    };
    cfg.validate()?;
    Ok((family, cfg))
}

/// Reads a checkpoint's weights into the canonical layout.
///
/// # Errors
/// Missing or mis-shaped tensors.
pub fn load_weights(
    family: Family,
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let w = match family {
        Family::Gpt2 => gpt2::weights(cfg, src, dtype, dev)?,
        Family::GptJ => gptj::weights(cfg, src, dtype, dev)?,
        Family::GptNeoX => neox::weights(cfg, src, dtype, dev)?,
        Family::GptNeo => gpt_neo::weights(cfg, src, dtype, dev)?,
        Family::Phi => phi::weights(cfg, src, dtype, dev)?,
        _ => llama::weights(family, cfg, src, dtype, dev)?,
    };
    w.validate(cfg)?;
    Ok(w)
}

/// A required tensor in the compute dtype.
fn get(src: &mut dyn TensorSource, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
    to_compute(src.require(name)?, dtype, dev)
}

/// An optional tensor in the compute dtype.
fn opt(
    src: &mut dyn TensorSource,
    name: &str,
    dtype: DType,
    dev: &Device,
) -> Result<Option<Tensor>> {
    src.get(name)?
        .map(|t| to_compute(t, dtype, dev))
        .transpose()
}

/// A norm's weight (and `.bias` if present); `plus_one` adds Gemma's 1.
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
    Ok(NormWeights {
        w: to_compute(w, dtype, dev)?,
        b: opt(src, &name.replace(".weight", ".bias"), dtype, dev)?,
    })
}

/// Reads a JSON field as f64/usize with a typed error.
pub(crate) struct Json<'a> {
    pub v: &'a Value,
    pub what: &'a str,
}

/// The largest value a model dimension may take (layers and heads far below it; widths and
/// vocabularies too).
pub(crate) const MAX_DIM: usize = 1 << 24;

/// The largest number of layers or heads (the largest public models have ~130 layers and
/// 128 heads): per-layer tables are allocated from these counts before any weight is read.
pub(crate) const MAX_COUNT: usize = 1 << 12;

/// Whether `field` counts layers or heads (bounded by [`MAX_COUNT`]) rather than a width.
fn is_count(field: &str) -> bool {
    field.contains("layer")
        || field.contains("block_count")
        || field.contains("head_count")
        || field.contains("attention_heads")
        || field.contains("key_value_heads")
        || field == "n_head"
}

/// `value` as a model dimension of `field`: positive and at most [`MAX_DIM`] ([`MAX_COUNT`]
/// for layer and head counts).
///
/// # Errors
/// [`LensError::UnsupportedConfig`] naming the field.
pub(crate) fn check_dim(field: &str, value: usize) -> Result<usize> {
    let max = if is_count(field) { MAX_COUNT } else { MAX_DIM };
    if value == 0 || value > max {
        return Err(LensError::UnsupportedConfig {
            field: field.to_string(),
            value: value.to_string(),
            fix: format!(
                "this must be between 1 and {max}; the config is damaged or not a model's"
            ),
        });
    }
    Ok(value)
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
    /// A model dimension (layers, heads, widths, vocabulary): a positive integer below a bound
    /// no real checkpoint reaches, checked before anything divides by it or allocates from it.
    pub fn dim(&self, key: &str) -> Result<usize> {
        check_dim(key, self.usize(key)?)
    }
    /// [`Self::dim`] with a default for an absent key.
    pub fn dim_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.dim(key),
        }
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

pub(crate) fn hidden_act(j: &Json, key: &str, default: &str) -> Result<Activation> {
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
pub(crate) fn rope_params(
    j: &Json,
    default_base: f64,
) -> Result<(f64, Option<RopeScaling>, Option<f64>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::{AttentionKind, Positional, RopeScaling};

    fn tiny_config(family: &str) -> Value {
        let p = format!(
            "{}/tests/fixtures/tiny/{family}/config.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn mistral_slides_on_every_layer_unless_the_window_is_null() {
        let mut v = tiny_config("mistral");
        let (f, a) = config_from_hf(&v, "x").unwrap();
        assert_eq!(f, Family::Mistral);
        assert_eq!(
            a.layer_attention,
            vec![AttentionKind::Local { window: 5 }; 2]
        );
        v["sliding_window"] = Value::Null;
        let (_, b) = config_from_hf(&v, "x").unwrap();
        assert_eq!(b.layer_attention, vec![AttentionKind::Global; 2]);
    }

    #[test]
    fn every_family_reads_its_model_type_and_has_a_registered_example() {
        for f in Family::ALL {
            assert_eq!(Family::from_name(f.model_type()).unwrap(), f);
            assert!(
                SUPPORTED.contains(f.model_type()),
                "{f:?} missing from SUPPORTED"
            );
            assert!(
                crate::load::registry::lookup(f.example_alias()).is_some(),
                "{f:?}: {} is not registered",
                f.example_alias()
            );
        }
    }

    #[test]
    fn unsupported_types_name_the_closest_family() {
        for (t, says) in [
            ("t5", "encoder-decoder"),
            ("bert", "encoder-only"),
            ("deepseek_v3", "closest: mixtral"),
            ("llava", "text model"),
        ] {
            let e = Family::from_name(t).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("gpt_neox"), "{t}: {e}");
        }
    }

    #[test]
    fn released_pythia_configs_give_the_partial_rotary() {
        // the hub's Pythia configs predate rope_parameters: rotary_pct and rotary_emb_base
        let v5 = tiny_config("neox");
        let mut v4 = v5.clone();
        v4.as_object_mut().unwrap().remove("rope_parameters");
        v4["rotary_pct"] = 0.25.into();
        v4["rotary_emb_base"] = 10000.into();
        let (fa, a) = config_from_hf(&v5, "x").unwrap();
        let (_, b) = config_from_hf(&v4, "x").unwrap();
        assert_eq!(fa, Family::GptNeoX);
        assert_eq!(a, b);
        let Positional::Rotary(r) = &a.positional else {
            panic!()
        };
        assert_eq!((r.dim, r.interleaved, r.base), (4, false, 10000.0));
        assert!(a.parallel_attn_mlp && a.parallel_ln2);
        // a sequential NeoX has neither
        v4["use_parallel_residual"] = false.into();
        let (_, c) = config_from_hf(&v4, "x").unwrap();
        assert!(!c.parallel_attn_mlp && !c.parallel_ln2);
        v4["rotary_pct"] = 0.0.into();
        assert!(config_from_hf(&v4, "x").is_err());
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
