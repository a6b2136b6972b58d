//! [`HookedTransformer`]: the one generic forward pass, with TransformerLens hook points.
//!
//! Every architecture runs this code; the differences are switches in [`ModelConfig`]. The
//! pass is split into [`HookedTransformer::embed`], the blocks ([`HookedTransformer::block`],
//! a [`Block`] view per layer) and [`HookedTransformer::unembed`], so that analysis code
//! (patching sweeps, the LRE Jacobian) can start at any layer from a cached residual stream.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::engine::block::{Block, ForwardCtx};
use crate::engine::config::ModelConfig;
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::Hooks;
use crate::engine::hooks::{Chain, HookContext, HookFilter, HookPoint, HookSink, NoHooks};
use crate::engine::ops::{hook, linear, NormSpec};
use crate::engine::runtime::memory::Workload;
use crate::engine::text::tokenizer::LensTokenizer;
use crate::engine::text::tokens::Tokens;
use crate::engine::weights::Weights;
use crate::error::{LensError, Result};

pub mod generate;
mod text;

pub use text::TokenMatch;
pub mod weight_views;

/// A transformer with hook points, weights in the canonical layout, and its tokenizer.
pub struct HookedTransformer {
    /// The architecture description.
    pub cfg: ModelConfig,
    /// The weights.
    pub weights: Weights,
    tokenizer: LensTokenizer,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
}

/// Which positions' logits to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsAt {
    /// `[batch, pos, d_vocab]`.
    All,
    /// Each prompt's final real position: `[batch, d_vocab]`.
    Last,
}

impl HookedTransformer {
    /// Builds a model from parts (loaders call this).
    ///
    /// # Errors
    /// Inconsistent config or weights.
    pub fn from_parts(
        cfg: ModelConfig,
        weights: Weights,
        tokenizer: LensTokenizer,
        device: Device,
    ) -> Result<Self> {
        cfg.validate()?;
        weights.validate(&cfg)?;
        weights.check_finite()?;
        let dtype = weights.w_e.dtype();
        if dtype == DType::F16
            && (cfg.architecture.starts_with("gemma2") || cfg.architecture.starts_with("gemma3"))
        {
            return Err(LensError::UnsupportedConfig {
                field: "dtype".into(),
                value: "f16".into(),
                fix: format!(
                    "{}'s residual stream grows past f16's largest value (65504), so every logit would be NaN; load it in bf16 (the same memory, f32's range) or f32 (--dtype bf16)",
                    cfg.name
                ),
            });
        }
        crate::engine::runtime::malloc::tune();
        crate::engine::runtime::threads::pin();
        Ok(HookedTransformer {
            cfg,
            weights,
            tokenizer,
            device,
            dtype,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LensTokenizer {
        &self.tokenizer
    }

    // ----- forward -------------------------------------------------------------------------

    /// Logits `[batch, pos, d_vocab]`.
    ///
    /// # Errors
    /// [`LensError::PromptTooLong`] for a prompt longer than `n_ctx`,
    /// [`LensError::TokenOutOfRange`] for an id (or, in a ragged batch, the pad id) `>= d_vocab`,
    /// [`LensError::TooMuchMemory`] for a batch whose estimated peak exceeds the memory available
    /// ([`crate::memory`]), [`LensError::Numerical`] for non-finite logits.
    pub fn forward(&self, tokens: &Tokens) -> Result<Tensor> {
        self.forward_with(tokens, LogitsAt::All, &mut NoHooks)
    }

    /// Logits at each prompt's final real position `[batch, d_vocab]` (cheap for big vocabularies).
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn last_logits(&self, tokens: &Tokens) -> Result<Tensor> {
        self.forward_with(tokens, LogitsAt::Last, &mut NoHooks)
    }

    /// Runs with user hooks; returns logits `[batch, pos, d_vocab]`. Afterwards
    /// [`Hooks::audit`] says where each hook ran and which never did.
    ///
    /// # Errors
    /// Whatever a hook returns, [`LensError::HookShape`], [`LensError::LayerOutOfRange`],
    /// [`LensError::HookNotOnModel`] for a hook on a point the architecture does not have.
    pub fn run_with_hooks(&self, tokens: &Tokens, hooks: &mut Hooks) -> Result<Tensor> {
        hooks.check(&self.cfg)?;
        hooks.start_audit();
        self.forward_with(tokens, LogitsAt::All, hooks)
    }

    /// Runs and caches every activation the filter selects (`None`: all of them).
    /// Returns `(logits [batch, pos, d_vocab], cache)`.
    ///
    /// # Errors
    /// As [`Self::forward`]; [`LensError::HookNotOnModel`] / [`LensError::LayerOutOfRange`] for
    /// a named point the model never fires.
    pub fn run_with_cache(
        &self,
        tokens: &Tokens,
        filter: Option<HookFilter>,
    ) -> Result<(Tensor, ActivationCache)> {
        let mut cache = ActivationCache::recorder_for(filter, &self.cfg)?;
        self.ensure_fits(
            tokens,
            &Workload::Cache {
                wants: &|hp| cache.wants(hp),
                all_logits: true,
            },
        )?;
        let logits = self.forward_with(tokens, LogitsAt::All, &mut cache)?;
        Ok((logits, cache.finish(tokens.clone(), &self.cfg)))
    }

    /// Hooks and a cache in one run: the cache sees the hooked activations.
    ///
    /// # Errors
    /// As [`Self::run_with_hooks`].
    pub fn run_with_hooks_and_cache(
        &self,
        tokens: &Tokens,
        hooks: &mut Hooks,
        filter: Option<HookFilter>,
        at: LogitsAt,
    ) -> Result<(Tensor, ActivationCache)> {
        hooks.check(&self.cfg)?;
        hooks.start_audit();
        let mut cache = ActivationCache::recorder_for(filter, &self.cfg)?;
        self.ensure_fits(
            tokens,
            &Workload::Cache {
                wants: &|hp| cache.wants(hp),
                all_logits: at == LogitsAt::All,
            },
        )?;
        let logits = self.forward_with(tokens, at, &mut Chain(hooks, &mut cache))?;
        Ok((logits, cache.finish(tokens.clone(), &self.cfg)))
    }

    /// Mean next-token cross-entropy over every real position of every prompt.
    ///
    /// # Errors
    /// [`LensError::TooFew`] if no prompt has two tokens.
    pub fn loss(&self, tokens: &Tokens) -> Result<f32> {
        let logits = self.forward(tokens)?;
        let (sum, n) = Self::loss_sum(&logits, tokens)?;
        if n == 0 {
            return Err(LensError::too_few(
                "tokens in the longest prompt for a next-token loss",
                2,
                tokens.max_len(),
                "pass a longer prompt",
            ));
        }
        Ok((sum / n as f64) as f32)
    }

    /// The summed next-token cross-entropy of `logits [batch, pos, d_vocab]` over every real
    /// position of `tokens` that has a next token, and how many there are: `(Σ −log p, n)`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `logits` is not `[batch, pos, d_vocab]` for `tokens` (fewer
    /// prompts or positions than `tokens`, or a token id `>= d_vocab`); nothing is checked up
    /// front.
    pub fn loss_sum(logits: &Tensor, tokens: &Tokens) -> Result<(f64, usize)> {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let (mut sum, mut n) = (0f64, 0usize);
        for ((b, row), start) in tokens.rows().iter().enumerate().zip(tokens.offsets()) {
            if row.len() < 2 {
                continue;
            }
            let lp = logp.i(b)?;
            let targets = Tensor::new(&row[1..], logits.device())?;
            let picked = lp
                .narrow(0, start, row.len() - 1)?
                .gather(&targets.unsqueeze(1)?, 1)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            sum -= picked as f64;
            n += row.len() - 1;
        }
        Ok((sum, n))
    }

    /// The full forward with a hook sink.
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn forward_with(
        &self,
        tokens: &Tokens,
        at: LogitsAt,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        self.ensure_fits(
            tokens,
            &Workload::Forward {
                all_logits: at == LogitsAt::All,
            },
        )?;
        let ctx = self.context_for(tokens)?;
        sink.begin(&HookContext::of(tokens));
        let mut x = self.embed(tokens, sink)?;
        for l in 0..self.cfg.n_layers {
            x = self.run_block(l, x, &ctx, sink)?;
        }
        self.unembed(&x, tokens, at, sink)
    }

    /// Refuses a run of `workload` on `tokens` that would need more memory than is available
    /// ([`memory::ensure_fits`](crate::engine::runtime::memory)), before it allocates. On a GPU
    /// the device's own allocator reports what does not fit; the host's memory says nothing
    /// about it, so only CPU runs are checked.
    ///
    /// # Errors
    /// [`LensError::TooMuchMemory`] with the estimate and the fix.
    pub(crate) fn ensure_fits(&self, tokens: &Tokens, workload: &Workload) -> Result<()> {
        if !self.device.is_cpu() {
            return Ok(());
        }
        crate::engine::runtime::memory::ensure_fits(
            &self.cfg,
            tokens.batch(),
            tokens.max_len(),
            !tokens.is_rectangular(),
            self.dtype.size_in_bytes(),
            workload,
        )
    }

    /// The residual stream entering block `stop_at_layer`, `[batch, pos, d_model]`, from
    /// running only the embedding and blocks `0..stop_at_layer` (TransformerLens's
    /// `stop_at_layer`): the hooks of those blocks fire, nothing after them runs.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`] for `stop_at_layer > n_layers`; as [`Self::forward`].
    pub fn run_until(
        &self,
        tokens: &Tokens,
        stop_at_layer: usize,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        if stop_at_layer > self.cfg.n_layers {
            return Err(LensError::LayerOutOfRange {
                layer: stop_at_layer,
                n_layers: self.cfg.n_layers,
            });
        }
        self.check_tokens(tokens)?;
        let ctx = self.context_for(tokens)?;
        sink.begin(&HookContext::of(tokens));
        let mut x = self.embed(tokens, sink)?;
        for l in 0..stop_at_layer {
            x = self.run_block(l, x, &ctx, sink)?;
        }
        Ok(x)
    }

    /// Token (and learned positional) embedding: the residual stream entering block 0,
    /// `[batch, pos, d_model]`. Fires `hook_embed`, `hook_pos_embed`.
    ///
    /// # Errors
    /// [`LensError::PromptTooLong`] past a learned `W_pos`; whatever a hook returns (a hook's own
    /// error, or [`LensError::HookShape`] when it returns a tensor of another shape). Ids are not
    /// checked here: one `>= d_vocab` gives a raw [`LensError::Candle`].
    pub fn embed(&self, tokens: &Tokens, sink: &mut dyn HookSink) -> Result<Tensor> {
        let ids = tokens.to_tensor(&self.device)?;
        self.embed_at(&ids, &tokens.position_ids(), sink)
    }

    /// Embeds ids `[batch, pos]` standing at positions `offset..offset + pos`.
    ///
    /// # Errors
    /// [`LensError::PromptTooLong`] when `offset + pos` passes a learned `W_pos`; whatever a hook
    /// returns (its own error, or [`LensError::HookShape`] for a tensor of another shape); a raw
    /// [`LensError::Candle`] unless `ids` is a 2-D tensor of integer ids `< d_vocab`.
    pub fn embed_ids(
        &self,
        ids: &Tensor,
        offset: usize,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let (b, p) = ids.dims2()?;
        self.embed_at(ids, &vec![(offset..offset + p).collect(); b], sink)
    }

    /// Embeds ids `[batch, pos]` whose prompt `r`'s token `j` stands at position
    /// `positions[r][j]` (learned positions per prompt, for left-padded batches).
    ///
    /// # Errors
    /// As [`Self::embed_ids`].
    pub fn embed_at(
        &self,
        ids: &Tensor,
        positions: &[Vec<usize>],
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let (b, p) = ids.dims2()?;
        let mut x = self
            .weights
            .w_e
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, p, self.cfg.d_model))?;
        if let Some(s) = self.cfg.embed_scale {
            // HF multiplies by the scale rounded to the weights' dtype
            let s = Tensor::new(&[s as f32], &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&s)?;
        }
        x = hook(sink, HookPoint::Embed, x)?;
        if let Some(wpos) = &self.weights.w_pos {
            let n_pos = wpos.dim(0)?;
            let flat: Vec<u32> = positions.iter().flatten().map(|&q| q as u32).collect();
            if let Some(&last) = flat.iter().max().filter(|&&q| q as usize >= n_pos) {
                return Err(LensError::PromptTooLong {
                    len: last as usize + 1,
                    n_ctx: n_pos,
                });
            }
            if flat.len() != b * p {
                return Err(LensError::mismatch(
                    "positions and ids",
                    format!(
                        "{} positions for {b} × {p} ids; give one per id",
                        flat.len()
                    ),
                ));
            }
            let idx = Tensor::from_vec(flat, b * p, ids.device())?;
            let pos = wpos
                .index_select(&idx, 0)?
                .reshape((b, p, self.cfg.d_model))?;
            let pos = hook(sink, HookPoint::PosEmbed, pos)?;
            x = (x + pos)?;
        }
        Ok(x)
    }

    /// Final norm and unembedding from the residual stream after the last block.
    /// Fires `ln_final.hook_scale` and `ln_final.hook_normalized`.
    ///
    /// # Errors
    /// Whatever a hook on `ln_final` returns (its own error, or [`LensError::HookShape`] for a
    /// tensor of another shape); a raw [`LensError::Candle`] unless `x` is `[batch, pos, d_model]`
    /// (for [`LogitsAt::Last`], with at least `tokens`' prompts and positions).
    pub fn unembed(
        &self,
        x: &Tensor,
        tokens: &Tokens,
        at: LogitsAt,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let n = self.norm_spec().apply(
            &self.weights.ln_final,
            x,
            Some((HookPoint::LnFinalScale, HookPoint::LnFinalNormalized)),
            sink,
        )?;
        let n = match at {
            LogitsAt::All => n,
            LogitsAt::Last => self.gather_last(&n, tokens)?,
        };
        self.logits_of(&n)
    }

    /// The logits of final-normed residuals `[.., d_model]`: the unembedding, the final
    /// softcap, and a check that every value is a number.
    fn logits_of(&self, normed: &Tensor) -> Result<Tensor> {
        let mut logits = linear(normed, &self.weights.w_u, self.weights.b_u.as_ref())?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        let bad = crate::engine::weights::non_finite(&logits.detach())?;
        if bad > 0 {
            let cause = if self.dtype == DType::F16 {
                "the f16 dtype: this model's activations leave f16's range (±65504); load it in bf16 or f32 (--dtype bf16)".to_string()
            } else {
                "a hook that returned them, or a config value that breaks the forward (the weights were checked at load)".to_string()
            };
            return Err(LensError::Numerical {
                what: format!("the logits of {}", self.cfg.name),
                detail: format!(
                    "{bad} of {} values are NaN or infinite; likely cause: {cause}",
                    logits.elem_count()
                ),
            });
        }
        Ok(logits)
    }

    /// Final norm and unembedding of residual-stream vectors `[.., d_model]` (no hooks):
    /// the logits `[.., d_vocab]` they would produce as the last layer's output.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `x` has no last axis of width `d_model`.
    pub fn unembed_residual(&self, x: &Tensor) -> Result<Tensor> {
        let n = self
            .norm_spec()
            .apply(&self.weights.ln_final, x, None, &mut NoHooks)?;
        self.logits_of(&n)
    }

    /// Picks each prompt's final real position from `x [batch, pos, ...]` -> `[batch, ...]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `x` has fewer than `tokens.batch()` rows or fewer positions
    /// than the longest prompt.
    pub fn gather_last(&self, x: &Tensor, tokens: &Tokens) -> Result<Tensor> {
        tokens.gather_last(x)
    }

    // ----- blocks --------------------------------------------------------------------------

    /// The norm switches of this model (kind, epsilon, compute dtype).
    pub fn norm_spec(&self) -> NormSpec {
        NormSpec::of(&self.cfg, self.dtype)
    }

    /// Block `l` as a [`Block`] view: run it whole, or its attention and MLP halves.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn block(&self, l: usize) -> Result<Block<'_>> {
        let w = self
            .weights
            .layers
            .get(l)
            .ok_or(LensError::LayerOutOfRange {
                layer: l,
                n_layers: self.cfg.n_layers,
            })?;
        Block::new(&self.cfg, w, l, self.dtype)
    }

    /// Rotary tables and masks for sequences of up to `seq` positions.
    ///
    /// # Errors
    /// None beyond allocation failure on the model's device: a `seq × seq` mask per attention kind
    /// and the rotary tables (`seq` is not checked against `n_ctx`).
    pub fn context(&self, seq: usize) -> Result<ForwardCtx> {
        ForwardCtx::new(&self.cfg, seq, self.dtype, &self.device)
    }

    /// Rotary tables and masks for a run of `tokens`: shared by the batch, or per prompt when
    /// the batch is padded on the left (see [`ForwardCtx::with_offsets`]).
    ///
    /// # Errors
    /// As [`Self::context`] (`batch × seq × seq` masks with leading pads).
    pub fn context_for(&self, tokens: &Tokens) -> Result<ForwardCtx> {
        ForwardCtx::for_tokens(&self.cfg, tokens, self.dtype, &self.device)
    }

    /// One transformer block: `resid_pre [batch, pos, d_model]` -> `resid_post`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`] for `l >= n_layers`; whatever a hook returns (its own error,
    /// or [`LensError::HookShape`] for a tensor of another shape); a raw [`LensError::Candle`] when
    /// `x` is not `[batch, pos, d_model]` in the model's dtype or `ctx` is shorter than `x`.
    pub fn run_block(
        &self,
        l: usize,
        x: Tensor,
        ctx: &ForwardCtx,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        Ok(self.block(l)?.forward(x, ctx, 0, None, sink)?.0)
    }

    /// Each head's output `z W_O` without the bias at layer `l`: `z [batch, pos, head, d_head]`
    /// -> `[batch, pos, head, d_model]` (TransformerLens's `hook_result`).
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`] for `l >= n_layers`; [`LensError::Mismatch`] when `z` is not
    /// `[batch, pos, n_heads, d_head]`.
    pub fn head_results(&self, l: usize, z: &Tensor) -> Result<Tensor> {
        self.block(l)?.head_results(z)
    }
}
