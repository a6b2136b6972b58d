//! One cached run with answer pairs and the standard decompositions of its logit difference:
//! the logit lens, per component and per head.

use candle_core::Tensor;

use super::{LogitAttribution, Pos};
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::model::HookedTransformer;
use crate::error::Result;

/// One cached run of prompts with answer pairs: what a logit-difference analysis reads (the
/// source notebooks' `run_with_cache` + `logits_to_ave_logit_diff` + residual directions), and
/// the three standard decompositions of that logit difference.
pub struct LogitDiffRun {
    /// The prompts, tokenized.
    pub tokens: crate::engine::text::tokens::Tokens,
    /// Every activation of the run.
    pub cache: ActivationCache,
    /// `(correct, incorrect)` token ids per prompt.
    pub pairs: Vec<(u32, u32)>,
    /// `W_U[correct] − W_U[incorrect]` per prompt, through the final norm's weight:
    /// `[batch, d_model]`.
    pub directions: Tensor,
    /// Each prompt's logit difference at its last token.
    pub per_prompt: Vec<f32>,
    /// Their mean.
    pub logit_diff: f32,
}

impl LogitDiffRun {
    /// Runs `prompts` with the cache and measures `correct − incorrect` for `answers` (one pair
    /// per prompt, or one for all).
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`](crate::LensError::EmptyPrompt) / [`LensError::PromptTooLong`](crate::LensError::PromptTooLong) for a prompt the model cannot
    /// run; [`LensError::NotSingleToken`](crate::LensError::NotSingleToken) when an answer is not a single token;
    /// [`LensError::Mismatch`](crate::LensError::Mismatch) when the pairs are neither one nor one per prompt.
    pub fn new(
        model: &HookedTransformer,
        prompts: &[&str],
        answers: &[(&str, &str)],
        prepend_bos: Option<bool>,
    ) -> Result<Self> {
        let tokens = model.to_tokens(prompts, prepend_bos)?;
        let pairs = model.answer_pairs(answers)?;
        Self::from_tokens(model, tokens, pairs)
    }

    /// [`Self::new`] on tokens already made (ids as given) and `(correct, incorrect)` token
    /// ids (one pair per prompt, or one for all).
    ///
    /// # Errors
    /// As [`HookedTransformer::forward`]; [`LensError::TokenOutOfRange`](crate::LensError::TokenOutOfRange) for an answer id
    /// outside the vocabulary; [`LensError::Mismatch`](crate::LensError::Mismatch) when the pairs are neither one nor one
    /// per prompt.
    pub fn from_tokens(
        model: &HookedTransformer,
        tokens: crate::engine::text::tokens::Tokens,
        pairs: Vec<(u32, u32)>,
    ) -> Result<Self> {
        let (logits, cache) = model.run_with_cache(&tokens, None)?;
        let per_prompt =
            crate::interp::metrics::logit_diff(&model.gather_last(&logits, &tokens)?, &pairs)?;
        // one pair for all prompts: one per prompt from here on, so that the attributions (one
        // direction per prompt) take it as well
        let pairs = if pairs.len() == 1 {
            vec![pairs[0]; tokens.batch()]
        } else {
            pairs
        };
        let directions = model.logit_diff_directions(&pairs)?;
        Ok(LogitDiffRun {
            tokens,
            cache,
            pairs,
            directions,
            logit_diff: crate::interp::metrics::mean(&per_prompt),
            per_prompt,
        })
    }

    /// The logit lens: the accumulated residual stream at the last token, final norm applied
    /// with its cached scale, along the answer directions (`0_pre`, `0_mid`, …, `final_post`).
    ///
    /// # Errors
    /// [`LensError::NotCached`](crate::LensError::NotCached) only if the cache was filtered (it is not, as built here).
    pub fn logit_lens(&self, model: &HookedTransformer) -> Result<LogitAttribution> {
        let acc = self.cache.accumulated_resid(None, true, Pos::Last)?;
        model.logit_attribution(&self.cache, &acc, &self.directions)
    }

    /// Each component's direct contribution: embeddings, then every layer's attention and MLP
    /// output (`decompose_resid`).
    ///
    /// # Errors
    /// As [`Self::logit_lens`].
    pub fn per_layer(&self, model: &HookedTransformer) -> Result<LogitAttribution> {
        let dec = self.cache.decompose_resid(None, true, Pos::Last)?;
        model.logit_attribution(&self.cache, &dec, &self.directions)
    }

    /// Each head's direct contribution (`stack_head_results`), labels `L{l}H{h}`.
    ///
    /// # Errors
    /// As [`Self::logit_lens`].
    pub fn per_head(&self, model: &HookedTransformer) -> Result<LogitAttribution> {
        let heads = self.cache.stack_head_results(model, None, Pos::Last)?;
        model.logit_attribution(&self.cache, &heads, &self.directions)
    }
}
