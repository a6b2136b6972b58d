//! LayerNorm / RMSNorm on the CPU, vectorised. Where no hook reads the norm, [`norm`] runs it
//! in one pass per row (candle's fused CPU norms sum and scale one element at a time). A run
//! that caches or patches `hook_scale` and `hook_normalized` cannot use a fused norm (it
//! returns neither), and composing the norm from candle's ops costs seven passes and seven
//! small tensors: there [`norm_scale`] computes the per-row scale the scale hook sees and
//! [`norm_apply`] normalises with whatever scale the hook handed back. Contiguous untracked
//! f32 CPU tensors; `None` elsewhere (the caller composes candle's ops, the same function).

use candle_core::{DType, Layout, Storage, Tensor};
use rayon::prelude::*;

use crate::engine::ops::fastmath;
use crate::error::Result;

/// The f32 data of a contiguous, untracked f32 CPU tensor's storage, or `None`.
fn data<'a>(t: &Tensor, storage: &'a Storage, layout: &Layout) -> Result<Option<&'a [f32]>> {
    if t.dtype() != DType::F32 || t.track_op() {
        return Ok(None);
    }
    fastmath::cpu_f32(storage, layout)
}

/// Rows per parallel task: about 16k elements each.
fn rows_per_task(d: usize) -> usize {
    (16_384 / d.max(1)).max(1)
}

/// The mean of a row (LayerNorm's centre), or 0 (RMSNorm).
#[inline(always)]
fn centre(row: &[f32], centred: bool) -> f32 {
    if centred {
        fastmath::sum_by(row, |v| v) / row.len() as f32
    } else {
        0.0
    }
}

fastmath::simd_fn! {
    /// The scales of the rows of `xr` into `o`: [`norm_scale`]'s tasks, in SIMD builds.
    fn scale_rows, scale_rows_in(o: &mut [f32], xr: &[f32], d: usize, centred: bool, eps: f64) {
        for (o, row) in o.iter_mut().zip(xr.chunks(d)) {
            let mu = centre(row, centred);
            let ms = fastmath::sum_by(row, |v| (v - mu) * (v - mu)) / d as f32;
            *o = (ms + eps as f32).sqrt();
        }
    }
}

fastmath::simd_fn! {
    /// The normalised rows of `xr` into `o`: [`norm_apply`]'s tasks, in SIMD builds.
    fn apply_rows, apply_rows_in(
        o: &mut [std::mem::MaybeUninit<f32>],
        xr: &[f32],
        sr: &[f32],
        d: usize,
        centred: bool,
        wb: (&[f32], Option<&[f32]>),
    ) {
        // the rows of `xr` with scales `sr`, weight and bias `wb`.
        let (ws, bs) = wb;
        for ((o, row), &s) in o.chunks_mut(d).zip(xr.chunks(d)).zip(sr) {
            let mu = centre(row, centred);
            match bs {
                Some(bs) => {
                    for (((o, &v), &wv), &bv) in o.iter_mut().zip(row).zip(ws).zip(bs) {
                        o.write((v - mu) / s * wv + bv);
                    }
                }
                None => {
                    for ((o, &v), &wv) in o.iter_mut().zip(row).zip(ws) {
                        o.write((v - mu) / s * wv);
                    }
                }
            }
        }
    }
}

/// The norm's scale `sqrt(mean((x − μ)²) + eps)` of each row of `x [.., d]` (μ the row's mean
/// for LayerNorm, `centred`, and 0 for RMSNorm): `[.., 1]`, what `hook_scale` sees.
///
/// # Errors
/// Only a raw [`crate::LensError::Candle`] for a 0-d `x` (no last axis); inputs the kernel does not
/// take give `Ok(None)`.
pub(crate) fn norm_scale(x: &Tensor, centred: bool, eps: f64) -> Result<Option<Tensor>> {
    let (gx, lx) = x.storage_and_layout();
    let Some(xs) = data(x, &gx, lx)? else {
        return Ok(None);
    };
    let d = x.dim(candle_core::D::Minus1)?;
    if d == 0 {
        return Ok(None);
    }
    let rows = xs.len() / d;
    let per = rows_per_task(d);
    let mut out = vec![0f32; rows];
    let task =
        |o: &mut [f32], xr: &[f32]| fastmath::with_simd(|| scale_rows(o, xr, d, centred, eps));
    if xs.len() < fastmath::SERIAL_BELOW {
        task(&mut out, xs);
    } else {
        out.par_chunks_mut(per)
            .zip(xs.par_chunks(per * d))
            .for_each(|(o, xr)| task(o, xr));
    }
    drop(gx);
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = 1;
    }
    Ok(Some(Tensor::from_vec(out, dims, x.device())?))
}

/// `(x − μ) / scale ⊙ w (+ b)` for each row of `x [.., d]` with its `scale [.., 1]` (as the
/// scale hook returned it): what `hook_normalized` sees. `None` where the kernel does not
/// apply (a tracked or non-f32 scale or weight, shapes that do not match).
///
/// # Errors
/// Only a raw [`crate::LensError::Candle`] for a 0-d `x` (no last axis); inputs the kernel does not
/// take give `Ok(None)`.
pub(crate) fn norm_apply(
    x: &Tensor,
    scale: &Tensor,
    centred: bool,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let mut want = x.dims().to_vec();
    if let Some(last) = want.last_mut() {
        *last = 1;
    }
    if scale.dims() != want.as_slice() {
        return Ok(None);
    }
    normalise(x, Scale::Given(scale), centred, w, b)
}

/// Where each row's scale comes from: a tensor `[.., 1]` (as a hook returned it), or the row
/// itself with this epsilon.
#[derive(Clone, Copy)]
enum Scale<'a> {
    Given(&'a Tensor),
    Computed(f64),
}

/// [`norm_apply`] and [`norm`]: `(x − μ) / scale ⊙ w (+ b)` per row of `x [.., d]`, rows in
/// blocks on every core (or on the calling thread for little work), written once into an
/// unfilled buffer. `None` where the kernel does not apply.
fn normalise(
    x: &Tensor,
    scale: Scale,
    centred: bool,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let d = x.dim(candle_core::D::Minus1)?;
    if d == 0 || w.dims() != [d] || b.is_some_and(|b| b.dims() != [d]) {
        return Ok(None);
    }
    let (gx, lx) = x.storage_and_layout();
    let (gw, lw) = w.storage_and_layout();
    let gb = b.map(|b| b.storage_and_layout());
    let gs = match scale {
        Scale::Given(s) => Some(s.storage_and_layout()),
        Scale::Computed(_) => None,
    };
    let (Some(xs), Some(ws)) = (data(x, &gx, lx)?, data(w, &gw, lw)?) else {
        return Ok(None);
    };
    let bs = match (b, &gb) {
        (Some(b), Some((g, l))) => match data(b, g, l)? {
            Some(s) => Some(s),
            None => return Ok(None),
        },
        _ => None,
    };
    let ss = match (scale, &gs) {
        (Scale::Given(s), Some((g, l))) => match data(s, g, l)? {
            Some(s) => Some(s),
            None => return Ok(None),
        },
        _ => None,
    };
    let eps = match scale {
        Scale::Computed(eps) => eps,
        Scale::Given(_) => 0.0,
    };
    // rows [r0, r1) of x into their block of the output
    let task = |o: &mut [std::mem::MaybeUninit<f32>], r0: usize, r1: usize| {
        let xr = &xs[r0 * d..r1 * d];
        match ss {
            Some(ss) => apply_rows(o, xr, &ss[r0..r1], d, centred, (ws, bs)),
            None => norm_rows(o, xr, d, centred, eps, (ws, bs)),
        }
    };
    let n = xs.len();
    let rows = n / d;
    let per = rows_per_task(d);
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < fastmath::SERIAL_BELOW {
        task(spare, 0, rows);
    } else {
        spare
            .par_chunks_mut(per * d)
            .enumerate()
            .for_each(|(i, o)| task(o, i * per, (i * per + per).min(rows)));
    }
    // SAFETY: the blocks cover all rows, so all n entries, and each was written.
    unsafe { out.set_len(n) };
    drop((gx, gw, gb, gs));
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

fastmath::simd_fn! {
    /// The scales and then the normalised rows of `xr` into `o`: [`norm`]'s tasks.
    fn norm_rows, norm_rows_in(
        o: &mut [std::mem::MaybeUninit<f32>],
        xr: &[f32],
        d: usize,
        centred: bool,
        eps: f64,
        wb: (&[f32], Option<&[f32]>),
    ) {
        // each row's scale, then the row normalised with it (the row is still in cache for
        // the second pass)
        for (o, row) in o.chunks_mut(d).zip(xr.chunks(d)) {
            let mut scale = [0f32];
            scale_rows_in(&mut scale, row, d, centred, eps);
            apply_rows_in(o, row, &scale, d, centred, wb);
        }
    }
}

/// The whole norm, `(x − μ) / sqrt(mean((x − μ)²) + eps) ⊙ w (+ b)` per row of `x [.., d]`,
/// where no hook reads its scale: one vectorised pass per row on every core (candle's fused
/// CPU norms sum and scale one element at a time). `None` where the kernel does not apply.
///
/// # Errors
/// Only a raw [`crate::LensError::Candle`] for a 0-d `x` (no last axis); inputs the kernel does not
/// take give `Ok(None)`.
pub(crate) fn norm(
    x: &Tensor,
    centred: bool,
    eps: f64,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    normalise(x, Scale::Computed(eps), centred, w, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::max_abs;
    use candle_core::{Device, D};

    #[test]
    fn the_two_passes_equal_the_composed_norm() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0.5f32, 2f32, (3, 5, 24), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1f32, 24, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1f32, 24, &dev).unwrap();
        for (centred, bias) in [(false, None), (true, Some(&b))] {
            let c = if centred {
                x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
                    .unwrap()
            } else {
                x.clone()
            };
            let scale_ref = (c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap();
            let mut y_ref = c
                .broadcast_div(&scale_ref)
                .unwrap()
                .broadcast_mul(&w)
                .unwrap();
            if let Some(b) = bias {
                y_ref = y_ref.broadcast_add(b).unwrap();
            }
            let scale = norm_scale(&x, centred, 1e-5).unwrap().unwrap();
            let diff = |a: &Tensor, b: &Tensor| max_abs((a - b).unwrap());
            assert!(diff(&scale, &scale_ref) < 1e-5, "scale, centred {centred}");
            let y = norm_apply(&x, &scale, centred, &w, bias).unwrap().unwrap();
            assert!(diff(&y, &y_ref) < 1e-5, "normalized, centred {centred}");
            let whole = norm(&x, centred, 1e-5, &w, bias).unwrap().unwrap();
            assert!(diff(&whole, &y_ref) < 1e-5, "whole norm, centred {centred}");
            // a scale the hook replaced is the one applied
            let doubled = (&scale * 2.0).unwrap();
            let y2 = norm_apply(&x, &doubled, centred, &w, None)
                .unwrap()
                .unwrap();
            let want = c
                .broadcast_div(&doubled)
                .unwrap()
                .broadcast_mul(&w)
                .unwrap();
            assert!(diff(&y2, &want) < 1e-5, "replaced scale, centred {centred}");
        }
        // shapes that do not match are left to candle
        let bad = Tensor::ones((3, 5, 2), DType::F32, &dev).unwrap();
        assert!(norm_apply(&x, &bad, false, &w, None).unwrap().is_none());
    }
}
