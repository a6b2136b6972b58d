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
use crate::engine::hooks::{Chain, HookFilter, HookPoint, HookSink, NoHooks};
use crate::engine::ops::{hook, linear, NormSpec};
use crate::engine::text::tokenizer::LensTokenizer;
use crate::engine::text::tokens::Tokens;
use crate::engine::weights::Weights;
use crate::error::{LensError, Result};

pub mod generate;
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
        crate::engine::runtime::malloc::tune();
        crate::engine::runtime::threads::pin();
        let dtype = weights.w_e.dtype();
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

    // ----- tokens --------------------------------------------------------------------------

    /// Tokenizes one or more prompts into a right-padded batch. `prepend_bos: None` follows the
    /// model's tokenizer default (Gemma: yes; SmolLM2: no; GPT-2 as in TransformerLens: yes).
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::PromptTooLong`].
    pub fn to_tokens<P: crate::engine::text::tokens::Prompts>(
        &self,
        prompts: P,
        prepend_bos: Option<bool>,
    ) -> Result<Tokens> {
        let rows = prompts
            .prompts()
            .iter()
            .map(|p| self.tokenizer.encode_with_bos(p, prepend_bos))
            .collect::<Result<Vec<_>>>()?;
        let t = Tokens::new(rows, self.cfg.pad_token_id)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    /// Token ids as they would be fed to the model, from ids the caller has.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::TokenOutOfRange`], [`LensError::PromptTooLong`].
    pub fn tokens_from_ids(&self, ids: Vec<u32>) -> Result<Tokens> {
        let t = Tokens::new(vec![ids], self.cfg.pad_token_id)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    pub(crate) fn check_tokens(&self, t: &Tokens) -> Result<()> {
        if t.max_len() > self.cfg.n_ctx {
            return Err(LensError::PromptTooLong {
                len: t.max_len(),
                n_ctx: self.cfg.n_ctx,
            });
        }
        for row in t.rows() {
            if let Some(&id) = row.iter().find(|&&id| id as usize >= self.cfg.d_vocab) {
                return Err(LensError::TokenOutOfRange {
                    id,
                    d_vocab: self.cfg.d_vocab,
                });
            }
        }
        Ok(())
    }

    /// Each token of `text` as a string (`["<bos>", "Is", " Paris", ...]`).
    ///
    /// # Errors
    /// [`LensError::NoBosToken`] when BOS is asked for (by `prepend_bos` or the model's default)
    /// and the model has none; [`LensError::Tokenizer`] only if the tokenizer itself fails.
    pub fn to_str_tokens(&self, text: &str, prepend_bos: Option<bool>) -> Result<Vec<String>> {
        let ids = self.tokenizer.encode_with_bos(text, prepend_bos)?;
        self.tokenizer.str_tokens(&ids)
    }

    /// The strings of given ids.
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] only if the tokenizer's decoder fails. Ids are not checked: one
    /// outside the vocabulary decodes to an empty string.
    pub fn ids_to_str_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        self.tokenizer.str_tokens(ids)
    }

    /// The id of a string that must be exactly one token (no BOS).
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] naming the pieces.
    pub fn to_single_token(&self, text: &str) -> Result<u32> {
        let ids = self.tokenizer.encode(text)?;
        if ids.len() != 1 {
            return Err(LensError::NotSingleToken {
                text: text.to_string(),
                n: ids.len(),
                tokens: self.tokenizer.str_tokens(&ids)?,
            });
        }
        Ok(ids[0])
    }

    /// `(correct, incorrect)` token ids of answer pairs given as strings, e.g.
    /// `[(" Peb", " Rachel")]` — the pairs a logit-difference metric reads
    /// ([`crate::metrics::logit_diff_metric`]). Each string must be one token.
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] naming the answer and its pieces.
    pub fn answer_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<(u32, u32)>> {
        pairs
            .iter()
            .map(|(c, i)| Ok((self.to_single_token(c)?, self.to_single_token(i)?)))
            .collect()
    }

    /// Position labels `"{token}_{pos}"` for prompt `b` of a batch (the sources' axis labels,
    /// e.g. `Peb_26`; the token is trimmed of surrounding spaces and shows `·` when blank).
    /// Padding positions are left out.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a prompt index outside the batch; tokenizer errors.
    pub fn position_labels(&self, tokens: &Tokens, b: usize) -> Result<Vec<String>> {
        if b >= tokens.batch() {
            return Err(LensError::OutOfRange {
                what: "prompt".into(),
                index: b,
                len: tokens.batch(),
            });
        }
        Ok(self
            .ids_to_str_tokens(tokens.row(b)?)?
            .iter()
            .enumerate()
            .map(|(p, t)| {
                let t = t.trim();
                format!("{}_{p}", if t.is_empty() { "·" } else { t })
            })
            .collect())
    }

    /// Decodes ids to text.
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] only if the tokenizer's decoder fails. Ids are not checked: ones
    /// outside the vocabulary are left out of the text.
    pub fn to_string(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    // ----- forward -------------------------------------------------------------------------

    /// Logits `[batch, pos, d_vocab]`.
    ///
    /// # Errors
    /// [`LensError::PromptTooLong`] for a prompt longer than `n_ctx`,
    /// [`LensError::TokenOutOfRange`] for an id `>= d_vocab`. The pad id is not checked: padding a
    /// ragged batch with an id `>= d_vocab` gives a raw [`LensError::Candle`].
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
        for hp in hooks.points() {
            hp.check(&self.cfg)?;
        }
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
        if let Some(HookFilter::Points(ps)) = &filter {
            for hp in ps {
                hp.check(&self.cfg)?;
            }
        }
        let mut cache = ActivationCache::recorder(filter.unwrap_or(HookFilter::All));
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
        for hp in hooks.points() {
            hp.check(&self.cfg)?;
        }
        hooks.start_audit();
        if let Some(HookFilter::Points(ps)) = &filter {
            for hp in ps {
                hp.check(&self.cfg)?;
            }
        }
        let mut cache = ActivationCache::recorder(filter.unwrap_or(HookFilter::All));
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
        for (b, row) in tokens.rows().iter().enumerate() {
            if row.len() < 2 {
                continue;
            }
            let lp = logp.i(b)?;
            let targets = Tensor::new(&row[1..], logits.device())?;
            let picked = lp
                .narrow(0, 0, row.len() - 1)?
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
        let ctx = self.context(tokens.max_len())?;
        let mut x = self.embed(tokens, sink)?;
        for l in 0..self.cfg.n_layers {
            x = self.run_block(l, x, &ctx, sink)?;
        }
        self.unembed(&x, tokens, at, sink)
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
        let ctx = self.context(tokens.max_len())?;
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
        self.embed_ids(&tokens.to_tensor(&self.device)?, 0, sink)
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
            if offset + p > wpos.dim(0)? {
                return Err(LensError::PromptTooLong {
                    len: offset + p,
                    n_ctx: wpos.dim(0)?,
                });
            }
            let pos = wpos.narrow(0, offset, p)?.unsqueeze(0)?.repeat((b, 1, 1))?;
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
        let mut logits = linear(&n, &self.weights.w_u, self.weights.b_u.as_ref())?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
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
        let mut logits = linear(&n, &self.weights.w_u, self.weights.b_u.as_ref())?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
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
