//! Forward-mode derivatives of a block: [`Block::jvp`] pushes tangents — directions in the
//! residual stream — through one block together with the primal values, exactly. The block is
//! wired by [`Block::wire`] as in the forward; [`Tangents`] supplies each piece's rule (the
//! norms', activations' and softmax's live beside their kernels in `engine::ops`; rotary and the
//! projections are linear).
//!
//! Many tangents share one primal pass, so a Jacobian of one position's output with respect to
//! one position's input costs one batched pass of `d_model` tangents instead of `d_model`
//! backward passes: what the LRE Jacobian estimator ([`crate::lre::jacobian`]) uses.

use candle_core::{DType, Tensor};

use super::kind::Stage;
use super::wiring::{NormSite, Wiring};
use super::{Block, ForwardCtx, PastKv};
use crate::engine::config::{Positional, QkNorm};
use crate::engine::ops::activation::{activation_jvp, gated_jvp};
use crate::engine::ops::linear::linear_jvp;
use crate::engine::ops::norm::{head_rms_jvp, norm_jvp};
use crate::engine::ops::rope::rotate;
use crate::engine::ops::softmax::softmax_jvp;
use crate::engine::weights::NormWeights;
use crate::error::Result;

/// Primal values `x [1, pos, d]` and `n` tangents `dx [n, pos, d]` of one point of a block.
#[derive(Clone, Debug)]
pub struct Dual {
    /// The primal value.
    pub x: Tensor,
    /// The tangents.
    pub dx: Tensor,
}

/// The forward-mode [`Wiring`]: each piece maps values and tangents together, at positions
/// `offset..` after the (constant) keys and values of `past`. No hooks fire.
pub struct Tangents<'s> {
    ctx: &'s ForwardCtx,
    offset: usize,
    past: Option<&'s PastKv>,
}

impl Wiring for Tangents<'_> {
    type V = Dual;

    fn add(&mut self, a: Dual, b: &Dual) -> Result<Dual> {
        Ok(Dual {
            x: (a.x + &b.x)?,
            dx: (a.dx + &b.dx)?,
        })
    }

    fn norm(&mut self, block: &Block, _site: NormSite, w: &NormWeights, v: &Dual) -> Result<Dual> {
        let (x, dx) = norm_jvp(block.norm_spec(), w, &v.x, &v.dx)?;
        Ok(Dual { x, dx })
    }

    fn attention(&mut self, block: &Block, _resid_pre: &Dual, n1: &Dual) -> Result<Dual> {
        let (x, dx) = block.attention_jvp(n1, self)?;
        Ok(Dual { x, dx })
    }

    fn mlp(&mut self, block: &Block, v: &Dual) -> Result<Dual> {
        let (x, dx) = match &block.cfg().moe {
            Some(moe) => block.moe_jvp(&v.x, &v.dx, moe)?,
            None => block.dense_mlp_jvp(&v.x, &v.dx)?,
        };
        Ok(Dual { x, dx })
    }
}

impl Block<'_> {
    /// The block and its derivative along `n` tangents at once, on positions
    /// `offset..offset + pos`: the primal `x = resid_pre [1, pos, d_model]` and tangents
    /// `dx [n, pos, d_model]` give `resid_post [1, pos, d_model]` and its tangents
    /// `[n, pos, d_model]`. The keys and values of the earlier positions (`past`) are constants
    /// (their tangents are zero: causal attention). No hooks fire.
    ///
    /// # Errors
    /// [`crate::LensError::Internal`] if `ctx` lacks a table this layer needs or was built for
    /// fewer positions (a caller's bug); shape errors if `x` and `dx` differ in positions.
    pub fn jvp(
        &self,
        x: &Tensor,
        dx: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
    ) -> Result<(Tensor, Tensor)> {
        let mut t = Tangents { ctx, offset, past };
        let input = Dual {
            x: x.clone(),
            dx: dx.clone(),
        };
        let out = self.wire(Stage::Pre, input, &mut t)?;
        Ok((out.x, out.dx))
    }

    /// The dense MLP (before its post-norm) on `x [1, pos, d_model]` and tangents
    /// `dx [n, pos, d_model]`.
    fn dense_mlp_jvp(&self, x: &Tensor, dx: &Tensor) -> Result<(Tensor, Tensor)> {
        let w = self.weights();
        let act = self.cfg().act;
        let (post, dpost) = match &w.w_gate {
            Some(gate) => {
                let (pre, dpre) = linear_jvp(x, dx, gate, None)?;
                let (lin, dlin) = linear_jvp(x, dx, &w.w_in, w.b_in.as_ref())?;
                gated_jvp(act, (&pre, &dpre), (&lin, &dlin))?
            }
            None => {
                let (pre, dpre) = linear_jvp(x, dx, &w.w_in, w.b_in.as_ref())?;
                activation_jvp(act, &pre, &dpre)?
            }
        };
        linear_jvp(&post, &dpost, &w.w_out, w.b_out.as_ref())
    }

    /// Attention of the normalised `x [1, pos, d_model]` and its tangents `[n, pos, d_model]`
    /// over `past` (constant) and themselves: `S = q Kᵀ · scale` (softcapped, masked),
    /// `A = softmax(S)`, `z = A V`; `dS = (dq Kᵀ + q dKᵀ) · scale`, `dA = A ⊙ (dS − Σ A ⊙ dS)`,
    /// `dz = dA V + A dV`; the output projection is linear.
    fn attention_jvp(&self, n1: &Dual, at: &Tangents) -> Result<(Tensor, Tensor)> {
        let (x, dx) = (&n1.x, &n1.dx);
        let (ctx, offset, past) = (at.ctx, at.offset, at.past);
        let (cfg, w, dt) = (self.cfg(), self.weights(), self.dtype());
        let (_, p, _) = x.dims3()?;
        let n = dx.dim(0)?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let split = |t: &Tensor, heads: usize| -> Result<Tensor> {
            let rows = t.dim(0)?;
            Ok(t.reshape((rows, p, heads, dh))?)
        };
        let (mut q, mut dq) = linear_jvp(x, dx, &w.w_q, w.b_q.as_ref())?;
        let (mut k, mut dk) = linear_jvp(x, dx, &w.w_k, w.b_k.as_ref())?;
        let (v, dv) = linear_jvp(x, dx, &w.w_v, w.b_v.as_ref())?;
        let (v, dv) = (split(&v, kv)?, split(&dv, kv)?);
        let qk = (&w.q_norm, &w.k_norm);
        if let (QkNorm::AllHeads, (Some(qn), Some(kn))) = (cfg.qk_norm, qk) {
            (q, dq) = head_rms_jvp(self.norm_spec(), qn, &q, &dq)?;
            (k, dk) = head_rms_jvp(self.norm_spec(), kn, &k, &dk)?;
        }
        (q, dq, k, dk) = (
            split(&q, h)?,
            split(&dq, h)?,
            split(&k, kv)?,
            split(&dk, kv)?,
        );
        if let (QkNorm::PerHead, (Some(qn), Some(kn))) = (cfg.qk_norm, qk) {
            (q, dq) = head_rms_jvp(self.norm_spec(), qn, &q, &dq)?;
            (k, dk) = head_rms_jvp(self.norm_spec(), kn, &k, &dk)?;
        }
        let kind = cfg.layer_attention[self.layer];
        if let Positional::Rotary(r) = &cfg.positional {
            let (cos, sin) = ctx.rope(kind, offset, p, 1)?;
            let (dcos, dsin) = ctx.rope(kind, offset, p, n)?;
            // rotary is linear in its input: the tangents rotate like the values
            q = rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
            dq = rotate(&dq, &dcos, &dsin, r.dim, r.interleaved)?;
            k = rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
            dk = rotate(&dk, &dcos, &dsin, r.dim, r.interleaved)?;
        }
        let (k, v, dk, dv) = match past {
            Some(past) => {
                let zeros = Tensor::zeros((n, past.len(), kv, dh), dt, x.device())?;
                (
                    Tensor::cat(&[&past.k, &k], 1)?,
                    Tensor::cat(&[&past.v, &v], 1)?,
                    Tensor::cat(&[&zeros, &dk], 1)?,
                    Tensor::cat(&[&zeros, &dv], 1)?,
                )
            }
            None => (k, v, dk, dv),
        };
        let t = k.dim(1)?;
        let (qt, dqt) = (
            q.transpose(1, 2)?.contiguous()?,
            dq.transpose(1, 2)?.contiguous()?,
        );
        let (kt, dkt) = (self.ungroup(&k)?, self.ungroup(&dk)?);
        let (vt, dvt) = (self.ungroup(&v)?, self.ungroup(&dv)?);
        // primal scores [1, h, p, t] and their tangents [n, h, p, t]
        let ktt = kt.t()?;
        let mut s = (qt.matmul(&ktt)? * cfg.attn_scale)?;
        let mut ds =
            ((dqt.broadcast_matmul(&ktt)? + qt.broadcast_matmul(&dkt.t()?)?)? * cfg.attn_scale)?;
        if let Some(cap) = cfg.attn_softcap {
            let th = (s / cap)?.tanh()?;
            ds = ds.broadcast_mul(&(1.0 - th.sqr()?)?)?;
            s = (th * cap)?;
        }
        let mask = ctx.mask(kind, offset, p, t, 1)?;
        let a = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask)?.to_dtype(DType::F32)?)?;
        let da = softmax_jvp(&a, &ds.to_dtype(DType::F32)?)?.to_dtype(dt)?;
        let a = a.to_dtype(dt)?;
        let z = a.matmul(&vt)?; // [1, h, p, dh]
        let dz = (da.broadcast_matmul(&vt)? + a.broadcast_matmul(&dvt)?)?; // [n, h, p, dh]
        let z = z.transpose(1, 2)?.reshape((1, p, h * dh))?;
        let dz = dz.transpose(1, 2)?.reshape((n, p, h * dh))?;
        linear_jvp(&z, &dz, &w.w_o, w.b_o.as_ref())
    }
}
