//! The softmax over the last axis — attention's pattern: a vectorised CPU kernel (also the
//! inner step of the fused attention kernel, [`softmax_rows`]), the backward of a run with
//! gradients (`g ↦ y ⊙ (g − Σ g ⊙ y)`), and the forward-mode rule ([`softmax_jvp`]).

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use super::custom::{apply, Differentiable};
use super::fastmath;
use crate::error::Result;

/// The pattern of `scores [.., t]`: the softmax over the last axis computed in f32, returned
/// in `dtype`. The CPU kernel where it applies; candle's fused kernel for other untracked
/// tensors; in a run with gradients the fused kernel with a written-out backward on the CPU and
/// candle's composed (differentiable) ops elsewhere.
///
/// # Errors
/// Only a raw [`crate::LensError::Candle`] for a 0-d `scores` (no last axis).
pub(crate) fn softmax(scores: &Tensor, dtype: DType) -> Result<Tensor> {
    let scores32 = scores.to_dtype(DType::F32)?;
    if let Some(pattern) = kernel(&scores32)? {
        return Ok(pattern.to_dtype(dtype)?);
    }
    Ok(if !scores32.track_op() {
        candle_nn::ops::softmax_last_dim(&scores32)?
    } else if scores32.device().is_cpu() {
        apply(&scores32, Softmax)?
    } else {
        candle_nn::ops::softmax(&scores32, D::Minus1)?
    }
    .to_dtype(dtype)?)
}

/// The tangents of a softmax's output `a = softmax(s)` for tangents `ds` of its input:
/// `da = a ⊙ (ds − Σ a ⊙ ds)` over the last axis (f32 in, f32 out).
///
/// # Errors
/// Shapes that do not broadcast.
pub(crate) fn softmax_jvp(a: &Tensor, ds: &Tensor) -> Result<Tensor> {
    let a_ds = ds.broadcast_mul(a)?;
    Ok((&a_ds - a.broadcast_mul(&a_ds.sum_keepdim(D::Minus1)?)?)?)
}

/// The softmax over the last axis of `scores [.., t]` on the CPU, on the pool the products run
/// on (candle's fused softmax does the same arithmetic on a thread pool of its own), or `None`
/// where the kernel does not apply (another dtype or device, a tracked tensor).
///
/// # Errors
/// Only a raw [`crate::LensError::Candle`] for a 0-d `scores` (no last axis); inputs the kernel
/// does not take give `Ok(None)`.
pub(crate) fn kernel(scores: &Tensor) -> Result<Option<Tensor>> {
    if scores.dtype() != DType::F32 || !scores.device().is_cpu() || scores.track_op() {
        return Ok(None);
    }
    let sc = scores.contiguous()?;
    let t = sc.dim(D::Minus1)?;
    if t == 0 {
        return Ok(None);
    }
    let mut out = {
        let (g, l) = sc.storage_and_layout();
        match fastmath::cpu_f32(&g, l)? {
            Some(s) => s.to_vec(),
            None => return Ok(None),
        }
    };
    let rows = (16_384 / t).max(1);
    if out.len() < fastmath::SERIAL_BELOW {
        softmax_rows(&mut out, t);
    } else {
        out.par_chunks_mut(rows * t)
            .for_each(|c| softmax_rows(c, t));
    }
    Ok(Some(Tensor::from_vec(out, sc.shape(), sc.device())?))
}

fastmath::simd_fn! {
    /// Softmax of each row of `s [rows, t]` in place, through the vectorised `exp`: the
    /// row's maximum, `e^(x − max)`, their sum, the quotients (as candle's kernel, which
    /// divides).
    pub(crate) fn softmax_rows, softmax_rows_in(s: &mut [f32], t: usize) {
        const L: usize = 16;
        for row in s.chunks_mut(t) {
            // reductions over 16 lanes, so that they vectorise
            let mut m = [f32::NEG_INFINITY; L];
            let mut chunks = row.chunks_exact(L);
            for c in &mut chunks {
                for (m, &x) in m.iter_mut().zip(c) {
                    *m = m.max(x);
                }
            }
            let max = chunks.remainder().iter().fold(
                m.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                |a, &x| a.max(x),
            );
            for x in row.iter_mut() {
                *x = fastmath::exp(*x - max);
            }
            let mut acc = [0f32; L];
            let mut chunks = row.chunks_exact(L);
            for c in &mut chunks {
                for (a, &x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            let sum = acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
    }
}

/// Softmax over the last axis.
struct Softmax;

impl Differentiable for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }

    fn backward(&self, _x: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let y = res.detach();
        let s = (g * &y)?.sum_keepdim(candle_core::D::Minus1)?;
        g.broadcast_sub(&s)? * y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::{max_abs, same_as};
    use candle_core::Device;

    #[test]
    fn backward_is_the_composed_ops_gradient() {
        same_as(
            &[2, 4, 5, 5],
            |x| apply(x, Softmax),
            |x| candle_nn::ops::softmax(x, candle_core::D::Minus1),
        );
    }

    #[test]
    fn kernel_and_jvp_match_the_composed_ops() {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f32, 3., (3, 7, 40), &dev).unwrap();
        let want = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let got = kernel(&s).unwrap().unwrap();
        assert!(max_abs((&got - &want).unwrap()) < 1e-6);
        // the tangent against central differences of the composed softmax
        let ds = Tensor::randn(0f32, 1., (3, 7, 40), &dev).unwrap();
        let eps = 1e-2;
        let up = candle_nn::ops::softmax(&(&s + (&ds * eps).unwrap()).unwrap(), D::Minus1).unwrap();
        let down =
            candle_nn::ops::softmax(&(&s - (&ds * eps).unwrap()).unwrap(), D::Minus1).unwrap();
        let fd = ((up - down).unwrap() / (2.0 * eps)).unwrap();
        let da = softmax_jvp(&want, &ds).unwrap();
        assert!(max_abs((da - fd).unwrap()) < 1e-3);
    }
}
