//! The fused operations of a run with gradients (attribution patching, the LRE Jacobian), as
//! custom ops whose backward pass is written out — differentiable in their input only.
//!
//! - [`linear_input_grad`]: `x Wᵀ`. candle's matmul backward computes the gradients of both
//!   factors, so every projection would also compute (and allocate) its weight's gradient — for
//!   a 262k-token unembedding a 671 MB tensor — which no analysis asks for. Here the backward is
//!   `∂m/∂x = ∂m/∂y · W` alone.
//! - [`norm`]: RMSNorm and LayerNorm with candle's fused kernels forward (the composed ops the
//!   tracked path used cost a pass and an allocation each, forward and backward).
//! - [`softmax`]: the fused last-axis softmax; backward `y ⊙ (g − Σ g ⊙ y)`.
//! - [`rope`]: the fused rotary embedding; backward the rotation by `−θ`.
//! - [`gelu_tanh`], [`silu`]: the MLP activations, backward their derivatives in one pass.
//!
//! Each forward runs the untracked kernel the plain forward uses on a copy of the input, so
//! values are the plain forward's; the tests hold each backward equal to candle's autograd of
//! the composed ops. On other devices than the CPU the composed ops run instead.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

/// The product with a constant weight `w [d_out, d_in]` as a custom op on `x [rows, d_in]`.
struct ConstWeightProduct {
    w: Tensor,
}

/// `storage` under `layout` as a tensor of its own (a copy) on the CPU.
fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let dev = Device::Cpu;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("linear_input_grad: non-contiguous input".into()))?;
    let shape = layout.shape();
    Ok(match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        _ => {
            return Err(candle_core::Error::Msg(
                "linear_input_grad: unsupported dtype".into(),
            ))
        }
    })
}

/// A contiguous CPU tensor's storage, moved out as a [`CpuStorage`].
fn into_storage(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        dt => {
            return Err(candle_core::Error::Msg(format!(
                "linear_input_grad: unsupported dtype {dt:?}"
            )))
        }
    };
    Ok((storage, t.shape().clone()))
}

impl CustomOp1 for ConstWeightProduct {
    fn name(&self) -> &'static str {
        "const-weight-product"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(storage, layout)?;
        // the untracked product, with the plain forward's kernel choice
        let y = super::kernels::product(&x, &self.w)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        into_storage(&y)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
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
                    return Ok(Some(Tensor::zeros(
                        (rows, self.w.dim(1)?),
                        grad_res.dtype(),
                        grad_res.device(),
                    )?));
                }
                let idx = Tensor::from_vec(idx, n, grad_res.device())?;
                let g = grad_res.index_select(&idx, 1)?;
                return Ok(Some(g.matmul(&self.w.index_select(&idx, 0)?)?));
            }
        }
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// `x W^T` for `x [rows, d_in]` and a constant `w [d_out, d_in]`, differentiable in `x` only
/// (on the CPU; elsewhere candle's matmul, which also differentiates in `w`).
///
/// # Errors
/// Shape mismatches.
pub fn linear_input_grad(x: &Tensor, w: &Tensor) -> crate::error::Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(x.matmul(&w.t()?)?);
    }
    let op = ConstWeightProduct { w: w.detach() };
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
}

/// `storage` under `layout` as an untracked tensor, the op's forward applied, and the result
/// moved back into a [`CpuStorage`].
fn run_fwd(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl FnOnce(&Tensor) -> crate::error::Result<Tensor>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = cpu_tensor(storage, layout)?;
    let y = f(&x).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    into_storage(&y.contiguous()?)
}

/// RMSNorm (`b = None`) or LayerNorm over the last axis with weight `w` (and bias `b`).
struct Norm {
    w: Tensor,
    b: Option<Tensor>,
    eps: f32,
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_fwd(storage, layout, |x| {
            Ok(match &self.b {
                None => candle_nn::ops::rms_norm(x, &self.w, self.eps)?,
                Some(b) => candle_nn::ops::layer_norm(x, &self.w, b, self.eps)?,
            })
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
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
        Ok(Some(dx))
    }
}

/// RMSNorm (`b = None`) or LayerNorm of a tracked f32 `x` over its last axis, with the fused
/// kernel forward and a written-out backward.
///
/// # Errors
/// Shape mismatches.
pub fn norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32) -> crate::error::Result<Tensor> {
    let op = Norm {
        w: w.detach(),
        b: b.map(Tensor::detach),
        eps,
    };
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
}

/// Softmax over the last axis.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_fwd(storage, layout, |x| {
            Ok(candle_nn::ops::softmax_last_dim(x)?)
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let y = res.detach();
        let s = (g * &y)?.sum_keepdim(candle_core::D::Minus1)?;
        Ok(Some((g.broadcast_sub(&s)? * y)?))
    }
}

/// The softmax over the last axis of a tracked f32 `x`, fused forward, written-out backward.
///
/// # Errors
/// Tensor errors.
pub fn softmax(x: &Tensor) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(Softmax)))?)
}

/// An elementwise activation with its derivative: GELU with the tanh approximation (Gemma,
/// GPT-2's `gelu_new`) or SiLU (Llama, Qwen, Mistral).
#[derive(Clone, Copy)]
enum Act {
    GeluTanh,
    Silu,
}

impl Act {
    /// `act'(v)`.
    fn derivative(self, v: f32) -> f32 {
        let sigmoid = |u: f32| 1.0 / (1.0 + (-u).exp());
        match self {
            // x σ(u), u = 2k (x + 0.044715 x³):  σ + x σ (1 − σ) 2k (1 + 3·0.044715 x²)
            Act::GeluTanh => {
                let k = (2.0f32 / std::f32::consts::PI).sqrt();
                let s = sigmoid(2.0 * k * v * (1.0 + 0.044715 * v * v));
                s + v * s * (1.0 - s) * 2.0 * k * (1.0 + 3.0 * 0.044715 * v * v)
            }
            // x σ(x):  σ (1 + x (1 − σ))
            Act::Silu => {
                let s = sigmoid(v);
                s * (1.0 + v * (1.0 - s))
            }
        }
    }
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::GeluTanh => "fused-gelu-tanh",
            Act::Silu => "fused-silu",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_fwd(storage, layout, |x| match self {
            Act::GeluTanh => super::kernels::gelu_tanh(x),
            Act::Silu => Ok(x.silu()?),
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let x: Vec<f32> = arg
            .detach()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let gv: Vec<f32> = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let mut out = vec![0f32; x.len()];
        let act = *self;
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(gv.par_chunks(4096)))
            .for_each(|(o, (xs, gs))| {
                for ((o, &v), &gr) in o.iter_mut().zip(xs).zip(gs) {
                    *o = gr * act.derivative(v);
                }
            });
        Ok(Some(
            Tensor::from_vec(out, arg.shape(), arg.device())?.to_dtype(arg.dtype())?,
        ))
    }
}

/// GELU (tanh approximation) of a tracked f32 `x`: the plain forward's kernel, written-out
/// backward.
///
/// # Errors
/// Tensor errors.
pub fn gelu_tanh(x: &Tensor) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(Act::GeluTanh)))?)
}

/// SiLU of a tracked f32 `x`: candle's kernel, written-out backward.
///
/// # Errors
/// Tensor errors.
pub fn silu(x: &Tensor) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(Act::Silu)))?)
}

/// Rotary embedding of `[batch, pos, heads, d]` (halves, `rope_thd`) or `[batch, heads, pos,
/// d]` (adjacent pairs, `rope_i`).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    fn apply(&self, x: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x.contiguous()?, &self.cos, sin)
        } else {
            candle_nn::rotary_emb::rope_thd(&x.contiguous()?, &self.cos, sin)
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_fwd(storage, layout, |x| Ok(self.apply(x, &self.sin)?))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // each pair turns by θ; the transpose of a rotation turns by −θ
        Ok(Some(self.apply(g, &self.sin.neg()?)?))
    }
}

/// Rotary embedding of a tracked `x` — `[batch, pos, heads, d]` rotated by halves, or
/// `[batch, heads, pos, d]` by adjacent pairs (`interleaved`) — fused forward, backward the
/// inverse rotation.
///
/// # Errors
/// Shape mismatches.
pub fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> crate::error::Result<Tensor> {
    let op = Rope {
        cos: cos.detach(),
        sin: sin.detach(),
        interleaved,
    };
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(op)))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn same_product_and_input_gradient_as_the_matmul() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 7), &dev).unwrap();
        let y = linear_input_grad(x.as_tensor(), &w).unwrap();
        let want = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let d = max_abs((&y - &want).unwrap());
        assert!(d < 1e-5, "{d}");
        let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let g2 = (want.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let a = g.get(x.as_tensor()).unwrap();
        let b = g2.get(x.as_tensor()).unwrap();
        let d = max_abs((a - b).unwrap());
        assert!(d < 1e-5, "{d}");
    }

    fn max_abs(t: Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `op`'s value and the gradient of `Σ (op(x) ⊙ c)` against the composed reference's.
    fn same_as(
        shape: &[usize],
        op: impl Fn(&Tensor) -> crate::error::Result<Tensor>,
        reference: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap();
        let c = Tensor::randn(0f32, 1., shape, &dev).unwrap();
        let y = op(x.as_tensor()).unwrap();
        let want = reference(x.as_tensor()).unwrap();
        assert!(max_abs((&y - &want).unwrap()) < 1e-5);
        let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&want * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        let d = max_abs((a - b).unwrap());
        assert!(d < 1e-4, "gradients differ by {d}");
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
        let d = (g.get(x.as_tensor()).unwrap() - g2.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn norms_softmax_and_rope_match_the_composed_ops() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        same_as(
            &[2, 3, 8],
            |x| norm(x, &w, None, 1e-6),
            |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-6),
        );
        same_as(
            &[2, 3, 8],
            |x| norm(x, &w, Some(&b), 1e-5),
            |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-5),
        );
        same_as(&[2, 4, 5, 5], softmax, |x| {
            candle_nn::ops::softmax(x, candle_core::D::Minus1)
        });
        same_as(&[3, 300], gelu_tanh, |x| x.gelu());
        same_as(&[3, 300], silu, |x| x.silu());
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        // halves on [b, t, h, d]; the composed reference works on [b, h, t, d]
        same_as(
            &[2, 5, 3, 8],
            |x| rope(x, &cos, &sin, false),
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
            |x| rope(x, &cos, &sin, true),
            |x| candle_nn::rotary_emb::rope_i_slow(x, &cos, &sin),
        );
    }
}
