//! A block's attention: the q/k/v projections with the q/k norm and rotary, grouped-query
//! keys and values, scores, mask, softmax and `z W_O` — on the copy-free CPU kernel of
//! `ops::attention` where it applies, on candle's composed ops elsewhere
//! (the same function) — and the per-head views (`hook_result`, `z` to `attn_out`) that
//! patching and attribution read.

use candle_core::Tensor;

use super::{Block, ForwardCtx, PastKv};
use crate::engine::config::{Positional, QkNorm};
use crate::engine::hooks::{HookPoint, HookSink, NoHooks};
use crate::engine::ops::attention::{self as attention_kernel, AttnInputs};
use crate::engine::ops::rope::rotate;
use crate::engine::ops::softmax::softmax;
use crate::engine::ops::{hook, linear};
use crate::error::{LensError, Result};

impl Block<'_> {
    /// Attention of the positions `offset..offset + pos` of `x [batch, pos, d_model]` (the
    /// norm's output) over the earlier positions in `past` and themselves. Returns the attention
    /// output `[batch, pos, d_model]` and the keys/values of all positions so far.
    ///
    /// # Errors
    /// Whatever a hook returns (a hook's own error, or [`LensError::HookShape`] when it returns a
    /// tensor of another shape); a raw [`LensError::Candle`] when `x` is not
    /// `[batch, pos, d_model]`, `ctx` is shorter than `offset + pos`, or `past` has another batch.
    pub fn attention(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, PastKv)> {
        let (q, k, v) = self.qkv(x, ctx, offset, sink)?;
        let (k, v) = match past {
            Some(past) => (
                Tensor::cat(&[&past.k, &k], 1)?,
                Tensor::cat(&[&past.v, &v], 1)?,
            ),
            None => (k, v),
        };
        if let Some(out) = self.attend_fused(&q, &k, &v, ctx, offset, sink)? {
            return Ok((out, PastKv { k, v }));
        }
        // [batch, heads, pos, d_head]
        let qt = q.transpose(1, 2)?.contiguous()?;
        let out = self.attend(
            &qt,
            &self.ungroup(&k)?,
            &self.ungroup(&v)?,
            ctx,
            offset,
            sink,
        )?;
        Ok((out, PastKv { k, v }))
    }

    /// Queries, keys (both after the q/k norm and rotary) and values of `x [batch, pos,
    /// d_model]` at positions `offset..offset + pos`: `[batch, pos, head, d_head]`,
    /// `[batch, pos, kv_head, d_head]` twice. Fires the `hook_q/k/v` and `hook_rot_q/k` points.
    pub(crate) fn qkv(
        &self,
        x: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (l, cfg, w) = (self.layer, self.cfg, self.w);
        let (b, p, _) = x.dims3()?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let mut q = linear(x, &w.w_q, w.b_q.as_ref())?;
        let mut k = linear(x, &w.w_k, w.b_k.as_ref())?;
        let v = linear(x, &w.w_v, w.b_v.as_ref())?.reshape((b, p, kv, dh))?;
        // the q/k norm is an RMSNorm over the last axis: all heads at once before the split
        // into heads (OLMo 2), or each head after it (Qwen 3, Gemma 3)
        let qk = (&w.q_norm, &w.k_norm);
        if let (QkNorm::AllHeads, (Some(qn), Some(kn))) = (cfg.qk_norm, qk) {
            q = self.norm_spec().head_rms(&q, qn)?;
            k = self.norm_spec().head_rms(&k, kn)?;
        }
        q = q.reshape((b, p, h, dh))?;
        k = k.reshape((b, p, kv, dh))?;
        if let (QkNorm::PerHead, (Some(qn), Some(kn))) = (cfg.qk_norm, qk) {
            q = self.norm_spec().head_rms(&q, qn)?;
            k = self.norm_spec().head_rms(&k, kn)?;
        }
        let q = hook(sink, HookPoint::Q(l), q)?;
        let k = hook(sink, HookPoint::K(l), k)?;
        let v = hook(sink, HookPoint::V(l), v)?;
        let kind = cfg.layer_attention[l];
        let (q, k) = match &cfg.positional {
            Positional::Rotary(r) => {
                let (cos, sin) = ctx.rope(kind, offset, p, b)?;
                let q = rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
                let k = rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
                (
                    hook(sink, HookPoint::RotQ(l), q)?,
                    hook(sink, HookPoint::RotK(l), k)?,
                )
            }
            Positional::Learned => (q, k),
        };
        Ok((q, k, v))
    }

    /// Keys or values `[batch, pos, kv_head, d_head]` as one copy per query head,
    /// `[batch, head, pos, d_head]` (grouped-query attention shares a kv head among
    /// `n_heads / n_kv_heads` query heads).
    pub(crate) fn ungroup(&self, x: &Tensor) -> Result<Tensor> {
        let (h, kv) = (self.cfg.n_heads, self.cfg.n_kv_heads);
        let (b, t, _, dh) = x.dims4()?;
        let x = x.transpose(1, 2)?; // [b, kv, t, dh]
        if kv == h {
            return Ok(x.contiguous()?);
        }
        let g = h / kv;
        Ok(x.unsqueeze(2)?
            .expand((b, kv, g, t, dh))?
            .reshape((b, h, t, dh))?)
    }

    /// Scores, mask, softmax and the pattern-weighted values of queries `qt [batch, head,
    /// pos, d_head]` over keys and values `kt`, `vt [batch, head, t, d_head]` (one copy per
    /// query head), then `z W_O + b_O`: the attention output before the post-norm
    /// `[batch, pos, d_model]`. Fires `hook_attn_scores`, `hook_pattern`, `hook_z` and (when
    /// asked for) `hook_result`.
    pub(crate) fn attend(
        &self,
        qt: &Tensor,
        kt: &Tensor,
        vt: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let (l, cfg) = (self.layer, self.cfg);
        let (b, p, t) = (qt.dim(0)?, qt.dim(2)?, kt.dim(2)?);
        let mut scores = (qt.matmul(&kt.t()?)? * cfg.attn_scale)?;
        if let Some(cap) = cfg.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = ctx.mask(cfg.layer_attention[l], offset, p, t, b)?;
        let scores = hook(sink, HookPoint::AttnScores(l), scores.broadcast_add(&mask)?)?;
        let pattern = hook(sink, HookPoint::Pattern(l), softmax(&scores, self.dtype)?)?;
        // z: [b, p, h, dh]
        let z = pattern.matmul(vt)?.transpose(1, 2)?.contiguous()?;
        self.z_out(z, sink)
    }

    /// [`Self::attend`] on the CPU kernel of `ops::attention` for queries `q [batch, pos,
    /// head, d_head]` and keys and values `[batch, t, kv_head, d_head]` as they come out of
    /// the projections (no copies): the whole softmax in one pass where no hook reads the
    /// scores or the pattern, the scores and the weighted values apart (with the hooks in
    /// between) where one does. `None` where the kernel does not apply (dtypes, devices, a run
    /// with gradients), and the caller composes candle's ops.
    fn attend_fused(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        sink: &mut dyn HookSink,
    ) -> Result<Option<Tensor>> {
        let (l, cfg) = (self.layer, self.cfg);
        let (b, p, t) = (q.dim(0)?, q.dim(1)?, k.dim(1)?);
        let mask = ctx.mask(cfg.layer_attention[l], offset, p, t, b)?;
        let inp = AttnInputs {
            q,
            k,
            v,
            mask: &mask,
            scale: cfg.attn_scale,
            softcap: cfg.attn_softcap,
        };
        let hooked = sink.wants(&HookPoint::AttnScores(l)) || sink.wants(&HookPoint::Pattern(l));
        let z = if !hooked {
            attention_kernel::attention_z(&inp)?
        } else if let Some(scores) = attention_kernel::scores(&inp)? {
            let scores = hook(sink, HookPoint::AttnScores(l), scores)?;
            let pattern = hook(sink, HookPoint::Pattern(l), softmax(&scores, self.dtype)?)?;
            match attention_kernel::weighted_values(&pattern, v)? {
                Some(z) => Some(z),
                // a hook handed back a tracked pattern: candle's product carries its gradient
                None => Some(
                    pattern
                        .matmul(&self.ungroup(v)?)?
                        .transpose(1, 2)?
                        .contiguous()?,
                ),
            }
        } else {
            None
        };
        match z {
            Some(z) => Ok(Some(self.z_out(z, sink)?)),
            None => Ok(None),
        }
    }

    /// Fires `hook_z` on `z [batch, pos, head, d_head]` and returns `z W_O + b_O` (through
    /// `hook_result` when a hook asks for it): the attention output before the post-norm.
    fn z_out(&self, z: Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let (l, w) = (self.layer, self.w);
        let (b, p, h, dh) = z.dims4()?;
        let z = hook(sink, HookPoint::Z(l), z)?;
        if sink.wants(&HookPoint::Result(l)) {
            let result = self.head_results(&z)?;
            let result = hook(sink, HookPoint::Result(l), result)?;
            let out = result.sum(2)?;
            return Ok(match &w.b_o {
                Some(bo) => out.broadcast_add(bo)?,
                None => out,
            });
        }
        linear(&z.reshape((b, p, h * dh))?, &w.w_o, w.b_o.as_ref())
    }

    /// What `z [batch, pos, head, d_head]` adds to the residual stream: `z W_O + b_O`, then
    /// the post-attention norm where the family has one (no hooks fire) — `[batch, pos,
    /// d_model]`, the `hook_attn_out` a patched `z` produces.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `z` is not 4-D or its last two axes do not multiply to
    /// `n_heads * d_head`; other splits of that width are not caught (unlike
    /// [`Self::head_results`]).
    pub fn attn_out_from_z(&self, z: &Tensor) -> Result<Tensor> {
        let (b, p, h, dh) = z.dims4()?;
        let w = self.w;
        let mut out = linear(&z.reshape((b, p, h * dh))?, &w.w_o, w.b_o.as_ref())?;
        if let Some(pn) = &w.ln1_post {
            out = self.norm_spec().apply(pn, &out, None, &mut NoHooks)?;
        }
        Ok(out)
    }

    /// Each head's output `z W_O` without the bias: `z [batch, pos, head, d_head]` ->
    /// `[batch, pos, head, d_model]` (TransformerLens's `hook_result`).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when `z` is not `[batch, pos, n_heads, d_head]` of this model.
    pub fn head_results(&self, z: &Tensor) -> Result<Tensor> {
        let cfg = self.cfg;
        let dims = z.dims();
        if dims.len() != 4 || dims[2] != cfg.n_heads || dims[3] != cfg.d_head {
            return Err(LensError::mismatch("z and the model", format!(
                    "z has shape {dims:?}; head results need [batch, pos, {}, {}], this model's blocks.{}.attn.hook_z",
                    cfg.n_heads, cfg.d_head, self.layer
                )));
        }
        let (b, p, h, dh) = z.dims4()?;
        // W_O[h] = w_o[:, h*dh..(h+1)*dh]^T  ->  [h, dh, d_model]
        let w_o = self.w.w_o.t()?.reshape((h, dh, cfg.d_model))?;
        let zh = z.permute((2, 0, 1, 3))?.reshape((h, b * p, dh))?;
        Ok(zh
            .matmul(&w_o.contiguous()?)?
            .reshape((h, b, p, cfg.d_model))?
            .permute((1, 2, 0, 3))?
            .contiguous()?)
    }
}
