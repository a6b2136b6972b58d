//! The sparse mixture-of-experts MLP (Mixtral, Qwen 2/3 MoE) inside the one generic block:
//! routing, the experts side by side as one wide gated MLP, and its forward-mode derivative.
//!
//! Routing: `router_logits = x Rᵀ` `[batch, pos, n_experts]`, `p = softmax(router_logits)`;
//! each token keeps its `top_k` largest `p` (renormalised to sum to 1 for Mixtral and Qwen 3
//! MoE): the routing weights `w [batch, pos, n_experts]`, zero for the experts a token does not
//! use (`mlp.hook_expert_weights`). Expert `e` computes `post_e = act(x W_gate_e) ⊙ (x W_in_e)`
//! and the MLP's output is `Σ_e w_e · post_e W_out_e`, plus, for Qwen 2 MoE, the shared expert
//! `sigmoid(x gᵀ) · post_s W_out_s`.
//!
//! The hooks see the experts side by side, `[batch, pos, d_mlp]` with expert `e` on units
//! [`MoeConfig::units`]: `hook_pre`, `hook_pre_linear` and `hook_post` hold each expert's
//! activations on the tokens routed to it and zero elsewhere. `hook_post` is unweighted, as
//! TransformerLens's per-expert `hook_post`; the routing weights apply after it. A hook on
//! `hook_expert_weights` reroutes: the experts that run are those with a non-zero weight.
//! Without hooks on the three activation points (and without autograd), only the chosen
//! experts compute, on their tokens only.

use candle_core::{DType, Tensor, D};

use crate::engine::block::Block;
use crate::engine::config::MoeConfig;
use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::ops::activation::gated_jvp;
use crate::engine::ops::softmax::softmax_jvp;
use crate::engine::ops::topk::top_k_rows;
use crate::engine::ops::{activation, hook, linear};
use crate::error::{LensError, Result};

/// The routing weights `[batch, pos, n_experts]` (f32) of router logits (f32): the softmax over
/// the experts, each token's `top_k` kept, renormalised where the family does so. The
/// selection is a constant; the weights carry gradients (autograd) through the softmax.
///
/// # Errors
/// A raw [`LensError::Candle`] for a 0-d or integer `logits`; none otherwise. `moe` is not checked:
/// `top_k = 0` with `norm_topk_prob` gives NaN weights, not an error.
pub fn route(logits: &Tensor, moe: &MoeConfig) -> Result<Tensor> {
    let probs = if logits.track_op() {
        candle_nn::ops::softmax(logits, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(logits)?
    };
    let kept = (&probs * top_k_rows(&probs, moe.top_k, |_| 1.0)?)?;
    Ok(if moe.norm_topk_prob {
        kept.broadcast_div(&kept.sum_keepdim(D::Minus1)?)?
    } else {
        kept
    })
}

/// Per-expert values `[.., n_experts]` spread over each expert's units, with the shared
/// expert's value `[.., 1]` (if any) over its units: `[.., d_mlp]`.
fn per_unit(per_expert: &Tensor, shared: Option<&Tensor>, moe: &MoeConfig) -> Result<Tensor> {
    let mut dims = per_expert.dims().to_vec();
    let rank = dims.len();
    let mut wide = dims.clone();
    wide.push(moe.d_expert);
    dims[rank - 1] = moe.n_experts * moe.d_expert;
    let routed = per_expert
        .unsqueeze(rank)?
        .broadcast_as(wide)?
        .reshape(dims.clone())?;
    Ok(match shared {
        Some(s) if moe.d_shared > 0 => {
            let mut sd = dims;
            sd[rank - 1] = moe.d_shared;
            Tensor::cat(&[&routed, &s.broadcast_as(sd)?.contiguous()?], rank - 1)?
        }
        _ => routed,
    })
}

impl Block<'_> {
    /// The router's logits, `x Rᵀ` `[batch, pos, n_experts]`, and the shared expert's gate
    /// `sigmoid(x gᵀ)` `[batch, pos, 1]` where there is one.
    fn router(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let w = self.weights();
        let router = w.router.as_ref().ok_or_else(|| {
            LensError::Internal(format!(
                "blocks.{}: a mixture of experts without a router",
                self.layer
            ))
        })?;
        let shared = match &w.shared_expert_gate {
            Some(g) => Some(candle_nn::ops::sigmoid(&linear(x, g, None)?)?),
            None => None,
        };
        Ok((linear(x, router, None)?, shared))
    }

    /// The mixture of experts on its normalised input `x [batch, pos, d_model]`: what joins the
    /// residual before the post-norm, `[batch, pos, d_model]`. Fires the router, routing and
    /// (where hooked) the activation hooks.
    ///
    /// # Errors
    /// Whatever a hook returns (a hook's own error, or [`LensError::HookShape`] when it returns a
    /// tensor of another shape); a raw [`LensError::Candle`] when `x` is not
    /// `[batch, pos, d_model]` in the block's dtype.
    pub(crate) fn moe_mlp(
        &self,
        x: &Tensor,
        moe: &MoeConfig,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let (l, w, dt) = (self.layer, self.weights(), self.dtype());
        let (logits, shared) = self.router(x)?;
        let logits = hook(sink, HookPoint::RouterLogits(l), logits)?;
        let weights = route(&logits.to_dtype(DType::F32)?, moe)?.to_dtype(dt)?;
        let weights = hook(sink, HookPoint::ExpertWeights(l), weights)?;
        let gate = w.w_gate.as_ref().ok_or_else(|| {
            LensError::Internal(format!("blocks.{l}: experts without a gate projection"))
        })?;
        let hooked = [
            HookPoint::MlpPre(l),
            HookPoint::MlpPreLinear(l),
            HookPoint::MlpPost(l),
        ]
        .iter()
        .any(|hp| sink.wants(hp));
        if hooked || x.track_op() || weights.track_op() {
            // every expert on every token, masked to the routed ones: the hooks see the
            // experts side by side, and autograd sees ordinary ops
            let routed = weights.ne(0f64)?.to_dtype(dt)?;
            let on = shared.as_ref().map(|s| s.ones_like()).transpose()?;
            let mask = per_unit(&routed, on.as_ref(), moe)?;
            let pre = hook(
                sink,
                HookPoint::MlpPre(l),
                (linear(x, gate, None)? * &mask)?,
            )?;
            let lin = hook(
                sink,
                HookPoint::MlpPreLinear(l),
                (linear(x, &w.w_in, w.b_in.as_ref())? * &mask)?,
            )?;
            let post = hook(
                sink,
                HookPoint::MlpPost(l),
                (activation(self.cfg().act, &pre)? * lin)?,
            )?;
            let scale = per_unit(&weights, shared.as_ref(), moe)?;
            return linear(&(post * scale)?, &w.w_out, w.b_out.as_ref());
        }
        // only the chosen experts, each on its own tokens
        let (b, p, d) = x.dims3()?;
        let xf = x.reshape((b * p, d))?;
        let ne = moe.n_experts;
        let wv: Vec<f32> = weights.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let expert = |rows: &Tensor, units: std::ops::Range<usize>| -> Result<Tensor> {
            let n = units.len();
            let g = linear(rows, &gate.narrow(0, units.start, n)?, None)?;
            let b_in = match &w.b_in {
                Some(bi) => Some(bi.narrow(0, units.start, n)?),
                None => None,
            };
            let u = linear(rows, &w.w_in.narrow(0, units.start, n)?, b_in.as_ref())?;
            let post = (activation(self.cfg().act, &g)? * u)?;
            linear(&post, &w.w_out.narrow(1, units.start, n)?, None)
        };
        let mut out = Tensor::zeros((b * p, d), dt, x.device())?;
        for e in 0..ne {
            let (rows, coef): (Vec<u32>, Vec<f32>) = (0..b * p)
                .filter(|t| wv[t * ne + e] != 0.0)
                .map(|t| (t as u32, wv[t * ne + e]))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let idx = Tensor::from_vec(rows, n, x.device())?;
            let y = expert(&xf.index_select(&idx, 0)?, moe.units(e))?;
            let coef = Tensor::from_vec(coef, (n, 1), x.device())?.to_dtype(dt)?;
            out = out.index_add(&idx, &y.broadcast_mul(&coef)?, 0)?;
        }
        if let Some(s) = &shared {
            let y = expert(&xf, moe.shared_units())?;
            out = (out + y.broadcast_mul(&s.reshape((b * p, 1))?)?)?;
        }
        if let Some(bo) = &w.b_out {
            out = out.broadcast_add(bo)?;
        }
        Ok(out.reshape((b, p, d))?)
    }

    /// The mixture of experts and its derivative along `n` tangents: `x [1, pos, d_model]`,
    /// `dx [n, pos, d_model]` -> the output before the post-norm and its tangents. The routing
    /// (which experts run) is constant; the weights' tangents follow the softmax:
    /// `dw = w ⊙ (dl − Σ_e w_e dl_e)` over the kept experts when renormalised, `dp ⊙ kept`
    /// with `dp = p ⊙ (dl − Σ_e p_e dl_e)` otherwise.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `x` is not `[1, pos, d_model]` or `dx` not
    /// `[n, pos, d_model]` with the same `pos`, in the block's dtype.
    pub(crate) fn moe_jvp(
        &self,
        x: &Tensor,
        dx: &Tensor,
        moe: &MoeConfig,
    ) -> Result<(Tensor, Tensor)> {
        let (w, dt) = (self.weights(), self.dtype());
        let (logits, shared) = self.router(x)?;
        let router = w
            .router
            .as_ref()
            .ok_or_else(|| LensError::Internal("a mixture of experts without a router".into()))?;
        let dl = linear(dx, router, None)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let mask = top_k_rows(&probs, moe.top_k, |_| 1.0)?;
        let kept = (&probs * &mask)?;
        let (wts, dwts) = if moe.norm_topk_prob {
            let wts = kept.broadcast_div(&kept.sum_keepdim(D::Minus1)?)?;
            let dwts = softmax_jvp(&wts, &dl)?;
            (wts, dwts)
        } else {
            let dwts = softmax_jvp(&probs, &dl)?.broadcast_mul(&mask)?;
            (kept, dwts)
        };
        let (wts, dwts) = (wts.to_dtype(dt)?, dwts.to_dtype(dt)?);
        let dshared = match (&shared, &w.shared_expert_gate) {
            (Some(s), Some(g)) => {
                let ds = s.affine(-1.0, 1.0)?.mul(s)?;
                Some(linear(dx, g, None)?.broadcast_mul(&ds)?)
            }
            _ => None,
        };
        let on = shared.as_ref().map(|s| s.ones_like()).transpose()?;
        let unit_mask = per_unit(&mask.to_dtype(dt)?, on.as_ref(), moe)?;
        let scale = per_unit(&wts, shared.as_ref(), moe)?;
        let dscale = per_unit(&dwts, dshared.as_ref(), moe)?;
        let gate = w
            .w_gate
            .as_ref()
            .ok_or_else(|| LensError::Internal("experts without a gate projection".into()))?;
        let pre = (linear(x, gate, None)? * &unit_mask)?;
        let dpre = linear(dx, gate, None)?.broadcast_mul(&unit_mask)?;
        let lin = (linear(x, &w.w_in, w.b_in.as_ref())? * &unit_mask)?;
        let dlin = linear(dx, &w.w_in, None)?.broadcast_mul(&unit_mask)?;
        let (post, dpost) = gated_jvp(self.cfg().act, (&pre, &dpre), (&lin, &dlin))?;
        let out = linear(&(&post * &scale)?, &w.w_out, w.b_out.as_ref())?;
        let dmix = (dpost.broadcast_mul(&scale)? + dscale.broadcast_mul(&post)?)?;
        Ok((out, linear(&dmix, &w.w_out, None)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn routing_keeps_the_top_k_and_renormalises_when_asked() {
        let logits = Tensor::new(&[[0.0f32, 2.0, 1.0, -1.0]], &Device::Cpu).unwrap();
        let mut moe = MoeConfig {
            n_experts: 4,
            top_k: 2,
            d_expert: 1,
            d_shared: 0,
            norm_topk_prob: true,
        };
        let weights = |moe: &MoeConfig| -> Vec<f32> {
            route(&logits, moe)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let w = weights(&moe);
        // softmax over experts 1 and 2 only
        let (a, b) = (2f32.exp(), 1f32.exp());
        let want = [0.0, a / (a + b), b / (a + b), 0.0];
        for (g, w) in w.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        moe.norm_topk_prob = false;
        let w = weights(&moe);
        let z: f32 = [0.0f32, 2.0, 1.0, -1.0].iter().map(|x| x.exp()).sum();
        let want = [0.0, a / z, b / z, 0.0];
        for (g, w) in w.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn per_unit_spreads_each_expert_over_its_units_then_the_shared_one() {
        let moe = MoeConfig {
            n_experts: 2,
            top_k: 1,
            d_expert: 3,
            d_shared: 2,
            norm_topk_prob: true,
        };
        let w = Tensor::new(&[[[0.5f32, 0.0]]], &Device::Cpu).unwrap();
        let s = Tensor::new(&[[[0.25f32]]], &Device::Cpu).unwrap();
        let u: Vec<f32> = per_unit(&w, Some(&s), &moe)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(u, [0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.25, 0.25]);
        assert_eq!(moe.units(1), 3..6);
        assert_eq!(moe.shared_units(), 6..8);
    }
}
