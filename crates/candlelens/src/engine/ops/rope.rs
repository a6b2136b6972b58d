//! Rotary position embeddings: the cos/sin tables (HF's inverse frequencies, linear and Llama 3
//! scaling), the rotation of queries and keys ([`rotate`]: halves as HF / NeoX, adjacent pairs
//! as GPT-J, partial rotary), its backward (the rotation by `−θ`), and its forward-mode rule
//! (rotary is linear: tangents rotate like the values).

use candle_core::{DType, Device, Tensor};

use super::custom::{apply, Differentiable};

use crate::engine::config::RopeScaling;
use crate::error::Result;

/// Inverse frequencies of rotary dimension pairs, as HF computes them (f32).
pub(crate) fn inv_freq(dim: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = base as f32;
    let mut f: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for x in f.iter_mut() {
                *x /= *factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let (factor, low, high, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *old as f32,
            );
            let low_wl = old / low;
            let high_wl = old / high;
            for x in f.iter_mut() {
                let wl = 2.0 * std::f32::consts::PI / *x;
                let scaled = if wl > low_wl { *x / factor } else { *x };
                let medium = wl >= high_wl && wl <= low_wl;
                *x = if medium {
                    let s = (old / wl - low) / (high - low);
                    (1.0 - s) * scaled / factor + s * scaled
                } else {
                    scaled
                };
            }
        }
    }
    f
}

/// `(cos, sin)` `[seq, dim / 2]` of positions `0..seq` in `dtype`.
///
/// # Errors
/// None: only candle's allocation failure on `dev`.
pub(crate) fn rope_tables(
    dim: usize,
    base: f64,
    scaling: Option<&RopeScaling>,
    seq: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let f = inv_freq(dim, base, scaling);
    let mut cos = Vec::with_capacity(seq * f.len());
    let mut sin = Vec::with_capacity(seq * f.len());
    for p in 0..seq {
        for &w in &f {
            let a = p as f32 * w;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (seq, f.len());
    Ok((
        Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    ))
}

/// Rotary on `x [batch, pos, heads, d_head]` with the `(cos, sin)` rows of its positions: the
/// first `dim` dims of each head rotate, as two halves (HF / NeoX) or as adjacent pairs
/// (`interleaved`, GPT-J); the rest pass through. candle's fused kernels where nothing is
/// tracked; in a run with gradients the same kernels with a written-out backward on the CPU,
/// candle's composed ops elsewhere.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `x` is not 4-D, `dim` is odd or above `d_head`, or
/// `cos`/`sin` have fewer than `pos` rows, a width other than `dim / 2`, or another dtype than `x`.
pub(crate) fn rotate(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    dim: usize,
    interleaved: bool,
) -> Result<Tensor> {
    let d_head = x.dim(3)?;
    let whole = |r: &Tensor| -> Result<Tensor> {
        let tracked = r.track_op();
        let grad_op = tracked && r.device().is_cpu();
        if !interleaved && !tracked {
            return Ok(candle_nn::rotary_emb::rope_thd(&r.contiguous()?, cos, sin)?);
        }
        if !interleaved && grad_op {
            return apply(r, Rope::new(cos, sin, false));
        }
        let bhtd = r.transpose(1, 2)?.contiguous()?;
        let out = match (interleaved, tracked) {
            (true, false) => candle_nn::rotary_emb::rope_i(&bhtd, cos, sin)?,
            (true, true) if grad_op => apply(&bhtd, Rope::new(cos, sin, true))?,
            (true, true) => candle_nn::rotary_emb::rope_i_slow(&bhtd, cos, sin)?,
            (false, _) => candle_nn::rotary_emb::rope_slow(&bhtd, cos, sin)?,
        };
        Ok(out.transpose(1, 2)?.contiguous()?)
    };
    if dim == d_head {
        return whole(x);
    }
    let rot = whole(&x.narrow(3, 0, dim)?)?;
    let pass = x.narrow(3, dim, d_head - dim)?;
    Ok(Tensor::cat(&[&rot, &pass], 3)?)
}

/// Rotary embedding of `[batch, pos, heads, d]` (halves, `rope_thd`) or `[batch, heads, pos,
/// d]` (adjacent pairs, `rope_i`).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    fn turn(&self, x: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x.contiguous()?, &self.cos, sin)
        } else {
            candle_nn::rotary_emb::rope_thd(&x.contiguous()?, &self.cos, sin)
        }
    }
}

impl Differentiable for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.turn(x, &self.sin)?)
    }

    fn backward(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        // each pair turns by θ; the transpose of a rotation turns by −θ
        self.turn(g, &self.sin.neg()?)
    }
}

impl Rope {
    fn new(cos: &Tensor, sin: &Tensor, interleaved: bool) -> Self {
        Rope {
            cos: cos.detach(),
            sin: sin.detach(),
            interleaved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::same_as;

    #[test]
    fn backward_is_the_composed_ops_gradient() {
        let dev = Device::Cpu;
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        // halves on [b, t, h, d]; the composed reference works on [b, h, t, d]
        same_as(
            &[2, 5, 3, 8],
            |x| apply(x, Rope::new(&cos, &sin, false)),
            |x| {
                let r = candle_nn::rotary_emb::rope_slow(
                    &x.transpose(1, 2)?.contiguous()?,
                    &cos,
                    &sin,
                )?;
                r.transpose(1, 2)?.contiguous()
            },
        );
        same_as(
            &[2, 3, 5, 8],
            |x| apply(x, Rope::new(&cos, &sin, true)),
            |x| candle_nn::rotary_emb::rope_i_slow(x, &cos, &sin),
        );
    }
}
