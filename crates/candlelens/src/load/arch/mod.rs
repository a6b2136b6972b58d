//! Architecture families: each is a config reader plus a mapping from its Hugging Face tensor
//! names into the canonical [`Weights`]. No family has its own forward pass: the differences
//! between GPT-2, GPT-J, GPT-Neo, GPT-NeoX, Llama, Mistral, Phi, OLMo 2, Qwen and Gemma are
//! switches in [`ModelConfig`].

mod gpt2;
mod gpt_neo;
mod gptj;
mod json;
mod llama;
mod moe;
mod neox;
mod phi;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::engine::config::ModelConfig;
use crate::engine::weights::{to_compute, LayerWeights, NormWeights, TensorSource, Weights};
use crate::error::{LensError, Result};

pub(crate) use json::{check_dim, hidden_act, rope_params, DimKeys, Json, MlpWidth};
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
    let j = Json::new(v, "config.json");
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
        Family::Gpt2 => gpt2::config(&j, name),
        Family::GptJ => gptj::config(&j, name),
        Family::GptNeoX => neox::config(&j, name),
        Family::GptNeo => gpt_neo::config(&j, name),
        Family::Phi => phi::config(&j, name),
        _ => llama::config(family, &j, name),
    };
    // a field of the wrong type is named before anything it caused downstream
    j.finish()?;
    let cfg = cfg?;
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
    let ck = Checkpoint {
        cfg,
        src: &mut *src,
        dtype,
        dev,
    };
    let w = match family {
        Family::Gpt2 => gpt2::weights(ck)?,
        Family::GptJ => gptj::weights(ck)?,
        Family::GptNeoX => neox::weights(ck)?,
        Family::GptNeo => gpt_neo::weights(ck)?,
        Family::Phi => phi::weights(ck)?,
        _ => llama::weights(family, ck)?,
    };
    w.validate(cfg)?;
    super::layers::check_all_used(&src.unread(), &cfg.architecture, cfg.tied_embeddings)?;
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

/// The unembedding `[d_vocab, d_model]`: the token embedding when the config ties them, else
/// the checkpoint's `name`.
fn unembedding(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    w_e: &Tensor,
    name: &str,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    if cfg.tied_embeddings {
        Ok(w_e.clone())
    } else {
        get(src, name, dtype, dev)
    }
}

/// A checkpoint being read into a model's weights: the config it was read with, its tensors,
/// and the dtype and device they are converted to.
pub(super) struct Checkpoint<'a> {
    pub cfg: &'a ModelConfig,
    pub src: &'a mut dyn TensorSource,
    pub dtype: DType,
    pub dev: &'a Device,
}

/// Where a family keeps the tensors around its blocks.
struct ModelNames<'a> {
    /// The token embedding.
    embed: &'a str,
    /// The learned positions, where the family has them.
    pos: Option<&'a str>,
    /// The final norm's weight (its `.bias` read where present).
    ln_final: &'a str,
    /// The unembedding, read unless the config ties it to the embedding.
    unembed: &'a str,
    /// The unembedding's bias, where the family has one.
    unembed_bias: Option<&'a str>,
}

impl<'a> ModelNames<'a> {
    /// Names without learned positions or an unembedding bias.
    fn new(embed: &'a str, ln_final: &'a str, unembed: &'a str) -> Self {
        ModelNames {
            embed,
            pos: None,
            ln_final,
            unembed,
            unembed_bias: None,
        }
    }
}

/// A model's weights: the embeddings and final norm and unembedding under `names`, and
/// `block(src, l)` for every layer.
fn read_model(
    ck: Checkpoint,
    names: &ModelNames,
    mut block: impl FnMut(&mut dyn TensorSource, usize) -> Result<LayerWeights>,
) -> Result<Weights> {
    let (cfg, src, dtype, dev) = (ck.cfg, ck.src, ck.dtype, ck.dev);
    let w_e = get(src, names.embed, dtype, dev)?;
    let w_pos = match names.pos {
        Some(p) => Some(get(src, p, dtype, dev)?),
        None => None,
    };
    let layers = (0..cfg.n_layers)
        .map(|l| block(&mut *src, l))
        .collect::<Result<Vec<_>>>()?;
    let w_u = unembedding(cfg, src, &w_e, names.unembed, dtype, dev)?;
    let b_u = match names.unembed_bias {
        Some(b) => opt(src, b, dtype, dev)?,
        None => None,
    };
    Ok(Weights {
        w_e,
        w_pos,
        layers,
        ln_final: norm(src, names.ln_final, false, dtype, dev)?,
        w_u,
        b_u,
    })
}

/// A block's tensor names below its layer's prefix, for the families whose blocks have
/// separate q/k/v/o projections and a two-matrix MLP: each `{name}.weight`, with `{name}.bias`
/// where the checkpoint has one, and the pre-norms the block has.
struct BlockNames<'a> {
    /// The q, k, v and output projections.
    attn: [&'a str; 4],
    /// The MLP's up and down projections.
    mlp: [&'a str; 2],
    /// The attention's pre-norm (the MLP's too in a parallel block without its own).
    ln1: &'a str,
    /// The MLP's own pre-norm, where it has one.
    ln2: Option<&'a str>,
}

/// The block under `prefix` (`transformer.h.3.`) named by `names`.
fn read_block(
    src: &mut dyn TensorSource,
    prefix: &str,
    names: &BlockNames,
    dtype: DType,
    dev: &Device,
) -> Result<LayerWeights> {
    let [q, k, v, o] = names.attn;
    let [up, down] = names.mlp;
    let mut weight = |s: &str| get(src, &format!("{prefix}{s}.weight"), dtype, dev);
    let (w_q, w_k, w_v, w_o) = (weight(q)?, weight(k)?, weight(v)?, weight(o)?);
    let (w_in, w_out) = (weight(up)?, weight(down)?);
    let mut bias = |s: &str| opt(src, &format!("{prefix}{s}.bias"), dtype, dev);
    let (b_q, b_k, b_v, b_o) = (bias(q)?, bias(k)?, bias(v)?, bias(o)?);
    let (b_in, b_out) = (bias(up)?, bias(down)?);
    let ln1 = norm(
        src,
        &format!("{prefix}{}.weight", names.ln1),
        false,
        dtype,
        dev,
    )?;
    let ln2 = match names.ln2 {
        Some(n) => Some(norm(
            src,
            &format!("{prefix}{n}.weight"),
            false,
            dtype,
            dev,
        )?),
        None => None,
    };
    Ok(LayerWeights {
        ln1: Some(ln1),
        ln2,
        b_q,
        b_k,
        b_v,
        b_o,
        b_in,
        b_out,
        ..LayerWeights::projections(w_q, w_k, w_v, w_o, w_in, w_out)
    })
}

/// `cfg` with GPT-2's BPE special tokens as the families on its tokenizer declare them:
/// `<|endoftext|>` (`endoftext`, 50256 for GPT-2's vocabulary) as BOS and EOS unless the config
/// names others, padding with the EOS token (or the config's `pad_token_id` where `pad_key`
/// says so), and BOS prepended before every prompt, as TransformerLens does.
fn endoftext_tokens(j: &Json, cfg: ModelConfig, endoftext: u32, pad_key: &str) -> ModelConfig {
    ModelConfig {
        bos_token_id: j.opt_u32("bos_token_id").or(Some(endoftext)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(endoftext)),
        pad_token_id: j.opt_u32(pad_key).unwrap_or(endoftext),
        default_prepend_bos: true,
        ..cfg
    }
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
        // a transformers-5 config, and the same without its rope_parameters
        let v4_of = |name: &str| {
            let v5 = tiny_config(name);
            let mut v4 = v5.clone();
            let rp = v4
                .as_object_mut()
                .unwrap()
                .remove("rope_parameters")
                .unwrap();
            (v5, v4, rp)
        };
        let (v5, mut v4, rp) = v4_of("llama");
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

        let (g5, mut g4, rp) = v4_of("gemma3");
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
