//! Sparse autoencoders and transcoders (SAELens's architectures): load the public ones
//! ([`load`]), splice them into a forward pass ([`splice`]), attribute a metric to their
//! features ([`attribution`]).
//!
//! An SAE reads the activation `x [.., d_in]` at its hook point and writes a sparse code of
//! `d_sae` features and a reconstruction, as SAELens computes them:
//!
//! ```text
//! x'   = norm_in(x) (− b_dec if apply_b_dec_to_input)
//! pre  = x' W_enc + b_enc                     hook_sae_acts_pre
//! post = relu(pre)                            standard
//!        relu(pre) · [pre > threshold]        jumprelu (strict)
//!        the k largest of pre, ReLU'd; 0 else topk
//!                                             hook_sae_acts_post
//! recons = norm_out(post W_dec + b_dec)       hook_sae_recons
//! ```
//!
//! A transcoder reads one hook point (the MLP's input) and predicts another (its output):
//! the same code, `d_out` columns in `W_dec`, no `b_dec` subtraction, and for skip transcoders
//! `+ x W_skipᵀ`.
//!
//! SAEs on `attn.hook_z` read the heads' outputs concatenated, `[.., n_heads · d_head]`
//! (SAELens's `reshape_activations: hook_z`); the spliced run puts the reconstruction back per
//! head.

pub mod attribution;
pub mod eval;
pub mod load;
pub mod releases;
pub mod splice;
pub mod store;
pub mod train;
pub mod views;

use candle_core::{Tensor, D};

use crate::engine::hooks::HookPoint;
use crate::error::{LensError, Result};

/// The SAE's architecture (SAELens's `architecture`): how the features are drawn from the
/// pre-activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `relu(pre)` (SAELens `standard`, `transcoder`).
    Relu,
    /// `relu(pre) · [pre > threshold]` (SAELens `jumprelu`, Gemma Scope).
    JumpRelu,
    /// The `k` largest pre-activations per token, ReLU'd; the rest 0 (SAELens `topk`).
    TopK(usize),
}

/// The old name of [`Architecture`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `Architecture` (`Activation` is also the MLP's activation function)"
)]
pub type Activation = Architecture;

/// SAELens's `normalize_activations`, as it acts when the SAE runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// No normalisation (also what SAELens does at run time for `expected_average_only_in`
    /// when no scaling factor was folded into the weights).
    None,
    /// `x · c` in, `y / c` out, `c = sqrt(d_in) / ‖x‖` per token.
    ConstantNormRescale,
    /// `(x − μ) / (σ + 1e-5)` in (σ the unbiased standard deviation), `y σ + μ` out.
    LayerNorm,
}

/// A sparse autoencoder or transcoder with its weights and where it reads and writes.
#[derive(Clone, Debug)]
pub struct Sae {
    /// The hook point it reads (SAELens `hook_name`).
    pub hook: HookPoint,
    /// The hook point it writes, for a transcoder (SAELens `hook_name_out`); `None` for an SAE,
    /// which writes where it reads.
    pub hook_out: Option<HookPoint>,
    /// How features are drawn (SAELens's `architecture`).
    pub architecture: Architecture,
    /// Input normalisation.
    pub normalize: Normalize,
    /// Subtract `b_dec` from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// `[d_in, d_sae]`.
    pub w_enc: Tensor,
    /// `[d_sae]`.
    pub b_enc: Tensor,
    /// `[d_sae, d_out]`.
    pub w_dec: Tensor,
    /// `[d_out]`.
    pub b_dec: Tensor,
    /// `[d_sae]` for JumpReLU.
    pub threshold: Option<Tensor>,
    /// `[d_out, d_in]`, a skip transcoder's linear path.
    pub w_skip: Option<Tensor>,
    /// Subtract the input's mean over its last axis first (SAEs trained on TransformerLens
    /// models with `center_writing_weights`, whose residual stream is mean-zero).
    pub center_input: bool,
    /// Where it came from (a folder, or `release/id`), for messages and displays.
    pub source: String,
    /// Notes from loading (a normalisation SAELens does not apply at run time, ...).
    pub notes: Vec<String>,
}

/// One pass through an SAE: `[.., d_sae]` codes and the `[.., d_out]` reconstruction.
#[derive(Clone, Debug)]
pub struct SaeCode {
    /// `hook_sae_acts_pre`.
    pub acts_pre: Tensor,
    /// `hook_sae_acts_post`: the feature activations.
    pub acts_post: Tensor,
}

impl Sae {
    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[0]
    }

    /// Number of features.
    pub fn d_sae(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// Output width (`d_in` for an SAE).
    pub fn d_out(&self) -> usize {
        self.w_dec.dims()[1]
    }

    /// Whether it predicts another hook point than it reads.
    pub fn is_transcoder(&self) -> bool {
        self.hook_out.is_some()
    }

    /// The hook point it writes.
    pub fn output_hook(&self) -> HookPoint {
        self.hook_out.unwrap_or(self.hook)
    }

    /// The activation at a point as the SAE reads or writes it: per-head points
    /// (`attn.hook_z`, `[batch, pos, n_heads, d_head]`) with their heads flattened,
    /// head-major, to `[batch, pos, n_heads · d_head]` as SAELens's `hook_z` reshape does;
    /// other points unchanged.
    ///
    /// # Errors
    /// None: a 4-D `act` is flattened from axis 2, any other is returned as it is.
    pub fn flatten_heads(act: &Tensor) -> Result<Tensor> {
        Ok(if act.rank() == 4 {
            act.flatten_from(2)?
        } else {
            act.clone()
        })
    }

    /// Checks the shapes against each other.
    ///
    /// # Errors
    /// [`LensError::BadData`] naming the tensor that does not fit.
    /// The SAE's tensors by their SAELens names (`None` where this SAE has none).
    pub(crate) fn named_tensors(&self) -> [(&'static str, Option<&Tensor>); 6] {
        [
            ("W_enc", Some(&self.w_enc)),
            ("b_enc", Some(&self.b_enc)),
            ("W_dec", Some(&self.w_dec)),
            ("b_dec", Some(&self.b_dec)),
            ("threshold", self.threshold.as_ref()),
            ("W_skip", self.w_skip.as_ref()),
        ]
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |detail: String| LensError::BadData {
            what: format!("SAE {}", self.source),
            detail,
        };
        let (d_in, d_sae) = self.w_enc.dims2().map_err(|_| {
            bad(format!(
                "W_enc has shape {:?}; it must be [d_in, d_sae]",
                self.w_enc.dims()
            ))
        })?;
        let (r, d_out) = self.w_dec.dims2().map_err(|_| {
            bad(format!(
                "W_dec has shape {:?}; it must be [d_sae, d_out]",
                self.w_dec.dims()
            ))
        })?;
        if r != d_sae {
            return Err(bad(format!(
                "W_dec has {r} rows but W_enc has {d_sae} features"
            )));
        }
        if d_in == 0 || d_sae == 0 || d_out == 0 {
            return Err(bad(format!(
                "W_enc is [{d_in}, {d_sae}] and W_dec [{r}, {d_out}]: an SAE needs at least one input dimension and one feature (d_in, d_sae > 0)"
            )));
        }
        let vec_of = |t: &Tensor, n: usize, name: &str| -> Result<()> {
            if t.dims() != [n] {
                return Err(bad(format!(
                    "{name} has shape {:?}; it must be [{n}]",
                    t.dims()
                )));
            }
            Ok(())
        };
        vec_of(&self.b_enc, d_sae, "b_enc")?;
        vec_of(&self.b_dec, d_out, "b_dec")?;
        if let Some(t) = &self.threshold {
            vec_of(t, d_sae, "threshold")?;
        }
        if self.architecture == Architecture::JumpRelu && self.threshold.is_none() {
            return Err(bad("a JumpReLU SAE needs a threshold tensor".into()));
        }
        if let Architecture::TopK(k) = self.architecture {
            if k == 0 || k > d_sae {
                return Err(bad(format!(
                    "k = {k} must be between 1 and d_sae = {d_sae}"
                )));
            }
        }
        if let Some(s) = &self.w_skip {
            if s.dims() != [d_out, d_in] {
                return Err(bad(format!(
                    "W_skip has shape {:?}; it must be [d_out, d_in] = [{d_out}, {d_in}]",
                    s.dims()
                )));
            }
        }
        if self.apply_b_dec_to_input && d_in != d_out {
            return Err(bad("apply_b_dec_to_input needs d_in = d_out".into()));
        }
        if self.threshold.is_some() && self.architecture != Architecture::JumpRelu {
            return Err(bad(format!(
                "the weights hold a threshold, but the config says {:?} (a cfg.json without 'architecture' means standard), so the threshold would be ignored; set \"architecture\": \"jumprelu\" in cfg.json",
                self.architecture
            )));
        }
        for (name, t) in self.named_tensors() {
            if let Some(t) = t {
                let n = crate::engine::weights::non_finite(t)?;
                if n > 0 {
                    return Err(bad(format!(
                        "{name} holds {n} NaN or infinite value(s): the SAE file is damaged (download or save it again)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The normalisation's input scale and offset for `x [.., d_in]`: `x' = (x − shift) · scale`.
    fn norm_stats(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match self.normalize {
            Normalize::None => None,
            Normalize::ConstantNormRescale => {
                let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                let scale = ((n.recip()? * (self.d_in() as f64).sqrt())?).to_dtype(x.dtype())?;
                Some((scale, x.zeros_like()?.narrow(D::Minus1, 0, 1)?))
            }
            Normalize::LayerNorm => {
                let d = self.d_in() as f64;
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                // torch's unbiased standard deviation
                let sd = (xc.sqr()?.sum_keepdim(D::Minus1)? / (d - 1.0).max(1.0))?.sqrt()?;
                Some(((sd + 1e-5)?.recip()?, mu))
            }
        })
    }

    /// The features of `x [.., d_in]` (any leading axes).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when the last axis is not `d_in`; tensor errors.
    pub fn encode(&self, x: &Tensor) -> Result<SaeCode> {
        self.check_width(x, self.d_in(), "input")?;
        let mut x = x.to_dtype(self.w_enc.dtype())?;
        if self.center_input {
            x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        }
        let mut xs = match self.norm_stats(&x)? {
            Some((scale, shift)) => x.broadcast_sub(&shift)?.broadcast_mul(&scale)?,
            None => x,
        };
        if self.apply_b_dec_to_input {
            xs = xs.broadcast_sub(&self.b_dec)?;
        }
        let pre = mm(&xs, &self.w_enc, &self.b_enc)?;
        let post = match self.architecture {
            Architecture::Relu => pre.relu()?,
            Architecture::JumpRelu => {
                let th = self
                    .threshold
                    .as_ref()
                    .ok_or_else(|| LensError::Internal("JumpReLU without a threshold".into()))?;
                (pre.relu()? * pre.broadcast_gt(th)?.to_dtype(pre.dtype())?)?
            }
            Architecture::TopK(k) => top_k_relu(&pre, k)?,
        };
        Ok(SaeCode {
            acts_pre: pre,
            acts_post: post,
        })
    }

    /// The reconstruction `[.., d_out]` of features `acts [.., d_sae]`; `x` is the input they
    /// came from (the normalisation's statistics and a skip transcoder's linear path read it).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] on a width that does not fit; tensor errors.
    pub fn decode(&self, acts: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.check_width(acts, self.d_sae(), "feature activations")?;
        let x = x.to_dtype(self.w_enc.dtype())?;
        let mut y = mm(acts, &self.w_dec, &self.b_dec)?;
        if let Some((scale, shift)) = self.norm_stats(&x)? {
            y = y.broadcast_div(&scale)?.broadcast_add(&shift)?;
        }
        if let Some(ws) = &self.w_skip {
            y = (y + crate::engine::ops::linear(&x, ws, None)?)?;
        }
        Ok(y)
    }

    fn check_width(&self, t: &Tensor, want: usize, what: &str) -> Result<()> {
        let got = t.dims().last().copied().unwrap_or(0);
        if got != want {
            return Err(LensError::Mismatch {
                what: format!("the SAE {} and its {what}", self.source),
                detail: format!(
                    "the {what} is {:?} wide ({got}); the SAE expects {want}",
                    t.dims()
                ),
            });
        }
        Ok(())
    }
}

/// `x [.., n] · w [n, m] + b [m]` over any leading axes.
fn mm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / n.max(1);
    let y = x
        .to_dtype(w.dtype())?
        .reshape((rows, n))?
        .matmul(w)?
        .broadcast_add(b)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(1)?;
    }
    Ok(y.reshape(out)?)
}

/// TopK: per row of `pre [.., d_sae]`, the `k` largest entries (raw, possibly negative) keep
/// `relu(value)`, the others become 0 (the selection rule of `engine::ops::topk`, shared
/// with mixture-of-experts routing).
pub(crate) fn top_k_relu(pre: &Tensor, k: usize) -> Result<Tensor> {
    Ok(crate::engine::ops::topk::top_k_rows(pre, k, |v| v.max(0.0))?.to_dtype(pre.dtype())?)
}
