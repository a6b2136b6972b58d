//! Reading SAEs and transcoders from disk: SAELens's folder format (`cfg.json` +
//! `sae_weights.safetensors`, the version-6 layout with `metadata.hook_name` and the earlier
//! flat one), and Gemma Scope's raw `params.npz` / `params.safetensors`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::engine::config::ModelConfig;
use crate::engine::hooks::HookPoint;
use crate::error::{LensError, Result};

use super::{Architecture, Normalize, Sae};

/// The architectures this loader runs, as SAELens names them.
const SUPPORTED: &str = "standard, jumprelu, topk, transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder";

fn bad(path: &Path, detail: impl Into<String>) -> LensError {
    LensError::BadData {
        what: format!("SAE folder {}", path.display()),
        detail: detail.into(),
    }
}

/// A hook name as SAELens writes it, in Candlelens's points. SAELens's `blocks.{l}.mlp.hook_in`
/// and Gemma Scope 2's `blocks.{l}.hook_mlp_in` are the MLP's normalised input.
fn hook_point(name: &str) -> Result<HookPoint> {
    if let Some(rest) = name.strip_prefix("blocks.") {
        if let Some((l, suffix)) = rest.split_once('.') {
            if let (Ok(l), "mlp.hook_in" | "hook_mlp_in") = (l.parse::<usize>(), suffix) {
                return Ok(HookPoint::Ln2Normalized(l));
            }
        }
    }
    HookPoint::parse(name)
}

/// The weights of a folder's tensor file, by name, in f32 on the CPU.
fn tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let out = if path.extension().and_then(|e| e.to_str()) == Some("npz") {
        crate::util::npz::check(path)?;
        Tensor::read_npz(path)
            .map_err(|e| bad(path, format!("cannot read {}: {e}", path.display())))?
    } else {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(path, format!("cannot read {}: {e}", path.display())))?
            .into_iter()
            .collect()
    };
    out.into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect()
}

/// Picks a tensor by any of `names` (case-insensitive).
fn take(ts: &mut Vec<(String, Tensor)>, names: &[&str]) -> Option<Tensor> {
    let i = ts
        .iter()
        .position(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))?;
    Some(ts.swap_remove(i).1)
}

fn need(ts: &mut Vec<(String, Tensor)>, name: &str, file: &Path) -> Result<Tensor> {
    take(ts, &[name]).ok_or_else(|| {
        bad(
            file,
            format!(
                "{} has no tensor '{name}' (it has: {})",
                file.display(),
                ts.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

impl Sae {
    /// Loads an SAE or transcoder from a folder: SAELens's format (`cfg.json` and
    /// `sae_weights.safetensors`, as `SAE.save_model` writes it), or Gemma Scope 2's raw
    /// folder (`config.json` and `params.safetensors`). For Gemma Scope 1's `params.npz`,
    /// which names no hook point, use [`Sae::load_gemma_scope`].
    ///
    /// # Errors
    /// [`LensError::MissingFile`] for a folder without those files; [`LensError::BadData`] for
    /// a config or tensor that does not fit; [`LensError::UnsupportedConfig`] for another
    /// architecture; [`LensError::UnknownHook`] for a hook name Candlelens does not have.
    pub fn load(dir: impl AsRef<Path>) -> Result<Sae> {
        Self::load_with(dir.as_ref(), None)
    }

    /// [`Sae::load`] with a release's `config_overrides` laid over `cfg.json`'s fields.
    pub(crate) fn load_with(dir: &Path, overrides: Option<&Value>) -> Result<Sae> {
        let cfg_path = dir.join("cfg.json");
        if !cfg_path.exists() {
            if dir.join("params.safetensors").exists() && dir.join("config.json").exists() {
                return Self::load_gemma_scope_2(dir);
            }
            return Err(LensError::MissingFile {
                path: cfg_path.clone(),
                fix: "an SAELens SAE folder holds cfg.json and sae_weights.safetensors (SAE.save_model writes them); for Gemma Scope's params.npz use Sae::load_gemma_scope(dir, hook)".into(),
            });
        }
        let mut cfg =
            crate::util::fs::read_json(&cfg_path, "an SAELens SAE folder holds cfg.json")?;
        if let (Some(Value::Object(o)), Value::Object(c)) = (overrides, &mut cfg) {
            for (k, v) in o {
                c.insert(k.clone(), v.clone());
            }
        }
        let meta = cfg.get("metadata").cloned().unwrap_or(Value::Null);
        let field = |k: &str| -> Option<&Value> {
            cfg.get(k)
                .filter(|v| !v.is_null())
                .or_else(|| meta.get(k).filter(|v| !v.is_null()))
        };
        let hook_name = field("hook_name")
            .or_else(|| field("hook_point"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(dir, "cfg.json names no hook point (metadata.hook_name, or hook_name before SAELens 6)"))?;
        let hook = hook_point(hook_name)?;
        let hook_out = match field("hook_name_out").and_then(Value::as_str) {
            Some(h) => Some(hook_point(h)?),
            None => None,
        };
        let arch = field("architecture")
            .and_then(Value::as_str)
            .unwrap_or("standard");
        let act_fn = field("activation_fn_str")
            .or_else(|| field("activation_fn"))
            .and_then(Value::as_str)
            .unwrap_or("relu");
        let k_of = |v: Option<&Value>| v.and_then(Value::as_u64).map(|k| k as usize);
        let architecture = match arch {
            "standard" | "transcoder" | "skip_transcoder" if act_fn == "topk" => {
                let k = k_of(field("activation_fn_kwargs").and_then(|v| v.get("k"))).ok_or_else(
                    || {
                        bad(
                            dir,
                            "activation_fn_str is topk but activation_fn_kwargs has no k",
                        )
                    },
                )?;
                Architecture::TopK(k)
            }
            "standard" | "transcoder" | "skip_transcoder" => Architecture::Relu,
            "jumprelu" | "jumprelu_transcoder" | "jumprelu_skip_transcoder" => {
                Architecture::JumpRelu
            }
            "topk" => Architecture::TopK(k_of(field("k")).unwrap_or(100)),
            other => {
                return Err(LensError::UnsupportedConfig {
                    field: "architecture".into(),
                    value: other.to_string(),
                    fix: format!("Candlelens runs {SUPPORTED}"),
                })
            }
        };
        if act_fn != "relu" && act_fn != "topk" {
            return Err(LensError::UnsupportedConfig {
                field: "activation_fn".into(),
                value: act_fn.to_string(),
                fix: "Candlelens runs SAEs with ReLU, JumpReLU or TopK features".into(),
            });
        }
        match field("reshape_activations").and_then(Value::as_str) {
            None | Some("none") => {}
            Some("hook_z") if matches!(hook, HookPoint::Z(_)) => {}
            Some(other) => {
                return Err(LensError::UnsupportedConfig {
                    field: "reshape_activations".into(),
                    value: other.to_string(),
                    fix: format!("Candlelens flattens heads (hook_z) only for SAEs on blocks.L.attn.hook_z; this one reads {hook}"),
                })
            }
        }
        let mut notes = Vec::new();
        let normalize = match field("normalize_activations") {
            None | Some(Value::Bool(false)) => Normalize::None,
            Some(Value::Bool(true)) => {
                notes.push("normalize_activations: expected_average_only_in runs unscaled, as in SAELens (no scaling factor was folded into the weights)".into());
                Normalize::None
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => Normalize::None,
                "expected_average_only_in" => {
                    notes.push("normalize_activations: expected_average_only_in runs unscaled, as in SAELens (no scaling factor was folded into the weights)".into());
                    Normalize::None
                }
                "constant_norm_rescale" => Normalize::ConstantNormRescale,
                "layer_norm" => Normalize::LayerNorm,
                other => return Err(LensError::UnsupportedConfig {
                    field: "normalize_activations".into(),
                    value: other.to_string(),
                    fix: "use none, expected_average_only_in, constant_norm_rescale or layer_norm"
                        .into(),
                }),
            },
            Some(other) => {
                return Err(bad(
                    dir,
                    format!("normalize_activations = {other} is not a string"),
                ))
            }
        };
        // TransformerLens's center_writing_weights (GPT-2 SAEs trained on it) makes every
        // residual vector mean-zero; the SAE reads the centred activation
        let center_input = field("model_from_pretrained_kwargs")
            .and_then(|k| k.get("center_writing_weights"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if center_input {
            notes.push("trained on TransformerLens with center_writing_weights: the SAE reads the activation minus its mean over d_model".into());
        }
        let is_transcoder = arch.contains("transcoder");
        let apply_b_dec_to_input = field("apply_b_dec_to_input")
            .and_then(Value::as_bool)
            .unwrap_or(!is_transcoder);
        let file = dir.join("sae_weights.safetensors");
        if !file.exists() {
            return Err(LensError::MissingFile {
                path: file.clone(),
                fix: "an SAELens SAE folder holds cfg.json and sae_weights.safetensors".into(),
            });
        }
        let mut ts = tensors(&file)?;
        let mut threshold = take(&mut ts, &["threshold"]);
        if threshold.is_none() {
            threshold = take(&mut ts, &["log_threshold"])
                .map(|t| t.exp())
                .transpose()?;
        }
        if let Some(sf) = take(&mut ts, &["scaling_factor", "finetuning_scaling_factor"]) {
            let off = (sf - 1.0)?.abs()?.max_all()?.to_scalar::<f32>()?;
            if off > 0.0 {
                return Err(LensError::UnsupportedConfig {
                    field: "scaling_factor".into(),
                    value: "not all ones".into(),
                    fix: "fold the fine-tuning scaling factor into W_dec (W_dec * scaling_factor[:, None]) before loading".into(),
                });
            }
        }
        let sae = Sae {
            hook,
            hook_out,
            architecture,
            normalize,
            apply_b_dec_to_input,
            w_enc: need(&mut ts, "W_enc", &file)?,
            b_enc: need(&mut ts, "b_enc", &file)?,
            w_dec: need(&mut ts, "W_dec", &file)?,
            b_dec: need(&mut ts, "b_dec", &file)?,
            threshold,
            w_skip: take(&mut ts, &["W_skip"]),
            center_input,
            source: dir.display().to_string(),
            notes,
        };
        sae.validate()?;
        for (k, want) in [("d_in", sae.d_in()), ("d_sae", sae.d_sae())] {
            if let Some(n) = field(k).and_then(Value::as_u64) {
                if n as usize != want {
                    return Err(bad(
                        dir,
                        format!("cfg.json says {k} = {n} but the weights have {want}"),
                    ));
                }
            }
        }
        Ok(sae)
    }

    /// Loads a Gemma Scope (1) SAE from its raw folder — `params.npz` with `W_enc`, `W_dec`,
    /// `b_enc`, `b_dec`, `threshold` — reading at `hook` (e.g. `blocks.12.hook_resid_post` for
    /// the `res` releases, `blocks.12.hook_mlp_out` for `mlp`). JumpReLU, no `b_dec`
    /// subtraction, no normalisation.
    ///
    /// # Errors
    /// As [`Sae::load`].
    pub fn load_gemma_scope(dir: impl AsRef<Path>, hook: &str) -> Result<Sae> {
        let dir = dir.as_ref();
        let file = ["params.npz", "params.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| LensError::MissingFile {
                path: dir.join("params.npz"),
                fix: "a Gemma Scope folder holds params.npz (or params.safetensors)".into(),
            })?;
        Self::jumprelu_from(&file, hook_point(hook)?, None, dir)
    }

    /// Gemma Scope 2's raw folder: `config.json` names the HF hook points.
    fn load_gemma_scope_2(dir: &Path) -> Result<Sae> {
        let path = dir.join("config.json");
        let cfg = crate::util::fs::read_json(&path, "a Gemma Scope 2 folder holds config.json")?;
        let point = |k: &str| -> Result<Option<HookPoint>> {
            let Some(name) = cfg.get(k).and_then(Value::as_str) else {
                return Ok(None);
            };
            hf_hook_point(name).map(Some).ok_or_else(|| bad(dir, format!("{k} = {name} is not a hook point Candlelens maps (model.layers.L.output, .pre_feedforward_layernorm.output, .post_feedforward_layernorm.output)")))
        };
        let hook = point("hf_hook_point_in")?
            .ok_or_else(|| bad(dir, "config.json has no hf_hook_point_in"))?;
        let out = point("hf_hook_point_out")?.filter(|o| *o != hook);
        Self::jumprelu_from(&dir.join("params.safetensors"), hook, out, dir)
    }

    fn jumprelu_from(
        file: &Path,
        hook: HookPoint,
        hook_out: Option<HookPoint>,
        dir: &Path,
    ) -> Result<Sae> {
        let mut ts = tensors(file)?;
        let sae = Sae {
            hook,
            hook_out,
            architecture: Architecture::JumpRelu,
            normalize: Normalize::None,
            apply_b_dec_to_input: false,
            w_enc: need(&mut ts, "W_enc", file)?,
            b_enc: need(&mut ts, "b_enc", file)?,
            w_dec: need(&mut ts, "W_dec", file)?,
            b_dec: need(&mut ts, "b_dec", file)?,
            threshold: Some(need(&mut ts, "threshold", file)?),
            w_skip: take(&mut ts, &["affine_skip_connection"]),
            center_input: false,
            source: dir.display().to_string(),
            notes: Vec::new(),
        };
        sae.validate()?;
        Ok(sae)
    }

    /// Checks that `cfg`'s model fires this SAE's hook points and that their width is the
    /// SAE's.
    ///
    /// # Errors
    /// [`LensError::HookNotOnModel`] / [`LensError::LayerOutOfRange`] for a point the model does
    /// not have; [`LensError::Mismatch`] for a width that differs.
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<()> {
        for (hp, width, side) in [
            (self.hook, self.d_in(), "d_in"),
            (self.output_hook(), self.d_out(), "d_out"),
        ] {
            hp.check(cfg)?;
            let want = match hp {
                HookPoint::MlpPre(_) | HookPoint::MlpPreLinear(_) | HookPoint::MlpPost(_) => cfg.d_mlp,
                HookPoint::Embed
                | HookPoint::PosEmbed
                | HookPoint::ResidPre(_)
                | HookPoint::ResidMid(_)
                | HookPoint::ResidPost(_)
                | HookPoint::AttnOut(_)
                | HookPoint::MlpOut(_)
                | HookPoint::Ln1Normalized(_)
                | HookPoint::Ln2Normalized(_)
                | HookPoint::Ln1PostNormalized(_)
                | HookPoint::Ln2PostNormalized(_)
                | HookPoint::LnFinalNormalized => cfg.d_model,
                HookPoint::Z(_) => cfg.n_heads * cfg.d_head,
                other => {
                    return Err(LensError::Unsupported {
                        what: format!("an SAE at {other}"),
                        fix: "SAEs read the residual stream, attention or MLP outputs, the normalised inputs, or the MLP's hidden layer".into(),
                    })
                }
            };
            if width != want {
                return Err(LensError::Mismatch {
                    what: format!("the SAE {} and the model {}", self.source, cfg.name),
                    detail: format!("its {side} is {width} but {hp} is {want} wide; the SAE was trained on another model"),
                });
            }
        }
        Ok(())
    }
}

/// An HF module path of Gemma Scope 2's configs as a hook point.
fn hf_hook_point(name: &str) -> Option<HookPoint> {
    let rest = name.strip_prefix("model.layers.")?;
    let (l, what) = rest.split_once('.')?;
    let l = l.parse::<usize>().ok()?;
    Some(match what {
        "output" => HookPoint::ResidPost(l),
        "pre_feedforward_layernorm.output" => HookPoint::Ln2Normalized(l),
        "post_feedforward_layernorm.output" => HookPoint::MlpOut(l),
        "post_attention_layernorm.output" => HookPoint::AttnOut(l),
        _ => return None,
    })
}
