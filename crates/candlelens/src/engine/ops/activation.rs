//! The MLP activations — GELU (erf), GELU with the tanh approximation, SiLU, ReLU, and the gated
//! MLP's `act(pre) ⊙ lin` — with their CPU kernels (through the vectorised `exp` of
//! [`super::fastmath`], on every core), their backward (one written-out derivative per
//! element) and their forward-mode rule (`dy = act'(x) ⊙ dx`); both derivative uses go through
//! [`derivative`].

use candle_core::{DType, Tensor};

use super::custom::{apply, Differentiable};
use super::fastmath;
use crate::engine::config::Activation;
use crate::error::Result;

/// The MLP's activation function, elementwise.
///
/// # Errors
/// None for a float `x` of any shape (elementwise); only candle's allocation failure.
pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh if x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() => {
            apply(x, Act::GeluTanh)?
        }
        Activation::GeluTanh => gelu_tanh(x)?,
        Activation::Silu if x.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() => {
            apply(x, Act::Silu)?
        }
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
}

/// The gated MLP's `act(pre) ⊙ lin`: one fused pass where the CPU kernel applies, the
/// activation and the product otherwise (the same values).
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `pre` and `lin` differ in shape or dtype (the product
/// does not broadcast).
pub fn gated_activation(act: Activation, pre: &Tensor, lin: &Tensor) -> Result<Tensor> {
    match gated(act, pre, lin)? {
        Some(post) => Ok(post),
        None => Ok((activation(act, pre)? * lin)?),
    }
}

/// `(y, dy)` of [`activation`] for the primal `x` and tangents `dx [n, ..]`: `y = act(x)`,
/// `dy = act'(x) ⊙ dx`.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `dx` does not broadcast against `x` (trailing axes other
/// than `x`'s) or differs from it in dtype.
pub(crate) fn activation_jvp(act: Activation, x: &Tensor, dx: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((activation(act, x)?, dx.broadcast_mul(&derivative(act, x)?)?))
}

/// `(y, dy)` of [`gated_activation`]: `y = act(pre) ⊙ lin`,
/// `dy = act'(pre) ⊙ lin ⊙ dpre + act(pre) ⊙ dlin`.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when `pre` and `lin` differ in shape or dtype, or `dpre` and
/// `dlin` do not broadcast against them to one shape.
pub(crate) fn gated_jvp(
    act: Activation,
    (pre, dpre): (&Tensor, &Tensor),
    (lin, dlin): (&Tensor, &Tensor),
) -> Result<(Tensor, Tensor)> {
    let a = activation(act, pre)?;
    let da = dpre.broadcast_mul(&(derivative(act, pre)? * lin)?)?;
    Ok(((&a * lin)?, (da + dlin.broadcast_mul(&a)?)?))
}

/// `act'(x)` elementwise, in `x`'s dtype — what the backward pass and the forward-mode rule
/// multiply by. For GELU-tanh and SiLU on f32 CPU tensors one scalar function per element on
/// every core; elsewhere composed from candle's ops (the same function).
///
/// # Errors
/// None for any `x` (elementwise); only candle's allocation failure.
pub(crate) fn derivative(act: Activation, x: &Tensor) -> Result<Tensor> {
    let scalar = match act {
        Activation::GeluTanh => Some(Act::GeluTanh),
        Activation::Silu => Some(Act::Silu),
        _ => None,
    };
    if let Some(a) = scalar.filter(|_| x.dtype() == DType::F32 && x.device().is_cpu()) {
        let xc = x.detach().contiguous()?;
        let (storage, layout) = xc.storage_and_layout();
        if let Some(src) = fastmath::cpu_f32(&storage, layout)? {
            let out = fastmath::par_map(src, |v| a.derivative(v));
            drop(storage);
            return Ok(Tensor::from_vec(out, x.shape(), x.device())?);
        }
    }
    let x32 = x.to_dtype(DType::F32)?;
    let g = match act {
        // d/dx x Φ(x) = Φ(x) + x φ(x)
        Activation::Gelu => {
            let cdf = ((x32.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
            let pdf = (x32.sqr()?.affine(-0.5, 0.0)?.exp()?
                * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2))?;
            (cdf + (&x32 * pdf)?)?
        }
        // 0.5 x (1 + tanh u), u = sqrt(2/π) (x + 0.044715 x³)
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let u = ((&x32 + (x32.powf(3.0)? * 0.044715)?)? * k)?;
            let t = u.tanh()?;
            let du = ((x32.sqr()? * (3.0 * 0.044715))? + 1.0)?.affine(k, 0.0)?;
            let sech2 = (1.0 - t.sqr()?)?;
            (((&t + 1.0)? * 0.5)? + ((&x32 * 0.5)? * sech2)?.mul(&du)?)?
        }
        // σ(x) (1 + x (1 − σ(x)))
        Activation::Silu => {
            let s = candle_nn::ops::sigmoid(&x32)?;
            let one_minus = (1.0 - &s)?;
            (&s * ((&x32 * one_minus)? + 1.0)?)?
        }
        Activation::Relu => x32.gt(0f64)?.to_dtype(DType::F32)?,
    };
    Ok(g.to_dtype(x.dtype())?)
}

/// SiLU `x σ(x) = x / (1 + e^{−x})` through [`exp`].
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + fastmath::exp(-x))
}

/// The tanh-approximated GELU as `x σ(2u)`, `u = sqrt(2/π) (x + 0.044715 x³)`, through
/// [`exp`] (`(1 + tanh u) / 2 = σ(2u)`).
#[inline(always)]
fn gelu_tanh_f32(x: f32) -> f32 {
    let k = (2.0f32 / std::f32::consts::PI).sqrt();
    let u2 = 2.0 * k * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + fastmath::exp(-u2))
}

/// The tanh-approximated GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/π) (x + 0.044715 x³)`
/// (HF's `gelu_pytorch_tanh` / `gelu_new`). On contiguous f32 CPU tensors it runs as
/// `x / (1 + exp(−2u))` — the same function, since `(1 + tanh u) / 2 = σ(2u)` — on every core;
/// candle's kernel calls the scalar `tanhf`, which made it a fifth of a Gemma forward.
/// Elsewhere (other dtypes, devices, tensors tracked for autograd) candle's `gelu`.
///
/// # Errors
/// None for a float `x` of any shape (elementwise); only candle's allocation failure.
pub(crate) fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() && !x.track_op() {
        let (storage, layout) = x.storage_and_layout();
        if let Some(src) = fastmath::cpu_f32(&storage, layout)? {
            let out = fastmath::par_map(src, gelu_tanh_f32);
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
/// None: inputs the kernel does not take (other activations, dtypes, devices or shapes) give
/// `Ok(None)`.
pub(crate) fn gated(act: Activation, pre: &Tensor, lin: &Tensor) -> Result<Option<Tensor>> {
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
        Activation::Silu => fastmath::par_zip_map(p, l, |v, w| silu(v) * w),
        _ => fastmath::par_zip_map(p, l, |v, w| gelu_tanh_f32(v) * w),
    };
    Ok(Some(Tensor::from_vec(out, pre.shape(), pre.device())?))
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

impl Differentiable for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::GeluTanh => "fused-gelu-tanh",
            Act::Silu => "fused-silu",
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::GeluTanh => gelu_tanh(x),
            Act::Silu => Ok(x.silu()?),
        }
    }

    fn backward(&self, arg: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
        let act = match self {
            Act::GeluTanh => Activation::GeluTanh,
            Act::Silu => Activation::Silu,
        };
        let d = derivative(act, arg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        g * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::custom::testing::same_as;
    use candle_core::Device;

    #[test]
    fn the_fused_gate_is_the_activation_times_the_linear_part() {
        let pre = Tensor::arange(-12f32, 12f32, &Device::Cpu)
            .unwrap()
            .affine(0.37, 0.01)
            .unwrap();
        let lin = pre.affine(-0.5, 0.3).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let fused: Vec<f32> = gated(act, &pre, &lin).unwrap().unwrap().to_vec1().unwrap();
            let apart = (activation(act, &pre).unwrap() * &lin).unwrap();
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

    #[test]
    fn backward_is_the_composed_ops_gradient() {
        same_as(
            &[3, 300],
            |x| activation(Activation::GeluTanh, x),
            |x| x.gelu(),
        );
        same_as(&[3, 300], |x| activation(Activation::Silu, x), |x| x.silu());
    }

    #[test]
    fn the_scalar_and_composed_derivatives_agree() {
        // the CPU f32 path (scalar per element) against the composed path (f64 input)
        let x = Tensor::arange(-40f32, 40f32, &Device::Cpu)
            .unwrap()
            .affine(0.15, 0.02)
            .unwrap();
        for act in [Activation::GeluTanh, Activation::Silu] {
            let fast: Vec<f32> = derivative(act, &x).unwrap().to_vec1().unwrap();
            let composed: Vec<f64> = derivative(act, &x.to_dtype(DType::F64).unwrap())
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in fast.iter().zip(&composed) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{act:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn vectorised_loops_equal_the_scalar_ones() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let fast = fastmath::par_map(&xs, silu);
        for (i, (&x, &y)) in xs.iter().zip(&fast).enumerate() {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (y as f64 - want).abs() <= 4e-7 * (1.0 + want.abs()),
                "{i}: {y} vs {want}"
            );
        }
    }
}
