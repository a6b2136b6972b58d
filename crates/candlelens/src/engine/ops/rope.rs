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
    let (cos, sin) = angles(&inv_freq(dim, base, scaling), 0..seq);
    let shape = (seq, dim / 2);
    Ok((
        Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    ))
}

/// `(cos, sin)` `[batch, seq, dim / 2]` of each prompt's own positions (`positions[b][j]`, the
/// position id of padded index `j` of prompt `b`: left-padded batches).
///
/// # Errors
/// None: only candle's allocation failure on `dev`.
pub(crate) fn rope_tables_per_prompt(
    dim: usize,
    base: f64,
    scaling: Option<&RopeScaling>,
    positions: &[Vec<usize>],
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let f = inv_freq(dim, base, scaling);
    let (cos, sin): (Vec<Vec<f32>>, Vec<Vec<f32>>) = positions
        .iter()
        .map(|row| angles(&f, row.iter().copied()))
        .unzip();
    let seq = positions.first().map_or(0, Vec::len);
    let shape = (positions.len(), seq, dim / 2);
    Ok((
        Tensor::from_vec(cos.concat(), shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin.concat(), shape, dev)?.to_dtype(dtype)?,
    ))
}

/// `cos` and `sin` of `p · f` for each position `p` and inverse frequency `f`, row-major.
fn angles(f: &[f32], positions: impl Iterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in positions {
        for &w in f {
            let a = p as f32 * w;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Rotary on `x [batch, heads, pos, d]` from candle's differentiable ops (runs with gradients
/// off the CPU): halves or adjacent pairs, with tables `[pos, d / 2]` shared by the batch or
/// `[batch, pos, d / 2]` per prompt.
fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    use candle_core::D;
    let (b, h, t, d) = x.dims4()?;
    // tables as [batch or 1, 1, pos, d / 2]
    let table = |c: &Tensor| -> Result<Tensor> {
        Ok(match c.rank() {
            2 => c.narrow(0, 0, t)?.unsqueeze(0)?.unsqueeze(0)?,
            _ => c.narrow(1, 0, t)?.unsqueeze(1)?,
        })
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    if interleaved {
        let x = x.reshape((b, h, t, d / 2, 2))?;
        let (x0, x1) = (x.narrow(D::Minus1, 0, 1)?, x.narrow(D::Minus1, 1, 1)?);
        let (c, s) = (cos.unsqueeze(D::Minus1)?, sin.unsqueeze(D::Minus1)?);
        let y0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
        let y1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
        return Ok(Tensor::cat(&[y0, y1], D::Minus1)?.flatten_from(D::Minus2)?);
    }
    let (cos, sin) = (
        Tensor::cat(&[&cos, &cos], D::Minus1)?,
        Tensor::cat(&[&sin, &sin], D::Minus1)?,
    );
    let half = d / 2;
    let rotated = Tensor::cat(
        &[
            &x.narrow(D::Minus1, half, d - half)?.neg()?,
            &x.narrow(D::Minus1, 0, half)?,
        ],
        D::Minus1,
    )?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// Rotary on `x [batch, pos, heads, d_head]` with the `(cos, sin)` rows of its positions: the
/// first `dim` dims of each head rotate, as two halves (HF / NeoX) or as adjacent pairs
/// (`interleaved`, GPT-J); the rest pass through. The tables are `[pos, d / 2]`, or `[batch,
/// pos, d / 2]` for a batch whose prompts count positions of their own (left padding).
/// candle's fused kernels where nothing is tracked; in a run with gradients the same kernels
/// with a written-out backward on the CPU, composed ops elsewhere.
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
            (_, _) => composed(&bhtd, cos, sin, interleaved)?,
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
    use crate::engine::ops::custom::testing::{max_abs, same_as};

    #[test]
    fn per_prompt_tables_and_the_composed_rotation_agree_with_the_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 5, 3, 8), &dev).unwrap();
        let positions = vec![vec![0, 1, 2, 3, 4], vec![0, 0, 0, 1, 2]];
        let (c, s) =
            rope_tables_per_prompt(8, 10_000.0, None, &positions, DType::F32, &dev).unwrap();
        for interleaved in [false, true] {
            let fused = rotate(&x, &c, &s, 8, interleaved).unwrap();
            let slow = composed(
                &x.transpose(1, 2).unwrap().contiguous().unwrap(),
                &c,
                &s,
                interleaved,
            )
            .unwrap()
            .transpose(1, 2)
            .unwrap();
            assert!(max_abs((&fused - &slow).unwrap()) < 1e-5);
            // prompt 1's padded index 4 has position 2: the shared table's row 2 rotates it
            let (c2, s2) = rope_tables(8, 10_000.0, None, 5, DType::F32, &dev).unwrap();
            let at = |t: &Tensor| t.narrow(0, 1, 1).unwrap().narrow(1, 4, 1).unwrap();
            let row2 = |t: &Tensor| t.narrow(0, 2, 1).unwrap();
            let want = rotate(&at(&x), &row2(&c2), &row2(&s2), 8, interleaved).unwrap();
            assert!(max_abs((&at(&fused) - &want).unwrap()) < 1e-5);
        }
    }

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
