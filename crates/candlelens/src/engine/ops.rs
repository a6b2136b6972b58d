//! The small operations every block and the unembedding share: firing a hook point,
//! `x W^T + b`, the MLP activations, and the norms (LayerNorm / RMSNorm, per-head RMSNorm).
//! Free functions of tensors and config switches, so that [`super::block`] and
//! [`super::model`] both build on them without depending on each other.

use candle_core::{DType, Tensor, D};

use crate::engine::config::{Activation, ModelConfig, NormKind};
use crate::engine::hooks::{HookPoint, HookSink};
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

/// Up to this many rows, [`linear`] computes `(W xᵀ)ᵀ`: the gemm then packs the few rows of
/// `x` instead of the whole weight matrix, 1.3–1.8× faster for a short prompt's projections and
/// its unembedding (measured on 2 cores, AVX-512); from here on both orders run alike.
pub const FEW_ROWS: usize = 512;

/// `x W^T + b` for `x [.., d_in]`, `w [d_out, d_in]`, `b [d_out]` -> `[.., d_out]`.
///
/// # Errors
/// Shape mismatches (a bug in the caller).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / d_in.max(1);
    let x2 = x.reshape((rows, d_in))?;
    let y = if rows <= FEW_ROWS && w.is_contiguous() && !x.track_op() {
        transpose_2d(&w.matmul(&x2.t()?)?)?
    } else {
        x2.matmul(&w.t()?)?
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

/// `t [r, c]` -> `[c, r]`, contiguous. For contiguous f32 tensors on the CPU a cache-blocked
/// copy on every core (5× candle's strided copy for a `[262144, 38]` unembedding); otherwise
/// candle's `t().contiguous()`.
///
/// # Errors
/// Tensor errors; `t` must be 2-D.
pub fn transpose_2d(t: &Tensor) -> Result<Tensor> {
    use candle_core::{Storage, WithDType};
    let (r, c) = t.dims2()?;
    let fast = t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op();
    if fast {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let src = &f32::cpu_storage_as_slice(cpu)?[start..end];
            let out = transpose_f32(src, r, c);
            drop(storage);
            return Ok(Tensor::from_vec(out, (c, r), t.device())?);
        }
    }
    Ok(t.t()?.contiguous()?)
}

/// `out[j][i] = src[i][j]` for `src [rows, cols]`, in 32 × 32 tiles, output rows split over
/// the rayon pool.
fn transpose_f32(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 32;
    let mut out = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(cb, chunk)| {
            let c0 = cb * B;
            let cn = chunk.len() / rows;
            for r0 in (0..rows).step_by(B) {
                let rn = (rows - r0).min(B);
                for j in 0..cn {
                    let o = &mut chunk[j * rows + r0..j * rows + r0 + rn];
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = src[(r0 + i) * cols + c0 + j];
                    }
                }
            }
        });
    out
}

/// The tanh-approximated GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/π) (x + 0.044715 x³)`
/// (HF's `gelu_pytorch_tanh` / `gelu_new`). On contiguous f32 CPU tensors it runs as
/// `x / (1 + exp(−2u))` — the same function, since `(1 + tanh u) / 2 = σ(2u)` — on every core;
/// candle's kernel calls the scalar `tanhf`, which made it a fifth of a Gemma forward.
/// Elsewhere (other dtypes, devices, tensors tracked for autograd) candle's `gelu`.
///
/// # Errors
/// Tensor errors.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    use candle_core::{Storage, WithDType};
    use rayon::prelude::*;
    if x.dtype() == DType::F32 && x.device().is_cpu() && !x.track_op() {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let src = &f32::cpu_storage_as_slice(cpu)?[start..end];
            let k = (2.0f32 / std::f32::consts::PI).sqrt();
            let mut out = vec![0f32; src.len()];
            out.par_chunks_mut(4096)
                .zip(src.par_chunks(4096))
                .for_each(|(o, s)| {
                    for (o, &v) in o.iter_mut().zip(s) {
                        let u2 = 2.0 * k * v * (1.0 + 0.044715 * v * v);
                        *o = v / (1.0 + (-u2).exp());
                    }
                });
            drop(storage);
            return Ok(Tensor::from_vec(out, x.shape(), x.device())?);
        }
    }
    Ok(x.gelu()?)
}

/// The MLP's activation function, elementwise.
///
/// # Errors
/// Tensor errors.
pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => gelu_tanh(x)?,
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
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
        if !hooked && self.dtype == DType::F32 && x.dtype() == DType::F32 && !x.track_op() {
            let eps = self.eps as f32;
            match (self.kind, &w.b) {
                (NormKind::RmsNorm, None) => {
                    return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &w.w, eps)?)
                }
                (NormKind::LayerNorm, Some(b)) => {
                    return Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &w.w, b, eps)?)
                }
                _ => {}
            }
        }
        let x32 = x.to_dtype(DType::F32)?;
        let centred = match self.kind {
            NormKind::LayerNorm => x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
            NormKind::RmsNorm => x32,
        };
        let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let scale = match hooks {
            Some((hs, _)) => hook(sink, hs, scale.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?,
            None => scale,
        };
        let mut y = centred
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
        if self.dtype == DType::F32 && x.dtype() == DType::F32 && !x.track_op() {
            return Ok(candle_nn::ops::rms_norm(
                &x.contiguous()?,
                w,
                self.eps as f32,
            )?);
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
    fn blocked_transpose_is_the_transpose() {
        for (r, c) in [(1, 1), (3, 70), (33, 31), (64, 32), (100, 5)] {
            let v: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let t = Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap();
            let fast = transpose_2d(&t).unwrap();
            let slow = t.t().unwrap().contiguous().unwrap();
            assert_eq!(fast.dims(), &[c, r]);
            assert_eq!(
                fast.to_vec2::<f32>().unwrap(),
                slow.to_vec2::<f32>().unwrap(),
                "{r} x {c}"
            );
        }
    }

    #[test]
    fn fast_gelu_tanh_is_candles() {
        let x = Tensor::arange(-12f32, 12f32, &Device::Cpu)
            .unwrap()
            .affine(0.37, 0.01)
            .unwrap();
        let fast: Vec<f32> = gelu_tanh(&x).unwrap().to_vec1().unwrap();
        let slow: Vec<f32> = x.gelu().unwrap().to_vec1().unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn linear_is_the_same_for_few_and_many_rows() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1f32, (40, 24), &dev).unwrap();
        let b = Tensor::randn(0f32, 1f32, 40, &dev).unwrap();
        for rows in [1usize, 7, FEW_ROWS, FEW_ROWS + 1] {
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
