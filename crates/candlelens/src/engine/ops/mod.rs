//! The operations a block is made of, one op per file with everything it needs in one place:
//! its CPU kernel, its backward (a custom op for runs with gradients — attribution patching,
//! the SAE feature attribution) and its forward-mode rule (the LRE Jacobian).
//!
//! - [`linear`]: `x Wᵀ + b`; `norm`: LayerNorm / RMSNorm ([`NormSpec`]); [`activation`]: the
//!   MLP activations and the gated product; `softmax`: attention's pattern; `rope`: rotary
//!   tables and rotation; `attention`: the copy-free attention kernel; `topk`: the top-k rule
//!   of MoE routing and TopK SAEs; `fastmath`: the vectorised `exp` and SIMD dispatch;
//!   `custom`: the plumbing of the written-out backward passes.
//! - Where candle's CPU ops are slow the forward runs the crate's kernels; each falls back to
//!   candle's ops (the same function) for other dtypes, devices or tracked tensors.
//!
//! The ops are free functions of tensors and config switches, so that the block and the model
//! both build on them without depending on each other. [`hook`] fires a hook point.

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod custom;
pub(crate) mod fastmath;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod rope;
pub(crate) mod softmax;
pub(crate) mod topk;

use candle_core::Tensor;

use crate::engine::hooks::{HookPoint, HookSink};
use crate::error::Result;

pub use activation::{activation, gated_activation};
pub use linear::linear;
pub use norm::NormSpec;

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

/// The matrix products of attention alone — `(q kᵀ) v` per `(batch, head)`, no scale, mask or
/// softmax — run the way the forward's attention kernel runs them, for `q [batch, pos, head,
/// d_head]` and `k`, `v [batch, t, kv_head, d_head]`: the share of attention in the matmul
/// floor that `lens bench forward --floor` times.
///
/// # Errors
/// A raw [`crate::LensError::Candle`] when a tensor is not 4-D or (off the f32 CPU path) the shapes
/// do not line up; [`crate::LensError::Mismatch`] on the f32 CPU path when `k` does not have
/// `q`'s batch and `d_head`.
pub fn attention_products(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention::attention_products(q, k, v)
}
