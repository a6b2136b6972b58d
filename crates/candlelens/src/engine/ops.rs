//! The small operations every block and the unembedding share: firing a hook point,
//! `x W^T + b`, the MLP activations, and the norms (LayerNorm / RMSNorm, per-head RMSNorm) —
//! each choosing the fast kernel ([`super::kernels`]) or, in a run with gradients, the fused op
//! with a written-out backward ([`super::grad_ops`]).
//! Free functions of tensors and config switches, so that [`super::block`] and
//! [`super::model`] both build on them without depending on each other.

use candle_core::{DType, Tensor, D};

use crate::engine::config::{Activation, ModelConfig, NormKind};
use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::kernels;
use crate::engine::norm_kernel;
use crate::engine::weights::NormWeights;
use crate::error::Result;

/// Fires hook point `hp` on `x` if the sink wants it; returns the (possibly replaced) tensor.
///
/// # Errors
/// Whatever the sink returns (a hook's error, [`crate::LensError::HookShape`]).
pub fn hook(sink: &mut dyn HookSink, hp: HookPoint, x: Tensor) -> Result<Tensor> {
    if sink.wants(&hp) {
        sink.visit(&hp, x)
    } else {
        Ok(x)
    }
}

/// `x W^T + b` for `x [.., d_in]`, `w [d_out, d_in]`, `b [d_out]` -> `[.., d_out]`.
///
/// # Errors
/// Shape mismatches (a bug in the caller).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / d_in.max(1);
    let x2 = x.reshape((rows, d_in))?;
    let y = if x.track_op() {
        // a run with gradients: skip the weight's gradient in the backward pass
        crate::engine::grad_ops::linear_input_grad(&x2, w)?
    } else {
        kernels::product(&x2, w)?
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    Ok(y.reshape(out)?)
}

/// The MLP's activation function, elementwise.
///
/// # Errors
/// Tensor errors.
pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh if x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() => {
            crate::engine::grad_ops::gelu_tanh(x)?
        }
        Activation::GeluTanh => kernels::gelu_tanh(x)?,
        Activation::Silu if x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() => {
            crate::engine::grad_ops::silu(x)?
        }
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
}

/// The gated MLP's `act(pre) ⊙ lin`: one fused pass where [`kernels::gated`] applies, the
/// activation and the product otherwise (the same values).
///
/// # Errors
/// Tensor errors.
pub fn gated_activation(act: Activation, pre: &Tensor, lin: &Tensor) -> Result<Tensor> {
    match kernels::gated(act, pre, lin)? {
        Some(post) => Ok(post),
        None => Ok((activation(act, pre)? * lin)?),
    }
}

/// A norm's switches: which kind, its epsilon, and the compute dtype it returns.
#[derive(Clone, Copy, Debug)]
pub struct NormSpec {
    /// LayerNorm (centred) or RMSNorm.
    pub kind: NormKind,
    /// Added to the mean square before the square root.
    pub eps: f64,
    /// The dtype of the output (statistics are computed in f32).
    pub dtype: DType,
}

impl NormSpec {
    /// The norm switches of a model config, computing in `dtype`.
    pub fn of(cfg: &ModelConfig, dtype: DType) -> Self {
        NormSpec {
            kind: cfg.norm,
            eps: cfg.norm_eps,
            dtype,
        }
    }

    /// Normalises `x [batch, pos, d]` with weights `w`, firing `(scale, normalized)` hooks
    /// if given: `(x - mean) / sqrt(var + eps) * w + b` (LayerNorm) or `x / rms * w`
    /// (RMSNorm). The scale hook sees `[batch, pos, 1]`.
    ///
    /// # Errors
    /// Tensor and hook errors.
    pub fn apply(
        &self,
        w: &NormWeights,
        x: &Tensor,
        hooks: Option<(HookPoint, HookPoint)>,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        // no hook reads the scale or the output: candle's fused kernels (one pass per row, on
        // every core) compute the same function
        let hooked = hooks.is_some_and(|(hs, hn)| sink.wants(&hs) || sink.wants(&hn));
        if !hooked && self.dtype == DType::F32 && x.dtype() == DType::F32 {
            let eps = self.eps as f32;
            let bias = match (self.kind, &w.b) {
                (NormKind::RmsNorm, None) => Some(None),
                (NormKind::LayerNorm, Some(b)) => Some(Some(b)),
                _ => None,
            };
            if !x.track_op() {
                let is_ln = matches!(self.kind, NormKind::LayerNorm);
                if let Some(y) =
                    norm_kernel::norm(&x.contiguous()?, is_ln, self.eps, &w.w, w.b.as_ref())?
                {
                    return Ok(y);
                }
            }
            match bias {
                Some(None) if !x.track_op() => {
                    return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &w.w, eps)?)
                }
                Some(Some(b)) if !x.track_op() => {
                    return Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &w.w, b, eps)?)
                }
                // a run with gradients: the same kernels, with a written-out backward
                Some(b) if x.device().is_cpu() => {
                    return crate::engine::grad_ops::norm(x, &w.w, b, eps)
                }
                _ => {}
            }
        }
        let is_ln = matches!(self.kind, NormKind::LayerNorm);
        let x32 = x.to_dtype(DType::F32)?;
        let centred = || -> Result<Tensor> {
            Ok(match self.kind {
                NormKind::LayerNorm => x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
                NormKind::RmsNorm => x32.clone(),
            })
        };
        // the scale and the normalised output as two fused passes on the CPU (see
        // norm_kernel), candle's composed ops elsewhere
        let scale = match norm_kernel::norm_scale(&x32, is_ln, self.eps)? {
            Some(scale) => scale,
            None => (centred()?.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?,
        };
        let scale = match hooks {
            Some((hs, _)) => hook(sink, hs, scale.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?,
            None => scale,
        };
        if self.dtype == DType::F32 {
            if let Some(y) = norm_kernel::norm_apply(&x32, &scale, is_ln, &w.w, w.b.as_ref())? {
                return match hooks {
                    Some((_, hn)) => hook(sink, hn, y),
                    None => Ok(y),
                };
            }
        }
        let mut y = centred()?
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(&w.w)?;
        if let Some(b) = &w.b {
            y = y.broadcast_add(b)?;
        }
        match hooks {
            Some((_, hn)) => hook(sink, hn, y),
            None => Ok(y),
        }
    }

    /// Per-head RMSNorm over `d_head` for `x [batch, pos, heads, d_head]` with scale
    /// `w [d_head]` (the q/k norm of Qwen3 and Gemma 3).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn head_rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.dtype == DType::F32 && x.dtype() == DType::F32 {
            if !x.track_op() {
                let xc = x.contiguous()?;
                if let Some(y) = norm_kernel::norm(&xc, false, self.eps, w, None)? {
                    return Ok(y);
                }
                return Ok(candle_nn::ops::rms_norm(&xc, w, self.eps as f32)?);
            }
            if x.device().is_cpu() {
                return crate::engine::grad_ops::norm(x, w, None, self.eps as f32);
            }
        }
        let x32 = x.to_dtype(DType::F32)?;
        let scale = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        Ok(x32
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(w)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn linear_is_the_same_for_few_and_many_rows() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1f32, (40, 24), &dev).unwrap();
        let b = Tensor::randn(0f32, 1f32, 40, &dev).unwrap();
        for rows in [1usize, 7, kernels::FEW_ROWS, kernels::FEW_ROWS + 1] {
            let x = Tensor::randn(0f32, 1f32, (rows, 24), &dev).unwrap();
            let y = linear(&x.unsqueeze(0).unwrap(), &w, Some(&b)).unwrap();
            assert_eq!(y.dims(), &[1, rows, 40]);
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let diff = (y.squeeze(0).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{rows} rows: {diff}");
        }
    }
}
