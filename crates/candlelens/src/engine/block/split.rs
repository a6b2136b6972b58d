//! Attention whose heads read inputs of their own — what circuit discovery needs from a block.
//!
//! - [`Block::attention_split`]: each head reads its own copy of the residual stream, one copy
//!   per query, key and value input (TransformerLens's `use_split_qkv_input`, grouped keys and
//!   values ungrouped per query head). The values are those of [`Block::attention`]; what
//!   differs is the gradient: a zero-valued tap added to one copy receives `∂m/∂(that head's
//!   q, k or v input)`, the downstream half of an edge in edge attribution patching.
//! - [`Block::attention_mixed`]: chosen heads take their queries, keys or values from a second
//!   input — the last step of path patching.

use candle_core::{Tensor, D};

use super::{Block, ForwardCtx, PastKv, QkvInputs};
use crate::engine::config::{Positional, QkNorm};
use crate::engine::hooks::NoHooks;
use crate::engine::ops::rope::rotate;
use crate::error::{LensError, Result};

/// The taps added to each head's copies of `resid_pre`, `[batch, pos, head, d_model]` each.
pub struct SplitTaps<'t> {
    /// Added to the copy the queries read.
    pub q: &'t Tensor,
    /// Added to the copy the keys read.
    pub k: &'t Tensor,
    /// Added to the copy the values read.
    pub v: &'t Tensor,
}

impl Block<'_> {
    /// Attention in which some heads read another input — path patching's last step. `x` and
    /// `alt` are two attention inputs `[batch, pos, d_model]` (the norm's outputs, positions
    /// `offset..offset + pos`, after the keys and values of `past`, which both share); every head attends as usual on `x`, except that head `h` takes its queries
    /// (keys, values) from `alt` where `inputs[h]` says so. Keys and values are patched per
    /// query head: under grouped-query attention the other heads of the group keep theirs.
    /// Returns the attention output before the post-norm, `[batch, pos, d_model]`; no hooks
    /// fire. Runs inside the block's wiring as [`super::Heads::Mixed`].
    ///
    /// # Errors
    /// [`LensError::Mismatch`] unless `inputs` has one entry per head; tensor errors.
    pub fn attention_mixed(
        &self,
        x: &Tensor,
        alt: &Tensor,
        inputs: &[QkvInputs],
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
    ) -> Result<Tensor> {
        let h = self.cfg().n_heads;
        if inputs.len() != h {
            return Err(LensError::mismatch(
                "path-patched heads",
                format!("{} entries given for {h} heads", inputs.len()),
            ));
        }
        let sink = &mut NoHooks;
        let (q, k, v) = self.qkv(x, ctx, offset, sink)?;
        let (q2, k2, v2) = self.qkv(alt, ctx, offset, sink)?;
        // earlier positions: both inputs agree there, so one set of cached keys and values
        let with_past = |k: Tensor, v: Tensor| -> Result<(Tensor, Tensor)> {
            Ok(match past {
                Some(p) => (Tensor::cat(&[&p.k, &k], 1)?, Tensor::cat(&[&p.v, &v], 1)?),
                None => (k, v),
            })
        };
        let (k, v) = with_past(k, v)?;
        let (k2, v2) = with_past(k2, v2)?;
        let pick = |a: &Tensor, b: &Tensor, take: &dyn Fn(&QkvInputs) -> bool| -> Result<Tensor> {
            if !inputs.iter().any(take) {
                return Ok(a.clone());
            }
            let heads = inputs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if take(s) {
                        b.narrow(1, i, 1)
                    } else {
                        a.narrow(1, i, 1)
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::cat(&heads, 1)?.contiguous()?)
        };
        let qt = pick(
            &q.transpose(1, 2)?.contiguous()?,
            &q2.transpose(1, 2)?.contiguous()?,
            &|s| s.q,
        )?;
        let kt = pick(&self.ungroup(&k)?, &self.ungroup(&k2)?, &|s| s.k)?;
        let vt = pick(&self.ungroup(&v)?, &self.ungroup(&v2)?, &|s| s.v)?;
        self.attend(&qt, &kt, &vt, ctx, offset, sink)
    }

    /// The attention output before the post-norm, `[batch, pos, d_model]`, of `resid_pre
    /// [batch, pos, d_model]` (positions from 0), each head's queries, keys and values computed
    /// from `resid_pre + tap` for its own tap. No hooks fire. Runs inside the block's wiring
    /// as [`super::Heads::Split`].
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `resid_pre` is not `[batch, pos, d_model]`, a tap does not
    /// broadcast to `[batch, pos, n_heads, d_model]` (its head axis must be `n_heads`), or `ctx`
    /// covers fewer than `pos` positions.
    pub fn attention_split(
        &self,
        resid_pre: &Tensor,
        taps: &SplitTaps,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (cfg, w) = (self.cfg(), self.weights());
        let (h, kv) = (cfg.n_heads, cfg.n_kv_heads);
        let group = h / kv;
        let copy =
            |t: &Tensor| -> Result<Tensor> { self.ln1(&resid_pre.unsqueeze(2)?.broadcast_add(t)?) };
        let (nq, nk, nv) = (copy(taps.q)?, copy(taps.k)?, copy(taps.v)?);
        // the query head each copy belongs to reads kv head `hh / group`
        let kv_of: Vec<u32> = (0..h as u32).map(|hh| hh / group as u32).collect();
        let q_of: Vec<u32> = (0..h as u32).collect();
        let all_heads = cfg.qk_norm == QkNorm::AllHeads && w.q_norm.is_some();
        let mut q = if all_heads {
            self.all_heads_normed(&nq, &w.w_q, w.b_q.as_ref(), w.q_norm.as_ref(), &q_of)?
        } else {
            self.per_head(&nq, &w.w_q, w.b_q.as_ref(), &q_of)?
        };
        let mut k = if all_heads {
            self.all_heads_normed(&nk, &w.w_k, w.b_k.as_ref(), w.k_norm.as_ref(), &kv_of)?
        } else {
            self.per_head(&nk, &w.w_k, w.b_k.as_ref(), &kv_of)?
        };
        let v = self.per_head(&nv, &w.w_v, w.b_v.as_ref(), &kv_of)?;
        if let (QkNorm::PerHead, Some(qn), Some(kn)) = (cfg.qk_norm, &w.q_norm, &w.k_norm) {
            q = self.norm_spec().head_rms(&q, qn)?;
            k = self.norm_spec().head_rms(&k, kn)?;
        }
        let (b, p) = (resid_pre.dim(0)?, resid_pre.dim(1)?);
        if let Positional::Rotary(r) = &cfg.positional {
            let (cos, sin) = ctx.rope(cfg.layer_attention[self.layer], 0, p, b)?;
            q = rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
            k = rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
        }
        let t = |x: Tensor| -> Result<Tensor> { Ok(x.transpose(1, 2)?.contiguous()?) };
        self.attend(&t(q)?, &t(k)?, &t(v)?, ctx, 0, &mut NoHooks)
    }

    /// Copy `hh` of `x [batch, pos, head, d_model]` times the projection of head
    /// `heads[hh]` of `weight [n * d_head, d_model]` (plus its bias): `[batch, pos, head,
    /// d_head]`.
    fn per_head(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        heads: &[u32],
    ) -> Result<Tensor> {
        let (b, p, h, d) = x.dims4()?;
        let dh = self.cfg().d_head;
        let n = weight.dim(0)? / dh;
        let idx = Tensor::new(heads, x.device())?;
        // [h, d_model, d_head]
        let wh = weight
            .reshape((n, dh, d))?
            .index_select(&idx, 0)?
            .transpose(1, 2)?
            .contiguous()?;
        let xh = x
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((h, b * p, d))?;
        let mut out = xh
            .matmul(&wh)?
            .reshape((h, b, p, dh))?
            .permute((1, 2, 0, 3))?;
        if let Some(bias) = bias {
            out = out.broadcast_add(&bias.reshape((n, dh))?.index_select(&idx, 0)?)?;
        }
        Ok(out.contiguous()?)
    }

    /// As [`Self::per_head`] for a q/k norm over all heads at once (OLMo 2): each copy is
    /// projected by every head, normalised together, and keeps head `heads[hh]`'s slice.
    fn all_heads_normed(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        norm: Option<&Tensor>,
        heads: &[u32],
    ) -> Result<Tensor> {
        let dh = self.cfg().d_head;
        let mut full = crate::engine::ops::linear(x, weight, bias)?;
        if let Some(nw) = norm {
            full = self.norm_spec().head_rms(&full, nw)?;
        }
        let slices = heads
            .iter()
            .enumerate()
            .map(|(hh, &src)| {
                full.narrow(2, hh, 1)?
                    .narrow(D::Minus1, src as usize * dh, dh)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&slices, 2)?)
    }
}
