//! The fast untracked kernels the forward uses where candle's generic ones are slow on the CPU:
//! the few-row product order, a blocked transpose, GELU-tanh as `x·σ(2u)` on every core.
//! Shared by [`super::ops`] (the forward) and [`super::grad_ops`] (the same kernels forward in
//! a run with gradients).

use candle_core::{DType, Tensor};

use crate::engine::fastmath;
use crate::error::Result;

/// Up to this many rows, [`product`] (and so [`super::ops::linear`]) computes `(W xᵀ)ᵀ`: the gemm then packs the few rows of
/// `x` instead of the whole weight matrix, 1.3–1.8× faster for a short prompt's projections and
/// its unembedding (measured on 2 cores, AVX-512); from here on both orders run alike.
pub const FEW_ROWS: usize = 512;

/// `x W^T` for `x [rows, d_in]` and `w [d_out, d_in]`: `(W xᵀ)ᵀ` up to [`FEW_ROWS`] rows,
/// `x Wᵀ` beyond.
///
/// # Errors
/// Shape mismatches.
pub fn product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
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

/// The matrix products of attention alone — `(q kᵀ) v` per `(batch, head)`, no scale, mask
/// or softmax — run the way the forward's attention kernel runs them, for `q [batch, pos,
/// head, d_head]` and `k`, `v [batch, t, kv_head, d_head]` (f32 on the CPU; candle's batched
/// products elsewhere). What `lens bench forward --floor` times as attention's share of the
/// matmul floor.
///
/// # Errors
/// Shape mismatches.
pub fn attention_products(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if let Some(z) = crate::engine::attention_kernel::products_only(q, k, v)? {
        return Ok(z);
    }
    let (h, kv) = (q.dim(2)?, k.dim(2)?);
    let per_head = |x: &Tensor| -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        let (b, _, t, dh) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .expand((b, kv, h / kv.max(1), t, dh))?
            .reshape((b, h, t, dh))?)
    };
    let qt = q.transpose(1, 2)?.contiguous()?;
    let s = qt.matmul(&per_head(k)?.t()?)?;
    Ok(s.matmul(&per_head(v)?)?.transpose(1, 2)?.contiguous()?)
}

/// `t [r, c]` -> `[c, r]`, contiguous. For contiguous f32 tensors on the CPU a cache-blocked
/// copy on every core (5× candle's strided copy for a `[262144, 38]` unembedding); otherwise
/// candle's `t().contiguous()`.
///
/// # Errors
/// Tensor errors; `t` must be 2-D.
pub fn transpose_2d(t: &Tensor) -> Result<Tensor> {
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

/// The tanh-approximated GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/π) (x + 0.044715 x³)`
/// (HF's `gelu_pytorch_tanh` / `gelu_new`). On contiguous f32 CPU tensors it runs as
/// `x / (1 + exp(−2u))` — the same function, since `(1 + tanh u) / 2 = σ(2u)` — on every core;
/// candle's kernel calls the scalar `tanhf`, which made it a fifth of a Gemma forward.
/// Elsewhere (other dtypes, devices, tensors tracked for autograd) candle's `gelu`.
///
/// # Errors
/// Tensor errors.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() && !x.track_op() {
        let (storage, layout) = x.storage_and_layout();
        if let Some(src) = fastmath::cpu_f32(&storage, layout)? {
            let out = fastmath::par_map(src, fastmath::gelu_tanh);
            drop(storage);
            return Ok(Tensor::from_vec(out, x.shape(), x.device())?);
        }
    }
    Ok(x.gelu()?)
}

/// The gated MLP's `act(pre) ⊙ lin` in one pass on every core, for SiLU (SwiGLU) and
/// GELU-tanh (GeGLU) on contiguous f32 CPU tensors of one shape that autograd does not track,
/// without the intermediate tensor, through the vectorised `exp` of `engine::fastmath` (within a
/// few ulp of the composed ops). `None` where it does not apply.
///
/// # Errors
/// Tensor errors.
pub fn gated(
    act: crate::engine::config::Activation,
    pre: &Tensor,
    lin: &Tensor,
) -> Result<Option<Tensor>> {
    use crate::engine::config::Activation;
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op();
    if !matches!(act, Activation::Silu | Activation::GeluTanh)
        || !f32_cpu(pre)
        || !f32_cpu(lin)
        || pre.shape() != lin.shape()
    {
        return Ok(None);
    }
    let (sp, lp) = (pre.storage_and_layout(), lin.storage_and_layout());
    let (Some(p), Some(l)) = (
        fastmath::cpu_f32(&sp.0, sp.1)?,
        fastmath::cpu_f32(&lp.0, lp.1)?,
    ) else {
        return Ok(None);
    };
    let out = match act {
        Activation::Silu => fastmath::par_zip_map(p, l, |v, w| fastmath::silu(v) * w),
        _ => fastmath::par_zip_map(p, l, |v, w| fastmath::gelu_tanh(v) * w),
    };
    Ok(Some(Tensor::from_vec(out, pre.shape(), pre.device())?))
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
    fn the_fused_gate_is_the_activation_times_the_linear_part() {
        use crate::engine::config::Activation;
        let pre = Tensor::arange(-12f32, 12f32, &Device::Cpu)
            .unwrap()
            .affine(0.37, 0.01)
            .unwrap();
        let lin = pre.affine(-0.5, 0.3).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let fused: Vec<f32> = gated(act, &pre, &lin).unwrap().unwrap().to_vec1().unwrap();
            let apart = (crate::engine::ops::activation(act, &pre).unwrap() * &lin).unwrap();
            for (a, b) in fused.iter().zip(apart.to_vec1::<f32>().unwrap()) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "{act:?}: {a} vs {b}"
                );
            }
        }
        assert!(gated(Activation::Relu, &pre, &lin).unwrap().is_none());
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
}
