//! The projection `x Wᵀ + b` — every q/k/v/o projection, MLP matrix and the unembedding — with
//! its CPU kernel (the few-row product order, gemm straight into an unfilled buffer, a blocked
//! transpose), its backward (differentiable in the input only: no analysis asks for weight
//! gradients) and its forward-mode rule (it is linear: tangents go through `W` without the
//! bias).

use candle_core::{DType, Tensor};

use super::custom::{apply, Differentiable};
use super::fastmath;
use crate::error::Result;

/// `x W^T + b` for `x [.., d_in]`, `w [d_out, d_in]`, `b [d_out]` -> `[.., d_out]`.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `x`'s last axis is not `w`'s `d_in`, `w` is not
/// `[d_out, d_in]`, `b` is not `[d_out]`, or `x`, `w` and `b` differ in dtype or device.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / d_in.max(1);
    let x2 = x.reshape((rows, d_in))?;
    let y = if x.track_op() {
        // a run with gradients: skip the weight's gradient in the backward pass
        linear_input_grad(&x2, w)?
    } else {
        product(&x2, w)?
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

/// `(y, dy)` of [`linear`] for the primal `x` and tangents `dx`: `y = x Wᵀ + b`, `dy = dx Wᵀ`.
///
/// # Errors
/// As [`linear`], for `x` and for `dx` (whose last axis must also be `w`'s `d_in`).
pub(crate) fn linear_jvp(
    x: &Tensor,
    dx: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    Ok((linear(x, w, b)?, linear(dx, w, None)?))
}

/// Up to this many rows, [`product`] (and so [`linear`]) computes `(W xᵀ)ᵀ`: the gemm then packs the few rows of
/// `x` instead of the whole weight matrix, 1.3–1.8× faster for a short prompt's projections and
/// its unembedding (measured on 2 cores, AVX-512); from here on both orders run alike.
pub(crate) const FEW_ROWS: usize = 512;

/// `x W^T` for `x [rows, d_in]` and `w [d_out, d_in]`: `(W xᵀ)ᵀ` up to [`FEW_ROWS`] rows,
/// `x Wᵀ` beyond.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `x` is not `[rows, d_in]` or `w` not `[d_out, d_in]`
/// with the same `d_in`, or they differ in dtype or device.
pub(crate) fn product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = product_f32(x, w)? {
        return Ok(y);
    }
    let rows = x.dim(0)?;
    if rows <= FEW_ROWS && w.is_contiguous() && !x.track_op() {
        return transpose_2d(&w.matmul(&x.t()?)?);
    }
    Ok(x.matmul(&w.t()?)?)
}

/// [`product`] beyond [`FEW_ROWS`] rows for contiguous untracked f32 CPU tensors: the gemm
/// call candle makes, straight into an output buffer that is not zero-filled first (candle's
/// fill was 2.4% of a batched forward). `None` where it does not apply. (The few-row order
/// stays with candle: gemm's microkernel wants the column-major `[d_out, rows]` output, which
/// then needs the transposed copy anyway.)
fn product_f32(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op();
    if !f32_cpu(x) || !f32_cpu(w) {
        return Ok(None);
    }
    let ((rows, d_in), (d_out, w_in)) = (x.dims2()?, w.dims2()?);
    if d_in != w_in || rows <= FEW_ROWS || d_in == 0 || d_out == 0 {
        return Ok(None);
    }
    let (gx, gw) = (x.storage_and_layout(), w.storage_and_layout());
    let (Some(xs), Some(ws)) = (
        fastmath::cpu_f32(&gx.0, gx.1)?,
        fastmath::cpu_f32(&gw.0, gw.1)?,
    ) else {
        return Ok(None);
    };
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let n = rows * d_out;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let (di, d_o) = (d_in as isize, d_out as isize);
    // SAFETY: the strides describe x [rows, d_in], w [d_out, d_in] and out [rows, d_out], all
    // in bounds; with read_dst false gemm writes every entry of out without reading it.
    unsafe {
        // out [rows, d_out] = x · Wᵀ (gemm transposes the problem to write column-major)
        gemm::gemm(
            rows,
            d_out,
            d_in,
            out.as_mut_ptr(),
            1,
            d_o,
            false,
            xs.as_ptr(),
            1,
            di,
            ws.as_ptr(),
            di,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
        out.set_len(n);
    }
    drop((gx, gw));
    Ok(Some(Tensor::from_vec(out, (rows, d_out), x.device())?))
}

/// `t [r, c]` -> `[c, r]`, contiguous. For contiguous f32 tensors on the CPU a cache-blocked
/// copy on every core (5× candle's strided copy for a `[262144, 38]` unembedding); otherwise
/// candle's `t().contiguous()`.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `t` is not 2-D.
pub(crate) fn transpose_2d(t: &Tensor) -> Result<Tensor> {
    let (r, c) = t.dims2()?;
    let fast = t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op();
    if fast {
        let (storage, layout) = t.storage_and_layout();
        if let Some(src) = fastmath::cpu_f32(&storage, layout)? {
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
    use std::mem::MaybeUninit;
    const B: usize = 32;
    let n = rows * cols;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    // every entry is written once: no zero fill first (the output of a cached run is fresh
    // memory, where a fill is a second pass)
    let fill = |cb: usize, chunk: &mut [MaybeUninit<f32>]| {
        let c0 = cb * B;
        let cn = chunk.len() / rows;
        for r0 in (0..rows).step_by(B) {
            let rn = (rows - r0).min(B);
            for j in 0..cn {
                let o = &mut chunk[j * rows + r0..j * rows + r0 + rn];
                for (i, v) in o.iter_mut().enumerate() {
                    v.write(src[(r0 + i) * cols + c0 + j]);
                }
            }
        }
    };
    let spare = &mut out.spare_capacity_mut()[..n];
    if n < fastmath::SERIAL_BELOW {
        spare
            .chunks_mut(B * rows)
            .enumerate()
            .for_each(|(cb, c)| fill(cb, c));
    } else {
        spare
            .par_chunks_mut(B * rows)
            .enumerate()
            .for_each(|(cb, c)| fill(cb, c));
    }
    // SAFETY: the chunks cover all n entries and `fill` wrote each of them.
    unsafe { out.set_len(n) };
    out
}

/// The product with a constant weight `w [d_out, d_in]` as a custom op on `x [rows, d_in]`.
struct ConstWeightProduct {
    w: Tensor,
}

impl Differentiable for ConstWeightProduct {
    fn name(&self) -> &'static str {
        "const-weight-product"
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // the untracked product, with the plain forward's kernel choice
        product(x, &self.w)
    }

    fn backward(&self, _x: &Tensor, _y: &Tensor, grad_res: &Tensor) -> candle_core::Result<Tensor> {
        // a metric of a few logits (a logit difference) leaves most columns of a large
        // unembedding's gradient at zero: multiply by the rows of W it needs only
        let (rows, d_out) = grad_res.dims2()?;
        if d_out >= 8192 && grad_res.dtype() == DType::F32 {
            let used: Vec<f32> = grad_res.abs()?.sum(0)?.to_vec1()?;
            let idx: Vec<u32> = (0..d_out as u32)
                .filter(|&j| used[j as usize] != 0.0)
                .collect();
            if idx.len() * 64 <= d_out {
                let n = idx.len();
                if n == 0 {
                    return Tensor::zeros(
                        (rows, self.w.dim(1)?),
                        grad_res.dtype(),
                        grad_res.device(),
                    );
                }
                let idx = Tensor::from_vec(idx, n, grad_res.device())?;
                let g = grad_res.index_select(&idx, 1)?;
                return g.matmul(&self.w.index_select(&idx, 0)?);
            }
        }
        grad_res.matmul(&self.w)
    }
}

/// `x W^T` for `x [rows, d_in]` and a constant `w [d_out, d_in]`, differentiable in `x` only
/// (on the CPU; elsewhere candle's matmul, which also differentiates in `w`).
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `x` is not `[rows, d_in]` for `w [d_out, d_in]`, or `x`
/// and `w` differ in dtype or device.
pub(crate) fn linear_input_grad(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(x.matmul(&w.t()?)?);
    }
    apply(x, ConstWeightProduct { w: w.detach() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::{max_abs, same_as};
    use candle_core::{Device, Var};

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
            let diff = max_abs((y.squeeze(0).unwrap() - want).unwrap());
            assert!(diff < 1e-4, "{rows} rows: {diff}");
        }
    }

    #[test]
    fn same_product_and_input_gradient_as_the_matmul() {
        let w = Tensor::randn(0f32, 1., (3, 7), &Device::Cpu).unwrap();
        same_as(&[5, 7], |x| linear_input_grad(x, &w), |x| x.matmul(&w.t()?));
    }

    #[test]
    fn a_sparse_gradient_of_a_wide_product_is_the_dense_one() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 16), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (20000, 16), &dev).unwrap();
        let pick = |y: &Tensor| -> Tensor {
            (y.narrow(1, 7, 1).unwrap() - y.narrow(1, 19000, 1).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let g = pick(&linear_input_grad(x.as_tensor(), &w).unwrap())
            .backward()
            .unwrap();
        let g2 = pick(&x.as_tensor().matmul(&w.t().unwrap()).unwrap())
            .backward()
            .unwrap();
        let d = max_abs((g.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap()).unwrap());
        assert!(d < 1e-5, "{d}");
    }
}
