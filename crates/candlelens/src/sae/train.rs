//! Training a small TopK SAE (Gao et al. 2024) on cached activations, CPU-first: candle's
//! autograd and Adam, the decoder's rows kept at unit norm, `b_dec` started at the data's mean
//! and `W_enc` at `W_decᵀ`. Enough to read an embedded model through features offline; the
//! public SAEs ([`super::releases`]) are the ones to use on real models.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::engine::hooks::HookPoint;
use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;

use super::{Architecture, Normalize, Sae};

/// The trainer's settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Number of features.
    pub d_sae: usize,
    /// Active features per token.
    pub k: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Activations per step.
    pub batch_size: usize,
    /// Seeds the initialisation and the batches.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            d_sae: 2048,
            k: 32,
            lr: 1e-3,
            steps: 1000,
            batch_size: 256,
            seed: 42,
        }
    }
}

/// How training went.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    /// The batch loss (mean squared error) at every step.
    pub losses: Vec<f32>,
    /// Fraction of variance unexplained on all the activations at the end:
    /// `Σ‖x − x̂‖² / Σ‖x − x̄‖²`.
    pub fvu: f32,
    /// Features that fire on none of the activations at the end.
    pub dead: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Gaussian values from the seeded generator, `[rows, cols]`.
fn gauss(rng: &mut PyRandom, rows: usize, cols: usize, scale: f64) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.gauss() * scale) as f32)
        .collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

fn unit_rows(w: &Tensor) -> Result<Tensor> {
    let n = w
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-8, f64::MAX)?;
    Ok(w.broadcast_div(&n)?)
}

/// `relu(pre)` on each row's `k` largest pre-activations, 0 elsewhere — differentiable through
/// the values chosen (the choice itself is not).
fn top_k(pre: &Tensor, k: usize) -> Result<Tensor> {
    let chosen = super::top_k_relu(&pre.detach(), k)?;
    let mask = chosen.gt(0f32)?.to_dtype(pre.dtype())?;
    Ok((pre.relu()? * mask)?)
}

/// Trains a TopK SAE on `acts [n, d_in]` (activations read at `hook`, e.g. a cache's
/// `blocks.5.hook_resid_post` flattened over prompts and positions).
///
/// # Errors
/// [`LensError::BadParameter`] for `k` outside `1..=d_sae`, zero steps or batch, a
/// non-finite learning rate; [`LensError::TooFew`] for fewer activations than a batch;
/// [`LensError::Numerical`] if the loss stops being finite.
pub fn train_topk(acts: &Tensor, hook: HookPoint, cfg: &TrainConfig) -> Result<(Sae, TrainReport)> {
    let t0 = std::time::Instant::now();
    let (n, d_in) = acts.dims2()?;
    let bad = |name: &str, value: String, fix: &str| LensError::BadParameter {
        name: name.into(),
        value,
        fix: fix.into(),
    };
    if cfg.d_sae == 0 || cfg.k == 0 || cfg.k > cfg.d_sae {
        return Err(bad(
            "k",
            cfg.k.to_string(),
            "use 1 <= k <= d_sae (and d_sae > 0)",
        ));
    }
    if cfg.steps == 0 || cfg.batch_size == 0 {
        return Err(bad(
            "steps / batch_size",
            format!("{} / {}", cfg.steps, cfg.batch_size),
            "train for at least one step of at least one activation",
        ));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(bad(
            "lr",
            cfg.lr.to_string(),
            "use a positive, finite learning rate (1e-3 is a good start)",
        ));
    }
    if n < cfg.batch_size {
        return Err(LensError::too_few(
            "activations to train on",
            cfg.batch_size,
            n,
            "cache more prompts or lower batch_size",
        ));
    }
    let x_all = acts.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let mut rng = PyRandom::seed(cfg.seed);
    let w_dec0 = unit_rows(&gauss(&mut rng, cfg.d_sae, d_in, 1.0)?)?;
    let w_dec = Var::from_tensor(&w_dec0)?;
    let w_enc = Var::from_tensor(&w_dec0.t()?.contiguous()?)?;
    let b_enc = Var::from_tensor(&Tensor::zeros(cfg.d_sae, DType::F32, &Device::Cpu)?)?;
    let b_dec = Var::from_tensor(&x_all.mean(0)?)?;
    let mut opt = AdamW::new(
        vec![w_enc.clone(), b_enc.clone(), w_dec.clone(), b_dec.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut at = n;
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        if at + cfg.batch_size > n {
            rng.shuffle(&mut order);
            at = 0;
        }
        let idx = Tensor::new(&order[at..at + cfg.batch_size], &Device::Cpu)?;
        at += cfg.batch_size;
        let x = x_all.index_select(&idx, 0)?;
        let pre = x
            .broadcast_sub(b_dec.as_tensor())?
            .matmul(w_enc.as_tensor())?
            .broadcast_add(b_enc.as_tensor())?;
        let recons = top_k(&pre, cfg.k)?
            .matmul(w_dec.as_tensor())?
            .broadcast_add(b_dec.as_tensor())?;
        let loss = (recons - &x)?.sqr()?.mean_all()?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(LensError::Numerical {
                what: format!("TopK SAE training at step {step}"),
                detail: format!("the loss is {l}; lower the learning rate"),
            });
        }
        losses.push(l);
        opt.backward_step(&loss)?;
        w_dec.set(&unit_rows(w_dec.as_tensor())?)?;
    }
    let sae = Sae {
        hook,
        hook_out: None,
        architecture: Architecture::TopK(cfg.k),
        normalize: Normalize::None,
        apply_b_dec_to_input: true,
        w_enc: w_enc.as_tensor().detach(),
        b_enc: b_enc.as_tensor().detach(),
        w_dec: w_dec.as_tensor().detach(),
        b_dec: b_dec.as_tensor().detach(),
        threshold: None,
        w_skip: None,
        center_input: false,
        source: format!("TopK SAE trained on {n} activations at {hook}"),
        notes: Vec::new(),
    };
    // the end state on every activation
    let code = sae.encode(&x_all)?;
    let recons = sae.decode(&code.acts_post, &x_all)?;
    let err = (recons - &x_all)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let var = x_all
        .broadcast_sub(&x_all.mean_keepdim(0)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    let fired: Vec<f32> = code
        .acts_post
        .gt(0f32)?
        .to_dtype(DType::F32)?
        .sum(0)?
        .to_vec1()?;
    let report = TrainReport {
        losses,
        fvu: err / var.max(1e-12),
        dead: fired.iter().filter(|&&c| c == 0.0).count(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((sae, report))
}

impl Sae {
    /// Writes the SAE in SAELens's format (`cfg.json` + `sae_weights.safetensors`, the
    /// version-6 layout), so that [`Sae::load`] — or SAELens's `SAE.load_from_disk` — reads it
    /// back. The folder appears whole or not at all.
    ///
    /// # Errors
    /// [`LensError::Io`] if the folder cannot be written; an existing `dir` is refused.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(LensError::bad_parameter(
                "dir",
                dir.display(),
                "save into a folder that does not exist yet",
            ));
        }
        let architecture = match (
            self.architecture,
            self.is_transcoder(),
            self.w_skip.is_some(),
        ) {
            (Architecture::Relu, false, _) => "standard",
            (Architecture::JumpRelu, false, _) => "jumprelu",
            (Architecture::TopK(_), false, _) => "topk",
            (Architecture::Relu, true, false) => "transcoder",
            (Architecture::Relu, true, true) => "skip_transcoder",
            (Architecture::JumpRelu, true, false) => "jumprelu_transcoder",
            (Architecture::JumpRelu, true, true) => "jumprelu_skip_transcoder",
            (Architecture::TopK(_), true, _) => {
                return Err(LensError::Unsupported {
                    what: "saving a TopK transcoder".into(),
                    fix: "SAELens has no such architecture".into(),
                })
            }
        };
        let normalize = match self.normalize {
            Normalize::None => "none",
            Normalize::ConstantNormRescale => "constant_norm_rescale",
            Normalize::LayerNorm => "layer_norm",
        };
        let mut cfg = serde_json::json!({
            "architecture": architecture,
            "d_in": self.d_in(),
            "d_sae": self.d_sae(),
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": normalize,
            "reshape_activations": if matches!(self.hook, HookPoint::Z(_)) { "hook_z" } else { "none" },
            "metadata": {
                "hook_name": self.hook.to_string(),
                "sae_lens_version": "6.0.0",
                "written_by": "candlelens",
            },
        });
        if let Architecture::TopK(k) = self.architecture {
            cfg["k"] = k.into();
        }
        if let Some(o) = self.hook_out {
            cfg["d_out"] = self.d_out().into();
            cfg["metadata"]["hook_name_out"] = o.to_string().into();
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in self.named_tensors() {
            if let Some(t) = t {
                tensors.insert(name.to_string(), t.to_dtype(DType::F32)?.contiguous()?);
            }
        }
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| LensError::Json {
            what: "the SAE's cfg.json".into(),
            detail: e.to_string(),
        })?;
        // the folder appears whole, under a temporary name of its own first; an existing
        // folder is never replaced
        crate::util::fs::write_atomically(dir, |tmp| {
            std::fs::create_dir_all(tmp).map_err(|e| LensError::write(dir, e))?;
            std::fs::write(tmp.join("cfg.json"), &text).map_err(|e| LensError::write(dir, e))?;
            crate::util::fs::write_safetensors(
                &tensors,
                &tmp.join("sae_weights.safetensors"),
                dir,
            )?;
            Ok(())
        })
    }
}
