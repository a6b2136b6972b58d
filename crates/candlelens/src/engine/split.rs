//! Attention whose heads each read their own copy of the residual stream, one copy per query,
//! key and value input — TransformerLens's `use_split_qkv_input` with grouped keys and values
//! ungrouped per query head. The values are those of [`Block::attention`]; what differs is
//! the gradient: a zero-valued tap added to one copy receives `∂m/∂(that head's q, k or v
//! input)`, the downstream half of an edge in edge attribution patching.

use candle_core::{Tensor, D};

use crate::engine::block::{Block, ForwardCtx};
use crate::engine::config::{Positional, QkNorm};
use crate::engine::hooks::NoHooks;
use crate::error::Result;

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
    /// `hook_attn_out` `[batch, pos, d_model]` (after the post-norm) of `resid_pre [batch,
    /// pos, d_model]` (positions from 0), each head's queries, keys and values computed from
    /// `resid_pre + tap` for its own tap. No hooks fire.
    ///
    /// # Errors
    /// Tensor errors.
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
        let p = resid_pre.dim(1)?;
        if let Positional::Rotary(r) = &cfg.positional {
            let (cos, sin) = ctx.rope(cfg.layer_attention[self.layer], 0, p)?;
            q = self.rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
            k = self.rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
        }
        let t = |x: Tensor| -> Result<Tensor> { Ok(x.transpose(1, 2)?.contiguous()?) };
        let mut out = self.attend(&t(q)?, &t(k)?, &t(v)?, ctx, 0, &mut NoHooks)?;
        if let Some(pn) = &w.ln1_post {
            out = self.norm_spec().apply(pn, &out, None, &mut NoHooks)?;
        }
        Ok(out)
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
