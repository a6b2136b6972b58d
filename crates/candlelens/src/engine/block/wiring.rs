//! The one place where a block is wired. Every architecture is one of two shapes:
//!
//! ```text
//! sequential:  resid_mid  = resid_pre + post1(attn(ln1(resid_pre)))
//!              resid_post = resid_mid + post2(mlp(ln2(resid_mid)))
//! parallel:    resid_post = resid_pre + post1(attn(ln1(resid_pre))) + post2(mlp(ln2(resid_pre)))
//! ```
//!
//! with `ln1`/`ln2` absent where the family has no pre-norms (OLMo 2), `post1`/`post2` only
//! where it has post-norms (Gemma 2/3), and a parallel block's MLP reading `ln1`'s output where
//! it has no norm of its own (GPT-J, Phi). [`Block::wire`] writes this down once; what varies
//! between the callers — how a norm, the attention and the MLP are computed, whether a branch
//! is frozen at a given value, whether hook points fire — is a [`Wiring`]:
//!
//! - [`Forward`]: the forward on tensors (hook points fire through a sink), with optional
//!   replacements: a frozen attention or MLP branch (path patching), heads reading other inputs
//!   ([`Heads`]: path patching's receivers, edge attribution's split heads), a tap on the
//!   residual the MLP reads (edge attribution).
//! - [`super::jvp::Tangents`]: the forward-mode derivative, values and tangents together.
//!
//! Code outside the block asks [`BlockKind`] about a block's shape (does it have a
//! `resid_mid`, does its attention feed its MLP) instead of reading the config's switches.

use candle_core::Tensor;

use super::context::{ForwardCtx, PastKv};
use super::kind::{BlockKind, Stage};
use super::split::SplitTaps;
use super::{Block, QkvInputs};
use crate::engine::hooks::{HookPoint, HookSink, NoHooks};
use crate::engine::ops::hook;
use crate::engine::weights::NormWeights;
use crate::error::{LensError, Result};

impl BlockKind {
    /// Where layer `l`'s attention output joins the residual stream, for a patch that changes
    /// it by `Δ` and leaves the rest of the block alone: `(the residual to add Δ to, the
    /// layer and stage to continue from)`. Sequential blocks continue at their own MLP half
    /// from `resid_mid + Δ`; parallel blocks' MLPs do not read the attention, so they continue
    /// at the next layer from `resid_post + Δ`.
    pub fn attn_joins(self, l: usize) -> (HookPoint, usize, Stage) {
        match self {
            BlockKind::Sequential => (HookPoint::ResidMid(l), l, Stage::Mid),
            BlockKind::Parallel { .. } => (HookPoint::ResidPost(l), l + 1, Stage::Pre),
        }
    }
}

/// The norms of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormSite {
    /// The attention's pre-norm (`ln1`).
    Ln1,
    /// The MLP's pre-norm (`ln2`).
    Ln2,
    /// The norm on the attention's output (`ln1_post`, Gemma 2/3).
    Ln1Post,
    /// The norm on the MLP's output (`ln2_post`, Gemma 2/3).
    Ln2Post,
}

impl NormSite {
    /// The `(hook_scale, hook_normalized)` points of this norm in layer `l`.
    pub fn points(self, l: usize) -> (HookPoint, HookPoint) {
        match self {
            NormSite::Ln1 => (HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l)),
            NormSite::Ln2 => (HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l)),
            NormSite::Ln1Post => (HookPoint::Ln1PostScale(l), HookPoint::Ln1PostNormalized(l)),
            NormSite::Ln2Post => (HookPoint::Ln2PostScale(l), HookPoint::Ln2PostNormalized(l)),
        }
    }
}

/// The pieces of a block's computation, as one caller computes them; [`Block::wire`] joins them.
pub trait Wiring {
    /// What flows through the block: a tensor, or values with their tangents.
    type V: Clone;

    /// `a + b` on the residual stream.
    ///
    /// # Errors
    /// Shapes that do not match.
    fn add(&mut self, a: Self::V, b: &Self::V) -> Result<Self::V>;

    /// Hook point `p` on `v`: fired, or passed through.
    ///
    /// # Errors
    /// Whatever a hook returns.
    fn point(&mut self, _p: HookPoint, v: Self::V) -> Result<Self::V> {
        Ok(v)
    }

    /// Norm `site` of `block` (weights `w`) on `x`.
    ///
    /// # Errors
    /// Whatever a hook on the norm returns.
    fn norm(
        &mut self,
        block: &Block,
        site: NormSite,
        w: &NormWeights,
        x: &Self::V,
    ) -> Result<Self::V>;

    /// The attention of `block` on its normalised input `n1`, before the post-norm
    /// (`resid_pre` for wirings whose heads read copies of the residual stream).
    ///
    /// # Errors
    /// Whatever a hook returns.
    fn attention(&mut self, block: &Block, resid_pre: &Self::V, n1: &Self::V) -> Result<Self::V>;

    /// The MLP of `block` on its normalised input, before the post-norm.
    ///
    /// # Errors
    /// Whatever a hook returns.
    fn mlp(&mut self, block: &Block, x: &Self::V) -> Result<Self::V>;

    /// A value for the whole attention branch (`hook_attn_out`, after the post-norm) in place
    /// of computing it: a frozen or patched branch. `None`: compute it.
    ///
    /// # Errors
    /// As the caller's value requires.
    fn attn_out(&mut self, _block: &Block) -> Result<Option<Self::V>> {
        Ok(None)
    }

    /// Likewise for the MLP branch (`hook_mlp_out`).
    ///
    /// # Errors
    /// As the caller's value requires.
    fn mlp_out(&mut self, _block: &Block) -> Result<Option<Self::V>> {
        Ok(None)
    }

    /// The residual the MLP reads when it is not the stream itself (edge attribution's tap on
    /// the MLP's input). `None`: the stream.
    ///
    /// # Errors
    /// Shapes that do not match.
    fn mlp_source(&mut self, _block: &Block, _resid: &Self::V) -> Result<Option<Self::V>> {
        Ok(None)
    }
}

impl Block<'_> {
    /// The block on `x`, entering at `from` (`resid_pre`, or `resid_mid` of a sequential
    /// block), its pieces computed by `w`: `resid_post`.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for [`Stage::Mid`] on a parallel block (it has no
    /// `resid_mid`); whatever `w`'s pieces return.
    pub fn wire<W: Wiring>(&self, from: Stage, x: W::V, w: &mut W) -> Result<W::V> {
        let l = self.layer;
        let kind = self.kind();
        let mid = match from {
            Stage::Mid if !kind.has_resid_mid() => {
                return Err(LensError::Unsupported {
                    what: "entering a parallel block at resid_mid".into(),
                    fix: "this model runs attention and MLP in parallel, so it has no resid_mid; start at resid_pre".into(),
                })
            }
            Stage::Mid => x,
            Stage::Pre => {
                let pre = w.point(HookPoint::ResidPre(l), x)?;
                let (attn, n1) = self.attn_branch(&pre, w)?;
                if let BlockKind::Parallel { own_ln2 } = kind {
                    let mlp = self.mlp_branch(&pre, n1, own_ln2, w)?;
                    let post = w.add(pre, &attn)?;
                    let post = w.add(post, &mlp)?;
                    return w.point(HookPoint::ResidPost(l), post);
                }
                let mid = w.add(pre, &attn)?;
                w.point(HookPoint::ResidMid(l), mid)?
            }
        };
        let mlp = self.mlp_branch(&mid, None, true, w)?;
        let post = w.add(mid, &mlp)?;
        w.point(HookPoint::ResidPost(l), post)
    }

    /// The attention branch alone: `hook_attn_out [batch, pos, d_model]` (after the
    /// post-norm) of `resid_pre`, as [`Self::wire`] computes it with `f` — e.g. with
    /// [`Heads::Mixed`], a head's output when its queries, keys or values are patched.
    ///
    /// # Errors
    /// Whatever `f`'s pieces return.
    pub fn attn_out(&self, resid_pre: &Tensor, f: &mut Forward) -> Result<Tensor> {
        Ok(self.attn_branch(resid_pre, f)?.0)
    }

    /// `norm(x)` at a pre-norm `site`, or `x` itself where the family has none.
    fn pre_norm<W: Wiring>(&self, site: NormSite, x: &W::V, w: &mut W) -> Result<W::V> {
        let weights = match site {
            NormSite::Ln1 => &self.w.ln1,
            _ => &self.w.ln2,
        };
        match weights {
            Some(nw) => w.norm(self, site, nw, x),
            None => Ok(x.clone()),
        }
    }

    /// `hook_attn_out` and, where it was computed, `ln1`'s output.
    fn attn_branch<W: Wiring>(&self, pre: &W::V, w: &mut W) -> Result<(W::V, Option<W::V>)> {
        let l = self.layer;
        if let Some(out) = w.attn_out(self)? {
            return Ok((w.point(HookPoint::AttnOut(l), out)?, None));
        }
        let n1 = self.pre_norm(NormSite::Ln1, pre, w)?;
        let mut out = w.attention(self, pre, &n1)?;
        if let Some(pn) = &self.w.ln1_post {
            out = w.norm(self, NormSite::Ln1Post, pn, &out)?;
        }
        Ok((w.point(HookPoint::AttnOut(l), out)?, Some(n1)))
    }

    /// `hook_mlp_out` of the MLP reading `resid` through `ln2` (`own_norm`) or through `ln1`
    /// (a parallel block without its own norm, reusing `n1` where the attention computed it).
    fn mlp_branch<W: Wiring>(
        &self,
        resid: &W::V,
        n1: Option<W::V>,
        own_norm: bool,
        w: &mut W,
    ) -> Result<W::V> {
        let l = self.layer;
        let out = match w.mlp_out(self)? {
            Some(out) => out,
            None => {
                let source = w.mlp_source(self, resid)?;
                let input = match (own_norm, source, n1) {
                    (true, source, _) => {
                        self.pre_norm(NormSite::Ln2, source.as_ref().unwrap_or(resid), w)?
                    }
                    (false, None, Some(n1)) => n1,
                    (false, source, _) => {
                        self.pre_norm(NormSite::Ln1, source.as_ref().unwrap_or(resid), w)?
                    }
                };
                let mut out = w.mlp(self, &input)?;
                if let Some(pn) = &self.w.ln2_post {
                    out = w.norm(self, NormSite::Ln2Post, pn, &out)?;
                }
                out
            }
        };
        w.point(HookPoint::MlpOut(l), out)
    }
}

/// Which inputs the heads of [`Forward`]'s attention read.
#[derive(Clone, Copy, Default)]
pub enum Heads<'t> {
    /// Every head reads the block's `ln1` output (the model's forward).
    #[default]
    Standard,
    /// Head `h` takes its queries (keys, values) from `ln1(alt)` where `inputs[h]` says so —
    /// path patching's receivers (see [`Block::attention_mixed`]); `alt` is a residual stream
    /// `[batch, pos, d_model]` at the block's positions.
    Mixed {
        /// The other residual stream.
        alt: &'t Tensor,
        /// Per head, which of its inputs read `alt`.
        inputs: &'t [QkvInputs],
    },
    /// Each head reads its own copy of `resid_pre` plus its tap — edge attribution (see
    /// [`Block::attention_split`]; positions from 0, no KV cache).
    Split(&'t SplitTaps<'t>),
}

/// The block's forward on tensors: hook points fire through a sink (none by default), the
/// attention runs at positions `offset..` after the keys and values of `past`, and a caller
/// may freeze a branch, change what the heads read or tap the MLP's input.
pub struct Forward<'s> {
    ctx: &'s ForwardCtx,
    offset: usize,
    past: Option<&'s PastKv>,
    sink: Option<&'s mut dyn HookSink>,
    quiet: NoHooks,
    /// What the heads read.
    pub heads: Heads<'s>,
    /// The attention branch's output (`hook_attn_out`, after the post-norm) instead of
    /// computing it.
    pub attn_out: Option<Tensor>,
    /// The MLP branch's output (`hook_mlp_out`) instead of computing it.
    pub mlp_out: Option<Tensor>,
    /// Added to the residual the MLP reads (not to the stream itself).
    pub mlp_tap: Option<&'s Tensor>,
    /// The keys and values of all positions so far, once the attention has run.
    pub kv: Option<PastKv>,
}

impl<'s> Forward<'s> {
    /// A forward without hooks at positions `offset..` after `past`.
    pub fn new(ctx: &'s ForwardCtx, offset: usize, past: Option<&'s PastKv>) -> Self {
        Forward {
            ctx,
            offset,
            past,
            sink: None,
            quiet: NoHooks,
            heads: Heads::Standard,
            attn_out: None,
            mlp_out: None,
            mlp_tap: None,
            kv: None,
        }
    }

    /// The same, firing hook points through `sink`.
    pub fn with_sink(mut self, sink: &'s mut dyn HookSink) -> Self {
        self.sink = Some(sink);
        self
    }

    fn sink(&mut self) -> &mut dyn HookSink {
        match self.sink {
            Some(ref mut s) => &mut **s,
            None => &mut self.quiet,
        }
    }
}

impl Wiring for Forward<'_> {
    type V = Tensor;

    fn add(&mut self, a: Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn point(&mut self, p: HookPoint, v: Tensor) -> Result<Tensor> {
        hook(self.sink(), p, v)
    }

    fn norm(
        &mut self,
        block: &Block,
        site: NormSite,
        w: &NormWeights,
        x: &Tensor,
    ) -> Result<Tensor> {
        let points = site.points(block.layer);
        block.norm_spec().apply(w, x, Some(points), self.sink())
    }

    fn attention(&mut self, block: &Block, resid_pre: &Tensor, n1: &Tensor) -> Result<Tensor> {
        let (ctx, offset, past) = (self.ctx, self.offset, self.past);
        match self.heads {
            Heads::Standard => {
                let (out, kv) = block.attention(n1, ctx, offset, past, self.sink())?;
                self.kv = Some(kv);
                Ok(out)
            }
            Heads::Mixed { alt, inputs } => {
                let alt_n1 = block.ln1(alt)?;
                block.attention_mixed(n1, &alt_n1, inputs, ctx, offset, past)
            }
            Heads::Split(taps) => block.attention_split(resid_pre, taps, ctx),
        }
    }

    fn mlp(&mut self, block: &Block, x: &Tensor) -> Result<Tensor> {
        block.mlp(x, self.sink())
    }

    fn attn_out(&mut self, _block: &Block) -> Result<Option<Tensor>> {
        Ok(self.attn_out.take())
    }

    fn mlp_out(&mut self, _block: &Block) -> Result<Option<Tensor>> {
        Ok(self.mlp_out.take())
    }

    fn mlp_source(&mut self, _block: &Block, resid: &Tensor) -> Result<Option<Tensor>> {
        match self.mlp_tap {
            Some(tap) => Ok(Some((resid + tap)?)),
            None => Ok(None),
        }
    }
}
