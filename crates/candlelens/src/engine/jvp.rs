//! Forward-mode derivatives of a block: [`Block::jvp`] pushes tangents — directions in the
//! residual stream — through one block together with the primal values, exactly (the block's
//! Jacobian-vector products, by hand for every op of the one forward: norms, q/k norm, rotary,
//! grouped-query attention with softcap and masks, gated and plain MLPs, post-norms, parallel
//! blocks).
//!
//! Many tangents share one primal pass, so a Jacobian of one position's output with respect to
//! one position's input costs one batched pass of `d_model` tangents instead of `d_model`
//! backward passes: what the LRE Jacobian estimator ([`crate::lre::jacobian`]) uses.

use candle_core::{DType, Tensor, D};

use crate::engine::block::{Block, ForwardCtx, PastKv};
use crate::engine::config::{Activation, NormKind, Positional, QkNorm};
use crate::engine::ops::{activation, linear, NormSpec};
use crate::engine::weights::NormWeights;
use crate::error::Result;

/// `(y, dy)` of a norm: `y` of the primal `x [1, pos, d]`, `dy [n, pos, d]` of the tangents
/// `dx [n, pos, d]`: `d(c / r) = dc / r − c · mean(c ⊙ dc) / r³` with `c` the (centred) input and
/// `r = sqrt(mean(c²) + eps)`, times the weight.
fn norm_jvp(spec: NormSpec, w: &NormWeights, x: &Tensor, dx: &Tensor) -> Result<(Tensor, Tensor)> {
    let (x32, dx32) = (x.to_dtype(DType::F32)?, dx.to_dtype(DType::F32)?);
    let (c, dc) = match spec.kind {
        NormKind::LayerNorm => (
            x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
            dx32.broadcast_sub(&dx32.mean_keepdim(D::Minus1)?)?,
        ),
        NormKind::RmsNorm => (x32, dx32),
    };
    let r = (c.sqr()?.mean_keepdim(D::Minus1)? + spec.eps)?.sqrt()?;
    let mut y = c
        .broadcast_div(&r)?
        .to_dtype(spec.dtype)?
        .broadcast_mul(&w.w)?;
    if let Some(b) = &w.b {
        y = y.broadcast_add(b)?;
    }
    let dy = rms_tangent(&c, &dc, &r)?
        .to_dtype(spec.dtype)?
        .broadcast_mul(&w.w)?;
    Ok((y, dy))
}

/// `dc / r − c · mean(c ⊙ dc) / r³` over the last dimension (f32).
fn rms_tangent(c: &Tensor, dc: &Tensor, r: &Tensor) -> Result<Tensor> {
    let m = dc.broadcast_mul(c)?.mean_keepdim(D::Minus1)?;
    let r3 = r.powf(3.0)?;
    Ok((dc.broadcast_div(r)? - c.broadcast_mul(&m.broadcast_div(&r3)?)?)?)
}

/// The q/k RMSNorm over the last axis of `x` (`[1, pos, heads, d_head]` per head, or
/// `[1, pos, heads * d_head]` over all heads) and tangents `[n, ...]`, with the scale `w` of the
/// last axis's width.
fn head_rms_jvp(spec: NormSpec, w: &Tensor, x: &Tensor, dx: &Tensor) -> Result<(Tensor, Tensor)> {
    let spec = NormSpec {
        kind: NormKind::RmsNorm,
        ..spec
    };
    let w = NormWeights {
        w: w.clone(),
        b: None,
    };
    norm_jvp(spec, &w, x, dx)
}

/// The derivative of the activation at `x`, elementwise.
pub(crate) fn activation_grad(act: Activation, x: &Tensor) -> Result<Tensor> {
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

/// Repeats kv heads to the query heads: `[b, t, kv, dh]` -> `[b, heads, t, dh]`.
fn heads_first(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, kv, dh) = x.dims4()?;
    let x = x.transpose(1, 2)?;
    if kv == heads {
        return Ok(x.contiguous()?);
    }
    Ok(x.unsqueeze(2)?
        .expand((b, kv, heads / kv, t, dh))?
        .reshape((b, heads, t, dh))?)
}

impl Block<'_> {
    /// The block and its derivative along `n` tangents at once, on positions
    /// `offset..offset + pos`: the primal `x = resid_pre [1, pos, d_model]` and tangents
    /// `dx [n, pos, d_model]` give `resid_post [1, pos, d_model]` and its tangents
    /// `[n, pos, d_model]`. The keys and values of the earlier positions (`past`) are constants
    /// (their tangents are zero: causal attention). No hooks fire.
    ///
    /// # Errors
    /// Tensor errors; [`crate::LensError::Internal`] if the context lacks a table this layer needs.
    pub fn jvp(
        &self,
        x: &Tensor,
        dx: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
    ) -> Result<(Tensor, Tensor)> {
        let spec = self.norm_spec();
        let w = self.weights();
        let (n1, dn1) = match &w.ln1 {
            Some(ln1) => norm_jvp(spec, ln1, x, dx)?,
            None => (x.clone(), dx.clone()),
        };
        let (mut a, mut da) = self.attention_jvp(&n1, &dn1, ctx, offset, past)?;
        if let Some(pn) = &w.ln1_post {
            (a, da) = norm_jvp(spec, pn, &a, &da)?;
        }
        if self.cfg().parallel_attn_mlp {
            let (m, dm) = match &w.ln2 {
                Some(ln2) if self.cfg().parallel_ln2 => {
                    let (n2, dn2) = norm_jvp(spec, ln2, x, dx)?;
                    self.mlp_jvp(&n2, &dn2)?
                }
                _ => self.mlp_jvp(&n1, &dn1)?,
            };
            return Ok((((x + a)? + m)?, ((dx + da)? + dm)?));
        }
        let mid = (x + a)?;
        let dmid = (dx + da)?;
        let (m, dm) = match &w.ln2 {
            Some(ln2) => {
                let (n2, dn2) = norm_jvp(spec, ln2, &mid, &dmid)?;
                self.mlp_jvp(&n2, &dn2)?
            }
            None => self.mlp_jvp(&mid, &dmid)?,
        };
        Ok(((mid + m)?, (dmid + dm)?))
    }

    /// The MLP (and its post-norm) on `x [1, pos, d_model]` and tangents `dx [n, pos, d_model]`.
    fn mlp_jvp(&self, x: &Tensor, dx: &Tensor) -> Result<(Tensor, Tensor)> {
        let w = self.weights();
        let act = self.cfg().act;
        if let Some(moe) = &self.cfg().moe {
            let (mut out, mut dout) = self.moe_jvp(x, dx, moe)?;
            if let Some(pn) = &w.ln2_post {
                (out, dout) = norm_jvp(self.norm_spec(), pn, &out, &dout)?;
            }
            return Ok((out, dout));
        }
        let (post, dpost) = match &w.w_gate {
            Some(gate) => {
                let pre = linear(x, gate, None)?;
                let dpre = linear(dx, gate, None)?;
                let lin = linear(x, &w.w_in, w.b_in.as_ref())?;
                let dlin = linear(dx, &w.w_in, None)?;
                let a = activation(act, &pre)?;
                let da = dpre.broadcast_mul(&(activation_grad(act, &pre)? * &lin)?)?;
                ((&a * lin)?, (da + dlin.broadcast_mul(&a)?)?)
            }
            None => {
                let pre = linear(x, &w.w_in, w.b_in.as_ref())?;
                let dpre = linear(dx, &w.w_in, None)?;
                let a = activation(act, &pre)?;
                (a, dpre.broadcast_mul(&activation_grad(act, &pre)?)?)
            }
        };
        let mut out = linear(&post, &w.w_out, w.b_out.as_ref())?;
        let mut dout = linear(&dpost, &w.w_out, None)?;
        if let Some(pn) = &w.ln2_post {
            (out, dout) = norm_jvp(self.norm_spec(), pn, &out, &dout)?;
        }
        Ok((out, dout))
    }

    /// Attention of the normalised `x [1, pos, d_model]` and its tangents `[n, pos, d_model]`
    /// over `past` (constant) and themselves: `S = q Kᵀ · scale` (softcapped, masked),
    /// `A = softmax(S)`, `z = A V`; `dS = (dq Kᵀ + q dKᵀ) · scale`, `dA = A ⊙ (dS − Σ A ⊙ dS)`,
    /// `dz = dA V + A dV`; the output projection is linear.
    fn attention_jvp(
        &self,
        x: &Tensor,
        dx: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
    ) -> Result<(Tensor, Tensor)> {
        let (cfg, w, dt) = (self.cfg(), self.weights(), self.dtype());
        let (_, p, _) = x.dims3()?;
        let n = dx.dim(0)?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let split = |t: &Tensor, heads: usize| -> Result<Tensor> {
            let rows = t.dim(0)?;
            Ok(t.reshape((rows, p, heads, dh))?)
        };
        let (mut q, mut dq) = (
            linear(x, &w.w_q, w.b_q.as_ref())?,
            linear(dx, &w.w_q, None)?,
        );
        let (mut k, mut dk) = (
            linear(x, &w.w_k, w.b_k.as_ref())?,
            linear(dx, &w.w_k, None)?,
        );
        let (v, dv) = (
            split(&linear(x, &w.w_v, w.b_v.as_ref())?, kv)?,
            split(&linear(dx, &w.w_v, None)?, kv)?,
        );
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
            let (cos, sin) = ctx.rope(kind, offset, p)?;
            // rotary is linear in its input: the tangents rotate like the values
            q = self.rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
            dq = self.rotate(&dq, &cos, &sin, r.dim, r.interleaved)?;
            k = self.rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
            dk = self.rotate(&dk, &cos, &sin, r.dim, r.interleaved)?;
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
        let (kt, dkt) = (heads_first(&k, h)?, heads_first(&dk, h)?);
        let (vt, dvt) = (heads_first(&v, h)?, heads_first(&dv, h)?);
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
        let mask = ctx.mask(kind, offset, p, t)?;
        let a = candle_nn::ops::softmax_last_dim(&s.broadcast_add(&mask)?.to_dtype(DType::F32)?)?;
        let ds32 = ds.to_dtype(DType::F32)?;
        let a_ds = ds32.broadcast_mul(&a)?;
        let da = (&a_ds - a.broadcast_mul(&a_ds.sum_keepdim(D::Minus1)?)?)?.to_dtype(dt)?;
        let a = a.to_dtype(dt)?;
        let z = a.matmul(&vt)?; // [1, h, p, dh]
        let dz = (da.broadcast_matmul(&vt)? + a.broadcast_matmul(&dvt)?)?; // [n, h, p, dh]
        let z = z.transpose(1, 2)?.reshape((1, p, h * dh))?;
        let dz = dz.transpose(1, 2)?.reshape((n, p, h * dh))?;
        Ok((
            linear(&z, &w.w_o, w.b_o.as_ref())?,
            linear(&dz, &w.w_o, None)?,
        ))
    }
}
