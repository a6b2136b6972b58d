//! LRE operators `z ≈ β W h + b`: fitted by regression (the source) or from the model's own
//! Jacobian (Hernandez et al. 2023).

use candle_core::{DType, IndexOp, Tensor};

use super::linalg::{least_norm_fit, low_rank_pinv};
use super::states::{LreStates, SubjectState};
use crate::engine::block::PastKv;
use crate::engine::hooks::NoHooks;
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

/// How an operator was estimated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Estimator {
    /// The source's: least-norm linear regression from `h` to the object's unembedding row.
    /// Its outputs live in unembedding space; they are scored against `W_U` directly.
    Regression,
    /// The paper's: `W` = mean Jacobian `∂z/∂h`, `b` = mean `z − W h`, applied as `β W h + b`;
    /// outputs are final-block residuals, decoded by the final norm and `W_U`.
    Jacobian {
        /// The scale `β` on `W h`.
        beta: f32,
    },
}

impl std::fmt::Display for Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Estimator::Regression => write!(f, "regression"),
            Estimator::Jacobian { beta } => write!(f, "jacobian (beta {beta})"),
        }
    }
}

/// A linear relational embedding at one layer.
#[derive(Clone, Debug)]
pub struct LreOperator {
    /// The layer whose `hook_resid_post` at the subject's last token is the input `h`.
    pub layer: usize,
    /// How it was estimated.
    pub estimator: Estimator,
    /// `W [d_out, d_model]`.
    pub weight: Tensor,
    /// `b [d_out]`.
    pub bias: Tensor,
    /// Number of training subjects.
    pub n_train: usize,
}

impl LreOperator {
    /// The source's estimator: regress each training subject's `h` (at `layer`) onto the
    /// unembedding row of its object's first token, least-norm (see
    /// [`least_norm_fit`](super::linalg::least_norm_fit)).
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`], fewer than two training subjects, SVD failure.
    pub fn fit_regression(
        model: &HookedTransformer,
        train: &LreStates,
        layer: usize,
    ) -> Result<Self> {
        if train.len() < 2 {
            return Err(LensError::too_few(
                "training subjects for the regression estimator",
                2,
                train.len(),
                "use a larger relation or a larger training fraction",
            ));
        }
        let x = train.h_at(layer)?;
        let ids = train
            .items
            .iter()
            .map(|s| {
                let i = train.candidates.index(&s.sample.object).ok_or_else(|| {
                    LensError::BadData {
                        what: "training subjects".into(),
                        detail: format!(
                            "object {:?} is not among the candidates {:?}; build the candidates from the relation's objects",
                            s.sample.object, train.candidates.objects
                        ),
                    }
                })?;
                Ok(train.candidates.ids[i])
            })
            .collect::<Result<Vec<u32>>>()?;
        let ids = Tensor::new(ids.as_slice(), model.device())?;
        let y = model
            .weights
            .w_u
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?;
        let (weight, bias) = least_norm_fit(&x, &y)?;
        Ok(LreOperator {
            layer,
            estimator: Estimator::Regression,
            weight,
            bias,
            n_train: train.len(),
        })
    }

    /// The paper's estimator over `train` (the paper uses 8 subjects): for each, the Jacobian
    /// `J = ∂z/∂h` of the final block's output at the last position with respect to the
    /// subject's hidden state after block `layer` (candle autograd, [`jacobian`]); `W` is their
    /// mean and `b` the mean of `z − J h`. `beta` scales `W` when applied (the paper's β).
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`], empty `train`, forward/backward errors.
    pub fn fit_jacobian(
        model: &HookedTransformer,
        train: &[SubjectState],
        layer: usize,
        beta: f32,
    ) -> Result<Self> {
        check_beta(beta)?;
        if train.is_empty() {
            return Err(LensError::too_few(
                "training subjects for the Jacobian estimator",
                1,
                0,
                "pass at least one subject's states",
            ));
        }
        let d = model.cfg.d_model;
        let mut w_sum = Tensor::zeros((d, d), DType::F32, model.device())?;
        let mut b_sum = Tensor::zeros(d, DType::F32, model.device())?;
        for s in train {
            let jac = jacobian(model, &s.ids, s.h_pos, layer, JACOBIAN_TOKENS)?;
            let b = (&jac.z - jac.j.matmul(&jac.h.unsqueeze(1)?)?.squeeze(1)?)?;
            w_sum = (w_sum + &jac.j)?;
            b_sum = (b_sum + b)?;
        }
        let n = train.len() as f64;
        Ok(LreOperator {
            layer,
            estimator: Estimator::Jacobian { beta },
            weight: (w_sum / n)?,
            bias: (b_sum / n)?,
            n_train: train.len(),
        })
    }

    /// The same operator with another β (Jacobian operators only; the fit is reused).
    pub fn with_beta(&self, beta: f32) -> Self {
        let mut out = self.clone();
        if let Estimator::Jacobian { .. } = out.estimator {
            out.estimator = Estimator::Jacobian { beta };
        }
        out
    }

    /// `β W h + b` for `h [n, d_model]` -> `[n, d_out]`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn apply(&self, h: &Tensor) -> Result<Tensor> {
        let beta = match self.estimator {
            Estimator::Jacobian { beta } => check_beta(beta)?,
            Estimator::Regression => 1.0,
        };
        let wh = (h.to_dtype(DType::F32)?.matmul(&self.weight.t()?)? * beta)?;
        Ok(wh.broadcast_add(&self.bias)?)
    }

    /// Scores over the vocabulary for operator outputs `z [n, d_out]` -> `[n, d_vocab]`:
    /// `z W_U^T` for regression outputs (already in unembedding space), the model's final norm
    /// and unembedding for Jacobian outputs.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn vocab_scores(&self, model: &HookedTransformer, z: &Tensor) -> Result<Tensor> {
        match self.estimator {
            Estimator::Regression => {
                let wu = model.weights.w_u.to_dtype(DType::F32)?;
                Ok(z.matmul(&wu.t()?)?)
            }
            Estimator::Jacobian { .. } => Ok(model
                .unembed_residual(&z.to_dtype(model.dtype())?)?
                .to_dtype(DType::F32)?),
        }
    }

    /// The rank-`rank` pseudo-inverse of `W` (unscaled by β), `[d_model, d_out]`.
    ///
    /// # Errors
    /// SVD failure.
    pub fn pinv(&self, rank: usize) -> Result<Tensor> {
        low_rank_pinv(&self.weight, rank)
    }
}

/// Tangents carried per pass are chosen so that a pass runs about this many token positions
/// (tangents × positions from the subject on): big batches keep the matrix products efficient;
/// memory grows with it (~`JACOBIAN_TOKENS · d_mlp` floats).
pub const JACOBIAN_TOKENS: usize = 8192;

/// One subject's Jacobian and the point it was taken at.
pub struct SubjectJacobian {
    /// `∂z/∂h`, `[d_model, d_model]` (row = output dimension).
    pub j: Tensor,
    /// `h [d_model]`: `blocks.{layer}.hook_resid_post` at the subject's last token.
    pub h: Tensor,
    /// `z [d_model]`: the last block's output at the last position.
    pub z: Tensor,
}

/// The Jacobian of the last block's output at the final position with respect to
/// `blocks.{layer}.hook_resid_post` at `subject_pos`, exactly, by forward-mode derivatives.
///
/// Positions before the subject do not depend on `h` (causal attention), so one forward caches
/// their keys and values; then blocks `layer + 1 ..` run on positions `subject_pos ..` once,
/// carrying a batch of tangents `e_i` (one per input dimension, at the subject) through each
/// block's Jacobian-vector product ([`crate::engine::block::Block::jvp`]): the tangent of the
/// final position's output along `e_i` is column `i` of `J`. `chunk_tokens` bounds the tangent
/// rows of a pass (tangents × positions), which bounds memory.
///
/// # Errors
/// [`LensError::LayerOutOfRange`], [`LensError::PositionOutOfRange`], tensor errors.
pub fn jacobian(
    model: &HookedTransformer,
    ids: &[u32],
    subject_pos: usize,
    layer: usize,
    chunk_tokens: usize,
) -> Result<SubjectJacobian> {
    let n_layers = model.cfg.n_layers;
    if layer >= n_layers {
        return Err(LensError::LayerOutOfRange { layer, n_layers });
    }
    let t = ids.len();
    if subject_pos >= t {
        return Err(LensError::PositionOutOfRange {
            pos: subject_pos as i64,
            len: t,
        });
    }
    let tokens = model.tokens_from_ids(ids.to_vec())?;
    let ctx = model.context(t)?;
    let mut x = model.embed(&tokens, &mut NoHooks)?;
    let mut pasts: Vec<Option<PastKv>> = Vec::new();
    let mut x_l = None;
    for l in 0..n_layers {
        let (out, kv) = model.block(l)?.forward(x, &ctx, 0, None, &mut NoHooks)?;
        if l > layer {
            pasts.push(
                (subject_pos > 0)
                    .then(|| -> Result<PastKv> {
                        Ok(PastKv {
                            k: kv.k.narrow(1, 0, subject_pos)?,
                            v: kv.v.narrow(1, 0, subject_pos)?,
                        })
                    })
                    .transpose()?,
            );
        }
        if l == layer {
            x_l = Some(out.clone());
        }
        x = out;
    }
    let x_l = x_l.expect("layer < n_layers");
    let h = x_l.i((0, subject_pos))?;
    let z = x.i((0, t - 1))?.to_dtype(DType::F32)?;
    let d = model.cfg.d_model;
    let dev = model.device();
    let eye = Tensor::eye(d, DType::F32, dev)?;
    if layer == n_layers - 1 {
        let j = if subject_pos == t - 1 {
            eye
        } else {
            eye.zeros_like()?
        };
        return Ok(SubjectJacobian {
            j,
            h: h.to_dtype(DType::F32)?,
            z,
        });
    }
    // the suffix from the subject on, and one tangent per input dimension at the subject
    let p = t - subject_pos;
    let x_suffix = x_l.narrow(1, subject_pos, p)?;
    let chunk = (chunk_tokens / p).max(1);
    let mut cols = Vec::new();
    let mut c0 = 0;
    while c0 < d {
        let n = chunk.min(d - c0);
        let mut dx = eye
            .narrow(0, c0, n)?
            .to_dtype(model.dtype())?
            .unsqueeze(1)?; // [n, 1, d]: e_i at the subject
        if p > 1 {
            let zeros = Tensor::zeros((n, p - 1, d), model.dtype(), dev)?;
            dx = Tensor::cat(&[&dx, &zeros], 1)?;
        }
        let mut x = x_suffix.clone();
        for (i, l) in (layer + 1..n_layers).enumerate() {
            (x, dx) = model
                .block(l)?
                .jvp(&x, &dx, &ctx, subject_pos, pasts[i].as_ref())?;
        }
        // column i of J is the tangent of z along e_i
        cols.push(dx.i((.., p - 1))?.to_dtype(DType::F32)?);
        c0 += n;
    }
    Ok(SubjectJacobian {
        j: Tensor::cat(&cols, 0)?.t()?.contiguous()?,
        h: h.to_dtype(DType::F32)?,
        z,
    })
}

/// β must be a finite positive scale.
fn check_beta(beta: f32) -> Result<f64> {
    if beta.is_finite() && beta > 0.0 {
        Ok(f64::from(beta))
    } else {
        Err(LensError::bad_parameter(
            "beta",
            beta,
            "β scales the Jacobian operator: give a finite positive number (the paper uses 2.25)",
        ))
    }
}
