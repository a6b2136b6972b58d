//! The inside of one transformer block — norms, attention (with a KV cache), MLP — shared by
//! every architecture. Hook points fire through a [`HookSink`].

use candle_core::{DType, Tensor, D};

use crate::config::{Activation, AttentionKind, NormKind, Positional};
use crate::error::{LensError, Result};
use crate::hooks::{HookPoint, HookSink};
use crate::model::HookedTransformer;
use crate::rope::{causal_mask, rope_tables};
use crate::weights::NormWeights;

/// Per-forward tables: rotary cos/sin per base and causal masks per attention kind.
pub struct ForwardCtx {
    pub(crate) seq: usize,
    rope_global: Option<(Tensor, Tensor)>,
    rope_local: Option<(Tensor, Tensor)>,
    masks: Vec<(AttentionKind, Tensor)>,
}

/// Keys (after rotary) and values of the positions seen so far in one layer,
/// `[batch, pos, kv_head, d_head]` each: the KV cache of generation and patching sweeps.
#[derive(Clone, Debug)]
pub struct PastKv {
    pub k: Tensor,
    pub v: Tensor,
}

impl PastKv {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn hook(sink: &mut dyn HookSink, hp: HookPoint, x: Tensor) -> Result<Tensor> {
    if sink.wants(&hp) {
        sink.visit(&hp, x)
    } else {
        Ok(x)
    }
}

/// `x W^T + b` for `x [.., d_in]`, `w [d_out, d_in]`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / d_in.max(1);
    let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    Ok(y.reshape(out)?)
}

pub(crate) fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
}

impl HookedTransformer {
    /// Rotary tables and masks for sequences of up to `seq` positions.
    ///
    /// # Errors
    /// Tensor allocation failure.
    pub fn context(&self, seq: usize) -> Result<ForwardCtx> {
        let (dt, dev) = (self.dtype, &self.device);
        let (rope_global, rope_local) = match &self.cfg.positional {
            Positional::Learned => (None, None),
            Positional::Rotary(r) => {
                let g = rope_tables(r.dim, r.base, r.scaling.as_ref(), seq, dt, dev)?;
                let l = match r.local_base {
                    Some(b) => Some(rope_tables(r.dim, b, None, seq, dt, dev)?),
                    None => None,
                };
                (Some(g), l)
            }
        };
        let mut masks: Vec<(AttentionKind, Tensor)> = Vec::new();
        for &kind in &self.cfg.layer_attention {
            if !masks.iter().any(|(k, _)| *k == kind) {
                masks.push((kind, causal_mask(kind, seq, dt, dev)?));
            }
        }
        Ok(ForwardCtx {
            seq,
            rope_global,
            rope_local,
            masks,
        })
    }

    /// Normalises `x [batch, pos, d]`, firing the scale and normalized hooks if given.
    pub(crate) fn norm(
        &self,
        w: &NormWeights,
        x: &Tensor,
        hooks: Option<(HookPoint, HookPoint)>,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let centred = match self.cfg.norm {
            NormKind::LayerNorm => x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
            NormKind::RmsNorm => x32,
        };
        let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm_eps)?.sqrt()?;
        let scale = match hooks {
            Some((hs, _)) => hook(sink, hs, scale.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?,
            None => scale,
        };
        let mut y = centred
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(&w.w)?;
        if let Some(b) = &w.b {
            y = y.broadcast_add(b)?;
        }
        match hooks {
            Some((_, hn)) => hook(sink, hn, y),
            None => Ok(y),
        }
    }

    /// Per-head RMSNorm over `d_head` for `x [batch, pos, heads, d_head]` (Qwen3/Gemma 3 q/k norm).
    fn head_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let scale = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm_eps)?.sqrt()?;
        Ok(x32
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(w)?)
    }

    /// Rotary on `x [batch, pos, heads, d_head]`: the first `dim` dims of each head rotate,
    /// as two halves (HF / NeoX) or as adjacent pairs (`interleaved`, GPT-J).
    fn rotate(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dim: usize,
        interleaved: bool,
    ) -> Result<Tensor> {
        let d_head = x.dim(3)?;
        let apply = |r: &Tensor| -> Result<Tensor> {
            // candle's fused rotary kernels carry no gradient; when `r` is tracked (LRE
            // Jacobians) the composed ones run instead
            let tracked = r.track_op();
            if !interleaved && !tracked {
                return Ok(candle_nn::rotary_emb::rope_thd(&r.contiguous()?, cos, sin)?);
            }
            let bhtd = r.transpose(1, 2)?.contiguous()?;
            let out = match (interleaved, tracked) {
                (true, false) => candle_nn::rotary_emb::rope_i(&bhtd, cos, sin)?,
                (true, true) => candle_nn::rotary_emb::rope_i_slow(&bhtd, cos, sin)?,
                (false, _) => candle_nn::rotary_emb::rope_slow(&bhtd, cos, sin)?,
            };
            Ok(out.transpose(1, 2)?.contiguous()?)
        };
        if dim == d_head {
            return apply(x);
        }
        let rot = apply(&x.narrow(3, 0, dim)?)?;
        let pass = x.narrow(3, dim, d_head - dim)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }

    /// One transformer block: `resid_pre [batch, pos, d_model]` -> `resid_post`.
    ///
    /// # Errors
    /// Tensor errors, hook errors, [`LensError::LayerOutOfRange`].
    pub fn run_block(
        &self,
        l: usize,
        x: Tensor,
        ctx: &ForwardCtx,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        Ok(self.run_block_at(l, x, ctx, 0, None, sink)?.0)
    }

    /// One block on positions `offset..` given the keys/values of the earlier positions;
    /// returns `resid_post` and the keys/values of all positions so far (a KV cache step).
    ///
    /// # Errors
    /// As [`Self::run_block`].
    pub fn run_block_at(
        &self,
        l: usize,
        x: Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, PastKv)> {
        if l >= self.cfg.n_layers {
            return Err(LensError::LayerOutOfRange {
                layer: l,
                n_layers: self.cfg.n_layers,
            });
        }
        let resid_pre = hook(sink, HookPoint::ResidPre(l), x)?;
        let (attn_out, n1, kv) = self.attn_half(l, &resid_pre, ctx, offset, past, sink)?;
        if self.cfg.parallel_attn_mlp {
            let mlp_out = self.mlp(l, &n1, sink)?;
            let resid_post = ((resid_pre + attn_out)? + mlp_out)?;
            return Ok((hook(sink, HookPoint::ResidPost(l), resid_post)?, kv));
        }
        let resid_mid = hook(sink, HookPoint::ResidMid(l), (resid_pre + attn_out)?)?;
        Ok((self.mlp_half(l, resid_mid, sink)?, kv))
    }

    /// The attention half of a block: `(attn_out, ln1 output, keys/values)`. `attn_out` is what
    /// joins the residual (after the post-norm, for Gemma 2/3).
    pub(crate) fn attn_half(
        &self,
        l: usize,
        resid_pre: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, Tensor, PastKv)> {
        let w = &self.weights.layers[l];
        let n1 = self.norm(
            &w.ln1,
            resid_pre,
            Some((HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l))),
            sink,
        )?;
        let (mut attn_out, kv) = self.attention(l, &n1, ctx, offset, past, sink)?;
        if let Some(pn) = &w.ln1_post {
            attn_out = self.norm(
                pn,
                &attn_out,
                Some((HookPoint::Ln1PostScale(l), HookPoint::Ln1PostNormalized(l))),
                sink,
            )?;
        }
        let attn_out = hook(sink, HookPoint::AttnOut(l), attn_out)?;
        Ok((attn_out, n1, kv))
    }

    /// The MLP half of a (sequential) block: `resid_mid` -> `resid_post`.
    pub(crate) fn mlp_half(
        &self,
        l: usize,
        resid_mid: Tensor,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let w = &self.weights.layers[l];
        let n2 = self.norm(
            &w.ln2,
            &resid_mid,
            Some((HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l))),
            sink,
        )?;
        let mlp_out = self.mlp(l, &n2, sink)?;
        hook(sink, HookPoint::ResidPost(l), (resid_mid + mlp_out)?)
    }

    pub(crate) fn mlp(&self, l: usize, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let w = &self.weights.layers[l];
        let post = match &w.w_gate {
            Some(gate) => {
                let pre = hook(sink, HookPoint::MlpPre(l), linear(x, gate, None)?)?;
                let lin = hook(
                    sink,
                    HookPoint::MlpPreLinear(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                (activation(self.cfg.act, &pre)? * lin)?
            }
            None => {
                let pre = hook(
                    sink,
                    HookPoint::MlpPre(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                activation(self.cfg.act, &pre)?
            }
        };
        let post = hook(sink, HookPoint::MlpPost(l), post)?;
        let mut out = linear(&post, &w.w_out, w.b_out.as_ref())?;
        if let Some(pn) = &w.ln2_post {
            out = self.norm(
                pn,
                &out,
                Some((HookPoint::Ln2PostScale(l), HookPoint::Ln2PostNormalized(l))),
                sink,
            )?;
        }
        hook(sink, HookPoint::MlpOut(l), out)
    }

    /// Attention of the positions `offset..offset + pos` of `x [batch, pos, d_model]` (the
    /// norm's output) over the earlier positions in `past` and themselves. Returns the attention
    /// output `[batch, pos, d_model]` and the keys/values of all positions so far.
    pub(crate) fn attention(
        &self,
        l: usize,
        x: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, PastKv)> {
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let (b, p, _) = x.dims3()?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let mut q = linear(x, &w.w_q, w.b_q.as_ref())?.reshape((b, p, h, dh))?;
        let mut k = linear(x, &w.w_k, w.b_k.as_ref())?.reshape((b, p, kv, dh))?;
        let v = linear(x, &w.w_v, w.b_v.as_ref())?.reshape((b, p, kv, dh))?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            q = self.head_norm(&q, qn)?;
            k = self.head_norm(&k, kn)?;
        }
        let q = hook(sink, HookPoint::Q(l), q)?;
        let k = hook(sink, HookPoint::K(l), k)?;
        let v = hook(sink, HookPoint::V(l), v)?;
        let kind = cfg.layer_attention[l];
        let (q, k) = match &cfg.positional {
            Positional::Rotary(r) => {
                let tables = match (kind, &ctx.rope_local) {
                    (AttentionKind::Local { .. }, Some(t)) => t,
                    _ => ctx.rope_global.as_ref().ok_or_else(|| {
                        LensError::InvalidArgument("rotary tables missing".into())
                    })?,
                };
                let cos = tables.0.narrow(0, offset, p)?;
                let sin = tables.1.narrow(0, offset, p)?;
                let q = self.rotate(&q, &cos, &sin, r.dim, r.interleaved)?;
                let k = self.rotate(&k, &cos, &sin, r.dim, r.interleaved)?;
                (
                    hook(sink, HookPoint::RotQ(l), q)?,
                    hook(sink, HookPoint::RotK(l), k)?,
                )
            }
            Positional::Learned => (q, k),
        };
        let (k, v) = match past {
            Some(past) => (
                Tensor::cat(&[&past.k, &k], 1)?,
                Tensor::cat(&[&past.v, &v], 1)?,
            ),
            None => (k, v),
        };
        let t = k.dim(1)?;
        // [batch, heads, pos, d_head]
        let qt = q.transpose(1, 2)?.contiguous()?;
        let expand = |x: &Tensor| -> Result<Tensor> {
            let x = x.transpose(1, 2)?; // [b, kv, t, dh]
            if kv == h {
                return Ok(x.contiguous()?);
            }
            let g = h / kv;
            Ok(x.unsqueeze(2)?
                .expand((b, kv, g, t, dh))?
                .reshape((b, h, t, dh))?)
        };
        let kt = expand(&k)?;
        let vt = expand(&v)?;
        let mut scores = (qt.matmul(&kt.t()?)? * cfg.attn_scale)?;
        if let Some(cap) = cfg.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = ctx
            .masks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .ok_or_else(|| LensError::InvalidArgument("mask missing".into()))?;
        let mask = if offset == 0 && p == ctx.seq {
            mask.clone()
        } else {
            mask.narrow(0, offset, p)?.narrow(1, 0, t)?
        };
        let scores = hook(sink, HookPoint::AttnScores(l), scores.broadcast_add(&mask)?)?;
        let scores32 = scores.to_dtype(DType::F32)?;
        // the fused softmax kernel carries no gradient; the composed one does
        let pattern = if scores32.track_op() {
            candle_nn::ops::softmax(&scores32, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores32)?
        }
        .to_dtype(self.dtype)?;
        let pattern = hook(sink, HookPoint::Pattern(l), pattern)?;
        // z: [b, p, h, dh]
        let z = pattern.matmul(&vt)?.transpose(1, 2)?.contiguous()?;
        let z = hook(sink, HookPoint::Z(l), z)?;
        let out = if sink.wants(&HookPoint::Result(l)) {
            let result = self.head_results(l, &z)?;
            let result = hook(sink, HookPoint::Result(l), result)?;
            let out = result.sum(2)?;
            match &w.b_o {
                Some(bo) => out.broadcast_add(bo)?,
                None => out,
            }
        } else {
            linear(&z.reshape((b, p, h * dh))?, &w.w_o, w.b_o.as_ref())?
        };
        Ok((out, PastKv { k, v }))
    }

    /// Each head's output `z W_O` without the bias: `z [batch, pos, head, d_head]` ->
    /// `[batch, pos, head, d_model]` (TransformerLens's `hook_result`).
    ///
    /// # Errors
    /// Shape errors.
    pub fn head_results(&self, l: usize, z: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, p, h, dh) = z.dims4()?;
        // W_O[h] = w_o[:, h*dh..(h+1)*dh]^T  ->  [h, dh, d_model]
        let w_o = self.weights.layers[l]
            .w_o
            .t()?
            .reshape((h, dh, cfg.d_model))?;
        let zh = z.permute((2, 0, 1, 3))?.reshape((h, b * p, dh))?;
        Ok(zh
            .matmul(&w_o.contiguous()?)?
            .reshape((h, b, p, cfg.d_model))?
            .permute((1, 2, 0, 3))?
            .contiguous()?)
    }
}
