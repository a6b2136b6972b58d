//! Scoring a batch: greedy accuracy, two-way accuracy, other-answer rate and logit difference
//! ([`Evaluation`]).

use std::fmt;

use candle_core::{DType, Tensor};

use crate::engine::hooks::HookFilter;
use crate::engine::hooks::Hooks;
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::error::{LensError, Result};

use super::lists::BindingLists;
use super::positions::BindingBatch;
use super::prompts::{sample_prompts, Task};
use crate::util::pyrandom::PyRandom;

/// How a batch is answered: the source's metrics on the final position's logits.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Fraction of prompts whose greedy next token — the argmax of the final logits, i.e. the
    /// first token `generate(max_new_tokens=1, do_sample=False)` gives — is the correct answer
    /// (the source's first accuracy).
    pub accuracy: f32,
    /// Fraction of prompts whose correct answer's logit beats the incorrect one's (the source's
    /// "Accuracy" after the fruit intervention: an argmax over the two answers).
    pub pair_accuracy: f32,
    /// Fraction whose greedy next token is the *incorrect* answer (where a swap sends prompts).
    pub swapped: f32,
    /// Mean over prompts of `logit[correct] - logit[incorrect]`.
    pub logit_diff: f32,
    /// Per prompt logit difference.
    pub per_prompt: Vec<f32>,
    /// Per prompt greedy next token.
    pub predictions: Vec<u32>,
    /// The final position's logits `[batch, d_vocab]` (f32), kept to score other answers
    /// ([`Evaluation::rescore`]).
    pub last_logits: Tensor,
}

impl Evaluation {
    /// The same run scored against other `(correct, incorrect)` ids (no forward pass).
    ///
    /// # Errors
    /// As [`evaluate_logits`].
    pub fn rescore(&self, answers: &[(u32, u32)]) -> Result<Evaluation> {
        evaluate_logits(&self.last_logits, answers)
    }

    /// The evaluation split by which pair the question asks about: element `k` scores only
    /// the prompts whose subject is `E_k` (a model that always answers the last pair's
    /// attribute scores 0 for `k = 0` and 1 for the last).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if `answers` does not match the batch.
    pub fn by_subject(
        &self,
        batch: &BindingBatch,
        answers: &[(u32, u32)],
    ) -> Result<Vec<Evaluation>> {
        if answers.len() != batch.len() || self.per_prompt.len() != batch.len() {
            return Err(LensError::mismatch("evaluation, answers and batch", format!(
                    "an evaluation of {} prompts and {} answers for a batch of {}; give one answer pair per prompt",
                    self.per_prompt.len(),
                    answers.len(),
                    batch.len()
                )));
        }
        (0..batch.num_pairs())
            .map(|k| {
                let rows: Vec<u32> = (0..batch.len())
                    .filter(|&i| batch.prompts[i].subject == k)
                    .map(|i| i as u32)
                    .collect();
                let picked: Vec<(u32, u32)> = rows.iter().map(|&i| answers[i as usize]).collect();
                let idx = Tensor::new(rows, self.last_logits.device())?;
                evaluate_logits(&self.last_logits.index_select(&idx, 0)?, &picked)
            })
            .collect()
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accuracy {:.4} (two-way {:.4}, other answer {:.4}), logit diff {:.4}",
            self.accuracy, self.pair_accuracy, self.swapped, self.logit_diff
        )
    }
}

/// The [`Evaluation`] of final-position logits `[batch, d_vocab]` against `(correct,
/// incorrect)` ids per prompt.
///
/// # Errors
/// [`LensError::Mismatch`] if the counts differ, [`LensError::TokenOutOfRange`] for an id
/// outside the vocabulary.
pub fn evaluate_logits(last_logits: &Tensor, answers: &[(u32, u32)]) -> Result<Evaluation> {
    let last_logits = last_logits.to_dtype(DType::F32)?;
    let rows: Vec<Vec<f32>> = last_logits.to_vec2()?;
    if rows.len() != answers.len() {
        return Err(LensError::mismatch(
            "answer pairs and prompts",
            format!(
                "{} answer pairs for {} prompts; give one pair per prompt",
                answers.len(),
                rows.len()
            ),
        ));
    }
    let (mut hit, mut pair, mut other) = (0usize, 0usize, 0usize);
    let mut per_prompt = Vec::with_capacity(rows.len());
    let mut predictions = Vec::with_capacity(rows.len());
    for (r, &(c, i)) in rows.iter().zip(answers) {
        let at = |id: u32| {
            r.get(id as usize)
                .copied()
                .ok_or(LensError::TokenOutOfRange {
                    id,
                    d_vocab: r.len(),
                })
        };
        let (lc, li) = (at(c)?, at(i)?);
        let argmax = r
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(t, _)| t as u32);
        hit += usize::from(argmax == c);
        other += usize::from(argmax == i);
        pair += usize::from(lc > li);
        per_prompt.push(lc - li);
        predictions.push(argmax);
    }
    let n = rows.len().max(1) as f32;
    Ok(Evaluation {
        accuracy: hit as f32 / n,
        pair_accuracy: pair as f32 / n,
        swapped: other as f32 / n,
        logit_diff: crate::interp::metrics::mean(&per_prompt),
        per_prompt,
        predictions,
        last_logits,
    })
}

/// Runs the batch with `hooks` (an empty set for the clean run) and evaluates it. Only the
/// final positions' logits are computed.
///
/// # Errors
/// Whatever a hook returns; [`LensError::LayerOutOfRange`].
pub fn evaluate(
    model: &HookedTransformer,
    batch: &BindingBatch,
    hooks: &mut Hooks,
) -> Result<Evaluation> {
    let (logits, _) = model.run_with_hooks_and_cache(
        &batch.tokens,
        hooks,
        Some(HookFilter::Points(Vec::new())),
        LogitsAt::Last,
    )?;
    evaluate_logits(&logits, &batch.answers)
}

/// The clean capital task as the entity-binding notebook first runs it: `all`'s lists filtered
/// to one token for `model`, `n` prompts of two pairs drawn after `random.seed(seed)`, one
/// forward. Returns the filtered lists and the evaluation — the measurement that picks an
/// embedded stand-in able to do the task.
///
/// # Errors
/// [`LensError::TooFew`] if too few entries are one token for this tokenizer; tokenizer and
/// forward errors.
pub fn clean_capital(
    model: &HookedTransformer,
    all: &BindingLists,
    n: usize,
    seed: u64,
) -> Result<(BindingLists, Evaluation)> {
    let lists = all.one_token(model)?;
    let mut rng = PyRandom::seed(seed);
    let prompts = sample_prompts(
        &mut rng,
        n,
        &lists.names,
        &lists.countries,
        Task::Capital,
        Some(&lists.capitals),
        2,
    )?;
    let batch = BindingBatch::new(model, prompts)?;
    let eval = evaluate(model, &batch, &mut Hooks::new())?;
    Ok((lists, eval))
}
