//! The inside of one transformer block — norms, attention (with a KV cache), MLP — shared by
//! every architecture: [`Block`], a view over one layer's weights. Hook points fire through a
//! [`HookSink`]. The model ([`crate::HookedTransformer`]) strings blocks together; analysis
//! code (patching sweeps, the LRE Jacobian) runs single blocks or block halves through the same
//! API. The attention half's inside (projections, rotary, scores, softmax, `z W_O`) is in
//! [`attention`].

use candle_core::{DType, Device, Tensor};

use crate::engine::config::{AttentionKind, ModelConfig, Positional};
use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::ops::{activation, gated_activation, hook, linear, NormSpec};
use crate::engine::rope::{causal_mask, rope_tables};
use crate::engine::weights::LayerWeights;
use crate::error::{LensError, Result};

pub mod attention;

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
    /// Keys after rotary (and the k norm), `[batch, pos, kv_head, d_head]`.
    pub k: Tensor,
    /// Values, `[batch, pos, kv_head, d_head]`.
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

impl ForwardCtx {
    /// Rotary tables and masks of `cfg` for sequences of up to `seq` positions.
    ///
    /// # Errors
    /// Tensor allocation failure.
    pub fn new(cfg: &ModelConfig, seq: usize, dt: DType, dev: &Device) -> Result<Self> {
        let (rope_global, rope_local) = match &cfg.positional {
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
        for &kind in &cfg.layer_attention {
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

    /// The rotary `(cos, sin)` rows of positions `offset..offset + p` for a layer of attention
    /// `kind` (local layers have their own base where the family has one).
    pub(crate) fn rope(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
    ) -> Result<(Tensor, Tensor)> {
        let tables = match (kind, &self.rope_local) {
            (AttentionKind::Local { .. }, Some(t)) => t,
            _ => self.rope_global.as_ref().ok_or_else(|| {
                LensError::Internal("rotary tables missing from the forward context".into())
            })?,
        };
        Ok((
            tables.0.narrow(0, offset, p)?,
            tables.1.narrow(0, offset, p)?,
        ))
    }

    /// The additive causal mask of attention `kind` for queries `offset..offset + p` over the
    /// first `t` keys, `[p, t]`.
    pub(crate) fn mask(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
        t: usize,
    ) -> Result<Tensor> {
        let mask = self
            .masks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                LensError::Internal("causal mask missing from the forward context".into())
            })?;
        Ok(if offset == 0 && p == self.seq && t == self.seq {
            mask.clone()
        } else {
            mask.narrow(0, offset, p)?.narrow(1, 0, t)?
        })
    }
}

/// Which of a head's inputs come from elsewhere (path patching's receivers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QkvInputs {
    /// The queries.
    pub q: bool,
    /// The keys.
    pub k: bool,
    /// The values.
    pub v: bool,
}

/// One transformer block: a view over layer `layer`'s weights with the model's switches.
/// Get one from [`crate::HookedTransformer::block`].
#[derive(Clone, Copy)]
pub struct Block<'a> {
    /// The layer index (hook points fire as `blocks.{layer}.…`).
    pub layer: usize,
    cfg: &'a ModelConfig,
    w: &'a LayerWeights,
    dtype: DType,
}

impl<'a> Block<'a> {
    /// A view over `w`, layer `layer` of a model with config `cfg`, computing in `dtype`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`] if `layer` is beyond `cfg.n_layers`.
    pub fn new(
        cfg: &'a ModelConfig,
        w: &'a LayerWeights,
        layer: usize,
        dtype: DType,
    ) -> Result<Self> {
        if layer >= cfg.n_layers {
            return Err(LensError::LayerOutOfRange {
                layer,
                n_layers: cfg.n_layers,
            });
        }
        Ok(Block {
            layer,
            cfg,
            w,
            dtype,
        })
    }

    /// The layer's weights.
    pub fn weights(&self) -> &'a LayerWeights {
        self.w
    }

    /// The model's config.
    pub fn cfg(&self) -> &'a ModelConfig {
        self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn norm_spec(&self) -> NormSpec {
        NormSpec::of(self.cfg, self.dtype)
    }

    /// The block on positions `offset..offset + pos` of `x = resid_pre [batch, pos, d_model]`
    /// given the keys/values of the earlier positions (`past`, a KV cache); returns
    /// `resid_post [batch, pos, d_model]` and the keys/values of all positions so far.
    /// Fires every hook point of the block.
    ///
    /// # Errors
    /// Tensor errors, hook errors.
    pub fn forward(
        &self,
        x: Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, PastKv)> {
        let l = self.layer;
        let resid_pre = hook(sink, HookPoint::ResidPre(l), x)?;
        let (attn_out, n1, kv) = self.attn_half(&resid_pre, ctx, offset, past, sink)?;
        if self.cfg.parallel_attn_mlp {
            let mlp_in = self.parallel_mlp_input(&resid_pre, n1, sink)?;
            let mlp_out = self.mlp(&mlp_in, sink)?;
            let resid_post = ((resid_pre + attn_out)? + mlp_out)?;
            return Ok((hook(sink, HookPoint::ResidPost(l), resid_post)?, kv));
        }
        let resid_mid = hook(sink, HookPoint::ResidMid(l), (resid_pre + attn_out)?)?;
        Ok((self.mlp_half(resid_mid, sink)?, kv))
    }

    /// The attention half of the block: `(attn_out, ln1 output, keys/values)`, each
    /// `[batch, pos, ·]`. `attn_out` is what joins the residual (after the post-norm, for
    /// Gemma 2/3).
    ///
    /// # Errors
    /// Tensor and hook errors.
    pub fn attn_half(
        &self,
        resid_pre: &Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, Tensor, PastKv)> {
        let (l, w) = (self.layer, self.w);
        let n1 = match &w.ln1 {
            Some(ln1) => self.norm_spec().apply(
                ln1,
                resid_pre,
                Some((HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l))),
                sink,
            )?,
            // no pre-norm (OLMo 2): attention reads the residual stream itself
            None => resid_pre.clone(),
        };
        let (mut attn_out, kv) = self.attention(&n1, ctx, offset, past, sink)?;
        if let Some(pn) = &w.ln1_post {
            attn_out = self.norm_spec().apply(
                pn,
                &attn_out,
                Some((HookPoint::Ln1PostScale(l), HookPoint::Ln1PostNormalized(l))),
                sink,
            )?;
        }
        let attn_out = hook(sink, HookPoint::AttnOut(l), attn_out)?;
        Ok((attn_out, n1, kv))
    }

    /// What the MLP of a parallel block reads: `ln2(resid_pre)` (GPT-NeoX, firing the `ln2`
    /// hooks) or `ln1`'s output `n1` (GPT-J).
    ///
    /// # Errors
    /// Tensor and hook errors.
    pub fn parallel_mlp_input(
        &self,
        resid_pre: &Tensor,
        n1: Tensor,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let l = self.layer;
        match &self.w.ln2 {
            Some(ln2) if self.cfg.parallel_ln2 => self.norm_spec().apply(
                ln2,
                resid_pre,
                Some((HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l))),
                sink,
            ),
            _ => Ok(n1),
        }
    }

    /// The MLP half of a (sequential) block: `resid_mid [batch, pos, d_model]` ->
    /// `resid_post`.
    ///
    /// # Errors
    /// Tensor and hook errors.
    pub fn mlp_half(&self, resid_mid: Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let (l, w) = (self.layer, self.w);
        let mlp_out = match &w.ln2 {
            Some(ln2) => {
                let n2 = self.norm_spec().apply(
                    ln2,
                    &resid_mid,
                    Some((HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l))),
                    sink,
                )?;
                self.mlp(&n2, sink)?
            }
            // no pre-norm (OLMo 2): the MLP reads the residual stream itself
            None => self.mlp(&resid_mid, sink)?,
        };
        hook(sink, HookPoint::ResidPost(l), (resid_mid + mlp_out)?)
    }

    /// The MLP on its normalised input `x [batch, pos, d_model]`: `hook_mlp_out`, after the
    /// post-norm where the family has one.
    ///
    /// # Errors
    /// Tensor and hook errors.
    pub fn mlp(&self, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let (l, w) = (self.layer, self.w);
        let mut out = match &self.cfg.moe {
            Some(moe) => self.moe_mlp(x, moe, sink)?,
            None => self.dense_mlp(x, sink)?,
        };
        if let Some(pn) = &w.ln2_post {
            out = self.norm_spec().apply(
                pn,
                &out,
                Some((HookPoint::Ln2PostScale(l), HookPoint::Ln2PostNormalized(l))),
                sink,
            )?;
        }
        hook(sink, HookPoint::MlpOut(l), out)
    }

    /// A dense MLP, `act(x W_gate) ⊙ (x W_in) W_out` or `act(x W_in) W_out`, before the
    /// post-norm.
    fn dense_mlp(&self, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let (l, w) = (self.layer, self.w);
        let post = match &w.w_gate {
            Some(gate) => {
                let pre = hook(sink, HookPoint::MlpPre(l), linear(x, gate, None)?)?;
                let lin = hook(
                    sink,
                    HookPoint::MlpPreLinear(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                gated_activation(self.cfg.act, &pre, &lin)?
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
        linear(&post, &w.w_out, w.b_out.as_ref())
    }

    /// The attention input of this block: `ln1(resid_pre)`, or the residual itself for
    /// families without a pre-norm (OLMo 2). No hooks fire.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn ln1(&self, resid_pre: &Tensor) -> Result<Tensor> {
        match &self.w.ln1 {
            Some(ln1) => {
                self.norm_spec()
                    .apply(ln1, resid_pre, None, &mut crate::engine::hooks::NoHooks)
            }
            None => Ok(resid_pre.clone()),
        }
    }
}
