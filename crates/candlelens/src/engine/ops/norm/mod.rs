//! LayerNorm and RMSNorm over the last axis (the block's norms, the final norm, the q/k norm):
//! the hooked application with `hook_scale` / `hook_normalized` ([`NormSpec::apply`]), the
//! vectorised CPU kernels ([`kernel`]), the backward of a run with gradients (a custom op
//! with the fused kernel forward), and the forward-mode rule ([`norm_jvp`]).

pub(crate) mod kernel;

use candle_core::{DType, Tensor, D};

use super::custom::{apply, Differentiable};
use super::hook;
use crate::engine::config::{ModelConfig, NormKind};
use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::weights::NormWeights;
use crate::error::Result;

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
    /// Whatever a hook returns (its own error, or [`crate::LensError::HookShape`] for a tensor of
    /// another shape); a raw [`crate::LensError::Candle`] unless `w.w`, `w.b` are `[d]` in
    /// `self.dtype` for `x [.., d]`.
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
                    kernel::norm(&x.contiguous()?, is_ln, self.eps, &w.w, w.b.as_ref())?
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
                Some(b) if x.device().is_cpu() => return tracked(x, &w.w, b, eps),
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
        let scale = match kernel::norm_scale(&x32, is_ln, self.eps)? {
            Some(scale) => scale,
            None => (centred()?.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?,
        };
        let scale = match hooks {
            Some((hs, _)) => hook(sink, hs, scale.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?,
            None => scale,
        };
        if self.dtype == DType::F32 {
            if let Some(y) = kernel::norm_apply(&x32, &scale, is_ln, &w.w, w.b.as_ref())? {
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
    /// A raw [`crate::LensError::Candle`] when `w`'s length is not `x`'s last axis, or `w` is not
    /// in `self.dtype`.
    pub fn head_rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.dtype == DType::F32 && x.dtype() == DType::F32 {
            if !x.track_op() {
                let xc = x.contiguous()?;
                if let Some(y) = kernel::norm(&xc, false, self.eps, w, None)? {
                    return Ok(y);
                }
                return Ok(candle_nn::ops::rms_norm(&xc, w, self.eps as f32)?);
            }
            if x.device().is_cpu() {
                return tracked(x, w, None, self.eps as f32);
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

/// RMSNorm (`b = None`) or LayerNorm over the last axis with weight `w` (and bias `b`).
struct Norm {
    w: Tensor,
    b: Option<Tensor>,
    eps: f32,
}

impl Differentiable for Norm {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.b {
            None => candle_nn::ops::rms_norm(x, &self.w, self.eps)?,
            Some(b) => candle_nn::ops::layer_norm(x, &self.w, b, self.eps)?,
        })
    }

    fn backward(&self, arg: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::D;
        let x = arg.detach();
        let gw = g.broadcast_mul(&self.w)?;
        let dx = match &self.b {
            None => {
                // y = x r w, r = (mean x² + eps)^-1/2:  dx = r (g w) − x r³ mean(g w x)
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
                    .sqrt()?
                    .recip()?;
                let m = (&gw * &x)?.mean_keepdim(D::Minus1)?;
                (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * m)?)?)?
            }
            Some(_) => {
                // x̂ = (x − μ) r:  dx = r (g w − mean(g w) − x̂ mean(g w x̂))
                let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
                let r = (xc.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
                    .sqrt()?
                    .recip()?;
                let xh = xc.broadcast_mul(&r)?;
                let a = gw.broadcast_sub(&gw.mean_keepdim(D::Minus1)?)?;
                let c = (&gw * &xh)?.mean_keepdim(D::Minus1)?;
                (a - xh.broadcast_mul(&c)?)?.broadcast_mul(&r)?
            }
        };
        Ok(dx)
    }
}

/// RMSNorm (`b = None`) or LayerNorm of a tracked f32 `x` over its last axis, with the fused
/// kernel forward and a written-out backward.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `w` (or `b`) is not `[d]` for `x [.., d]`, or `x` is not
/// on the CPU (the op has only a CPU forward).
pub(crate) fn tracked(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let op = Norm {
        w: w.detach(),
        b: b.map(Tensor::detach),
        eps,
    };
    apply(x, op)
}

/// `(y, dy)` of a norm: `y` of the primal `x [1, pos, d]`, `dy [n, pos, d]` of the tangents
/// `dx [n, pos, d]`: `d(c / r) = dc / r − c · mean(c ⊙ dc) / r³` with `c` the (centred) input and
/// `r = sqrt(mean(c²) + eps)`, times the weight.
pub(crate) fn norm_jvp(
    spec: NormSpec,
    w: &NormWeights,
    x: &Tensor,
    dx: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (x32, dx32) = (x.to_dtype(DType::F32)?, dx.to_dtype(DType::F32)?);
    let (c, dc) = match spec.kind {
        NormKind::LayerNorm => (
            x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
            dx32.broadcast_sub(&dx32.mean_keepdim(D::Minus1)?)?,
        ),
        NormKind::RmsNorm => (x32, dx32),
    };
    let r = (c.sqr()?.mean_keepdim(D::Minus1)? + spec.eps)?.sqrt()?;
    let mut y = c
        .broadcast_div(&r)?
        .to_dtype(spec.dtype)?
        .broadcast_mul(&w.w)?;
    if let Some(b) = &w.b {
        y = y.broadcast_add(b)?;
    }
    let dy = rms_tangent(&c, &dc, &r)?
        .to_dtype(spec.dtype)?
        .broadcast_mul(&w.w)?;
    Ok((y, dy))
}

/// `dc / r − c · mean(c ⊙ dc) / r³` over the last dimension (f32).
fn rms_tangent(c: &Tensor, dc: &Tensor, r: &Tensor) -> Result<Tensor> {
    let m = dc.broadcast_mul(c)?.mean_keepdim(D::Minus1)?;
    let r3 = r.powf(3.0)?;
    Ok((dc.broadcast_div(r)? - c.broadcast_mul(&m.broadcast_div(&r3)?)?)?)
}

/// The q/k RMSNorm over the last axis of `x` (`[1, pos, heads, d_head]` per head, or
/// `[1, pos, heads * d_head]` over all heads) and tangents `[n, ...]`, with the scale `w` of the
/// last axis's width.
pub(crate) fn head_rms_jvp(
    spec: NormSpec,
    w: &Tensor,
    x: &Tensor,
    dx: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let spec = NormSpec {
        kind: NormKind::RmsNorm,
        ..spec
    };
    let w = NormWeights {
        w: w.clone(),
        b: None,
    };
    norm_jvp(spec, &w, x, dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::same_as;
    use candle_core::Device;

    #[test]
    fn backward_is_the_composed_ops_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        same_as(
            &[2, 3, 8],
            |x| tracked(x, &w, None, 1e-6),
            |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-6),
        );
        same_as(
            &[2, 3, 8],
            |x| tracked(x, &w, Some(&b), 1e-5),
            |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-5),
        );
    }
}
