//! One transformer block, shared by every architecture: [`Block`], a view over one layer's
//! weights with the model's switches.
//!
//! - [`wiring`] is the one place where a block is wired — pre- and post-norms, sequential or
//!   parallel attention and MLP, which norm the MLP reads — through the [`Wiring`] trait: the
//!   forward ([`Block::forward`]), the patching sweep, path patching, edge attribution's split
//!   forward and the forward-mode JVP ([`jvp`]) all run [`Block::wire`], supplying the pieces
//!   they compute differently, freeze or replace.
//! - [`attention`]: projections, q/k norm, rotary, scores, softmax, `z W_O`, per-head views;
//!   [`split`]: attention whose heads read inputs of their own; [`mlp`]: the dense MLP;
//!   [`moe`]: the sparse mixture of experts; [`context`]: the tables a forward shares and the
//!   KV cache.
//!
//! The model ([`crate::HookedTransformer`]) strings blocks together between the embedding and
//! the unembedding.

pub mod attention;
pub mod context;
pub mod jvp;
pub mod kind;
pub mod mlp;
pub mod moe;
pub mod split;
pub mod wiring;

use candle_core::{DType, Tensor};

use crate::engine::config::ModelConfig;
use crate::engine::hooks::{HookSink, NoHooks};
use crate::engine::ops::NormSpec;
use crate::engine::weights::LayerWeights;
use crate::error::{LensError, Result};

pub use context::{ForwardCtx, PastKv};
pub use kind::{BlockKind, Stage};
pub use wiring::{Forward, Heads, NormSite, Wiring};

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

    /// How this block joins attention and MLP.
    pub fn kind(&self) -> BlockKind {
        BlockKind::of(self.cfg)
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
    /// Whatever a hook returns; [`LensError::Internal`] if `ctx` was built for fewer positions
    /// than `offset + pos` (a caller's bug).
    pub fn forward(
        &self,
        x: Tensor,
        ctx: &ForwardCtx,
        offset: usize,
        past: Option<&PastKv>,
        sink: &mut dyn HookSink,
    ) -> Result<(Tensor, PastKv)> {
        let mut f = Forward::new(ctx, offset, past).with_sink(sink);
        let out = self.wire(Stage::Pre, x, &mut f)?;
        let kv = f.kv.take().ok_or_else(|| {
            LensError::Internal("the block's attention returned no keys and values".into())
        })?;
        Ok((out, kv))
    }

    /// The attention input of this block: `ln1(resid_pre)`, or the residual itself for
    /// families without a pre-norm (OLMo 2). No hooks fire.
    ///
    /// # Errors
    /// Only a caller's bug: `resid_pre` is not `[.., d_model]`.
    pub fn ln1(&self, resid_pre: &Tensor) -> Result<Tensor> {
        match &self.w.ln1 {
            Some(ln1) => self.norm_spec().apply(ln1, resid_pre, None, &mut NoHooks),
            None => Ok(resid_pre.clone()),
        }
    }
}
