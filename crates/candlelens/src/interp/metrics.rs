//! Metrics on final-position logits `[batch, d_vocab]`: logit difference of token pairs, the
//! Paris source's token-group metrics, and the normalised patching score.

use candle_core::{DType, Tensor};

use crate::error::{LensError, Result};

/// A metric of final-position logits `[batch, d_vocab]` (e.g. mean logit difference, see
/// [`logit_diff_metric`]), as activation patching scores a run. It owns what it reads, so a
/// [`Patcher`](crate::interp::patching::Patcher) holding it can be kept across notebook cells.
pub type Metric = Box<dyn Fn(&Tensor) -> Result<f32>>;

/// `f(row, item)` for each prompt's row of `last_logits [batch, d_vocab]`, `items` holding one
/// entry per prompt or one shared by all (`what` names them in the error).
fn per_prompt<T>(
    last_logits: &Tensor,
    items: &[T],
    what: &str,
    f: impl Fn(&[f32], &T) -> Result<f32>,
) -> Result<Vec<f32>> {
    let rows: Vec<Vec<f32>> = last_logits.to_dtype(DType::F32)?.to_vec2()?;
    check_count(rows.len(), items.len(), what)?;
    rows.iter()
        .enumerate()
        .map(|(b, r)| f(r, &items[if items.len() == 1 { 0 } else { b }]))
        .collect()
}

/// Per prompt `logit[correct] - logit[incorrect]`. `pairs` has one `(correct, incorrect)` per
/// prompt, or a single pair used for every prompt.
///
/// # Errors
/// [`LensError::Mismatch`] if the counts do not match, [`LensError::TokenOutOfRange`] for an id
/// outside the vocabulary.
pub fn logit_diff(last_logits: &Tensor, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
    per_prompt(last_logits, pairs, "answer pairs", |r, &(c, i)| {
        Ok(at(r, c)? - at(r, i)?)
    })
}

/// The patching metric "mean logit difference over the answer pairs" (TransformerLens's
/// `logits_to_ave_logit_diff`): [`logit_diff`] then [`mean`]. It owns its pairs, so the
/// [`Patcher`](crate::interp::patching::Patcher) it goes into can be kept across notebook cells.
/// Pairs come from strings with [`HookedTransformer::answer_pairs`](crate::engine::model::HookedTransformer::answer_pairs).
pub fn logit_diff_metric(pairs: &[(u32, u32)]) -> Metric {
    let pairs = pairs.to_vec();
    Box::new(move |l| Ok(mean(&logit_diff(l, &pairs)?)))
}

/// The mean next-token cross-entropy over every real position of `tokens`
/// (TransformerLens's `loss`) as a patching metric: position `i` of a prompt predicts its
/// token `i + 1`, pads are left out. It reads the logits at every position — build the
/// patcher with [`Readout::All`](crate::interp::readout::Readout::All) — so the metric sees
/// `[batch, pos, d_vocab]`. Patching normalises it like any metric (`1`: the clean loss back).
/// Which prompts' tokens to score is the caller's choice: the clean prompts ask how much of
/// the clean text's predictability a patch restores.
pub fn loss_metric(tokens: &crate::engine::text::tokens::Tokens) -> Metric {
    let tokens = tokens.clone();
    Box::new(move |logits| {
        let want = (tokens.batch(), tokens.max_len());
        if logits.rank() != 3 || (logits.dim(0)?, logits.dim(1)?) != want {
            return Err(LensError::mismatch(
                "the loss metric",
                format!(
                    "it scores {} prompts of {} positions and got logits {:?}; build the patcher with Readout::All, on prompts of the lengths the metric was made from",
                    want.0,
                    want.1,
                    logits.dims()
                ),
            ));
        }
        let (sum, n) = crate::engine::model::HookedTransformer::loss_sum(logits, &tokens)?;
        if n == 0 {
            return Err(LensError::too_few(
                "tokens in the longest prompt for a next-token loss",
                2,
                tokens.max_len(),
                "give prompts of at least two tokens",
            ));
        }
        Ok((sum / n as f64) as f32)
    })
}

/// A differentiable metric of final-position logits `[batch, d_vocab]`: a scalar tensor that
/// attribution patching backpropagates through (see [`logit_diff_grad_metric`]). Shared
/// ([`std::rc::Rc`]) so that the float [`Metric`] of the exact sweep can be made from it.
pub type GradMetric = std::rc::Rc<dyn Fn(&Tensor) -> Result<Tensor>>;

/// Mean over the batch of `logit[correct] − logit[incorrect]` as a scalar tensor that carries
/// gradients: the logits times a `[batch, d_vocab]` matrix of `+1` at the correct token and
/// `−1` at the incorrect one, summed, divided by the batch. Equal to [`logit_diff`] then
/// [`mean`].
///
/// # Errors
/// As [`logit_diff`].
pub fn logit_diff_tensor(last_logits: &Tensor, pairs: &[(u32, u32)]) -> Result<Tensor> {
    let (batch, vocab) = last_logits.dims2()?;
    check_count(batch, pairs.len(), "answer pairs")?;
    let mut signs = vec![0f32; batch * vocab];
    for b in 0..batch {
        let (c, i) = pairs[if pairs.len() == 1 { 0 } else { b }];
        for id in [c, i] {
            if id as usize >= vocab {
                return Err(LensError::TokenOutOfRange { id, d_vocab: vocab });
            }
        }
        signs[b * vocab + c as usize] += 1.0;
        signs[b * vocab + i as usize] -= 1.0;
    }
    let signs = Tensor::from_vec(signs, (batch, vocab), last_logits.device())?
        .to_dtype(last_logits.dtype())?;
    Ok(((last_logits * signs)?.sum_all()? / batch as f64)?)
}

/// [`logit_diff_tensor`] over `pairs` as a [`GradMetric`] (it owns its pairs).
pub fn logit_diff_grad_metric(pairs: &[(u32, u32)]) -> GradMetric {
    let pairs = pairs.to_vec();
    std::rc::Rc::new(move |l| logit_diff_tensor(l, &pairs))
}

/// The float [`Metric`] of a [`GradMetric`], for the exact patching sweep.
pub fn float_metric(metric: &GradMetric) -> Metric {
    let m = std::rc::Rc::clone(metric);
    Box::new(move |l| Ok(m(l)?.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// The patching metric "mean group logit difference" (the Paris source's metric):
/// [`group_logit_diff`] then [`mean`].
pub fn group_logit_diff_metric(groups: &[TokenGroups]) -> Metric {
    let groups = groups.to_vec();
    Box::new(move |l| Ok(mean(&group_logit_diff(l, &groups)?)))
}

/// The mean of per-prompt values (the sources' `.mean()`).
pub fn mean(v: &[f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

/// Answer token groups for one prompt: the tokens that mean the right answer and the wrong one.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenGroups {
    /// Tokens of the correct answer (e.g. "Yes", "Sure", ... for a true statement).
    pub correct: Vec<u32>,
    /// Tokens of the incorrect answer.
    pub incorrect: Vec<u32>,
}

impl TokenGroups {
    /// One pair of groups per prompt of a yes/no dataset: `true_ids` are correct where the
    /// prompt's label is `true`, `false_ids` where it is `false` (the Paris source's True / False
    /// answer sets).
    pub fn for_labels(labels: &[bool], true_ids: &[u32], false_ids: &[u32]) -> Vec<TokenGroups> {
        labels
            .iter()
            .map(|&label| {
                let (correct, incorrect) = if label {
                    (true_ids, false_ids)
                } else {
                    (false_ids, true_ids)
                };
                TokenGroups {
                    correct: correct.to_vec(),
                    incorrect: incorrect.to_vec(),
                }
            })
            .collect()
    }
}

/// Per prompt, mean logit over the correct group minus mean logit over the incorrect group (in
/// nats); groups may differ in size. `groups` has one entry per prompt or a single shared one.
///
/// # Errors
/// As [`logit_diff`]; empty groups.
pub fn group_logit_diff(last_logits: &Tensor, groups: &[TokenGroups]) -> Result<Vec<f32>> {
    per_prompt(last_logits, groups, "token groups", |r, g| {
        Ok(group_mean(r, &g.correct)? - group_mean(r, &g.incorrect)?)
    })
}

/// Per prompt, total softmax probability of the correct group minus that of the incorrect one.
///
/// # Errors
/// As [`group_logit_diff`].
pub fn group_prob_diff(last_logits: &Tensor, groups: &[TokenGroups]) -> Result<Vec<f32>> {
    per_prompt(last_logits, groups, "token groups", |r, g| {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = r.iter().map(|&x| (x as f64 - m).exp()).sum();
        let p = |ids: &[u32]| -> Result<f64> {
            let mut s = 0.0;
            for &id in ids {
                s += ((at(r, id)? as f64) - m).exp() / z;
            }
            Ok(s)
        };
        Ok((p(&g.correct)? - p(&g.incorrect)?) as f32)
    })
}

/// Resolves answer words to token ids, each of which must be one token.
///
/// # Errors
/// [`LensError::NotSingleToken`] naming the first word that is not.
pub fn resolve_group(
    model: &crate::engine::model::HookedTransformer,
    words: &[&str],
) -> Result<Vec<u32>> {
    words.iter().map(|w| model.to_single_token(w)).collect()
}

/// Resolves the words that are single tokens and returns the others separately (to report
/// them), for groups written for another tokenizer.
pub fn resolve_group_lenient(
    model: &crate::engine::model::HookedTransformer,
    words: &[&str],
) -> (Vec<u32>, Vec<String>) {
    let mut ids = Vec::new();
    let mut dropped = Vec::new();
    for w in words {
        match model.to_single_token(w) {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => dropped.push(format!("{w:?} (same token as another word)")),
            Err(_) => dropped.push(format!("{w:?}")),
        }
    }
    (ids, dropped)
}

/// What a corruption does to a metric that is higher on the clean answer (a logit difference
/// correct − incorrect, a probability of the clean answer): the one rule that the patchers, the
/// notebooks and the CLI apply before a sweep. With `gap = clean − corrupted`:
///
/// - [`Effect::None`]: a value is not finite, or `|gap| ≤ 1e-6 · max(|clean|, |corrupted|, 1)` —
///   normalised scores `(patched − corrupted) / gap` are undefined; the patchers refuse.
/// - [`Effect::Clear`]: `gap ≥ 0.1 · max(|clean|, 1)` — the corruption removes the clean
///   answer, and patching shows what restores it.
/// - [`Effect::Weak`]: `0 < gap` below that — normalised scores divide by a small number and
///   amplify noise.
/// - [`Effect::Reversed`]: `gap < 0` — the corrupted prompt favours the clean answer even more,
///   so patching cannot show what restores it.
///
/// The patchers run on all but [`Effect::None`]; the notebooks sweep only a clear effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Effect {
    /// The corruption lowers the metric by `gap`, at least a tenth of `max(|clean|, 1)`.
    Clear {
        /// `clean − corrupted`.
        gap: f32,
    },
    /// The corruption lowers the metric by less than that.
    Weak {
        /// `clean − corrupted`.
        gap: f32,
    },
    /// The corruption raises the metric.
    Reversed {
        /// `clean − corrupted` (negative).
        gap: f32,
    },
    /// The corruption does not move the metric, or a value is not finite.
    None,
}

impl Effect {
    /// The verdict on a corruption from the metric's clean and corrupted values (see [`Effect`]).
    pub fn of(clean: f32, corrupted: f32) -> Effect {
        let gap = clean - corrupted;
        let scale = clean.abs().max(corrupted.abs()).max(1.0);
        if !gap.is_finite() || gap.abs() <= 1e-6 * scale {
            Effect::None
        } else if gap >= 0.1 * clean.abs().max(1.0) {
            Effect::Clear { gap }
        } else if gap > 0.0 {
            Effect::Weak { gap }
        } else {
            Effect::Reversed { gap }
        }
    }

    /// Whether the corruption clearly removes the clean answer (worth a sweep).
    pub fn is_clear(&self) -> bool {
        matches!(self, Effect::Clear { .. })
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Clear { gap } => write!(f, "usable — the corruption lowers the metric by {gap:.4}"),
            Effect::Weak { gap } => write!(f, "rejected — the corruption lowers the metric by only {gap:.4} (under a tenth of the clean value): normalised scores would divide by a near-zero number"),
            Effect::Reversed { gap } => write!(f, "rejected — the corruption raises the metric (by {:.4}), so patching it cannot show what restores the clean answer", -gap),
            Effect::None => write!(f, "rejected — the corruption does not move the metric (or a value is not finite)"),
        }
    }
}

/// Errors unless a corruption moves the metric at all ([`Effect::of`] is not
/// [`Effect::None`]): the normalised scores of patching and attribution divide by
/// `clean − corrupted`.
///
/// # Errors
/// [`LensError::Numerical`] when either value is not finite (the metric or the model
/// produced NaN or infinity — not the prompts' fault); [`LensError::NoEffect`] (with `fix`)
/// when `|clean − corrupted|` is below `1e-6` of their scale.
pub fn require_effect(clean: f32, corrupted: f32, fix: &str) -> Result<()> {
    check_metric_value(clean, "the clean run")?;
    check_metric_value(corrupted, "the corrupted run")?;
    if Effect::of(clean, corrupted) == Effect::None {
        return Err(LensError::NoEffect {
            clean,
            corrupted,
            fix: fix.into(),
        });
    }
    Ok(())
}

/// Errors unless a metric's value on `run` is a number.
///
/// # Errors
/// [`LensError::Numerical`] naming the run.
pub fn check_metric_value(value: f32, run: &str) -> Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    Err(LensError::Numerical {
        what: format!("the metric on {run}"),
        detail: format!(
            "it is {value}; the metric divided by zero or read a NaN (the logits themselves are checked), so fix the metric"
        ),
    })
}

/// `(patched - corrupted) / (clean - corrupted)`: 0 = no recovery, 1 = clean performance.
pub fn normalise(patched: f32, clean: f32, corrupted: f32) -> f32 {
    (patched - corrupted) / (clean - corrupted)
}

fn at(row: &[f32], id: u32) -> Result<f32> {
    row.get(id as usize)
        .copied()
        .ok_or_else(|| LensError::TokenOutOfRange {
            id,
            d_vocab: row.len(),
        })
}

fn group_mean(row: &[f32], ids: &[u32]) -> Result<f32> {
    if ids.is_empty() {
        return Err(LensError::too_few(
            "tokens in an answer token group",
            1,
            0,
            "give every group at least one token id",
        ));
    }
    let mut s = 0.0f64;
    for &id in ids {
        s += at(row, id)? as f64;
    }
    Ok((s / ids.len() as f64) as f32)
}

fn check_count(batch: usize, n: usize, what: &str) -> Result<()> {
    if n == 1 || n == batch {
        Ok(())
    } else {
        Err(LensError::Mismatch {
            what: format!("{what} and prompts"),
            detail: format!(
                "{n} {what} for a batch of {batch} prompts; give one per prompt or one for all"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn metrics_by_hand() {
        let l = Tensor::new(&[[1f32, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0]], &Device::Cpu).unwrap();
        assert_eq!(logit_diff(&l, &[(2, 0)]).unwrap(), vec![2.0, 0.0]);
        assert_eq!(logit_diff(&l, &[(2, 0), (3, 1)]).unwrap(), vec![2.0, 4.0]);
        assert!(logit_diff(&l, &[(0, 1), (0, 1), (0, 1)]).is_err());
        let g = TokenGroups {
            correct: vec![1, 2],
            incorrect: vec![0],
        };
        // (2 + 3) / 2 - 1 = 1.5 ; (0 + 0) / 2 - 0 = 0
        assert_eq!(
            group_logit_diff(&l, std::slice::from_ref(&g)).unwrap(),
            vec![1.5, 0.0]
        );
        let p = group_prob_diff(&l, &[g]).unwrap();
        let z: f64 = [1f64, 2.0, 3.0, 0.0].iter().map(|x| x.exp()).sum();
        let want = ((2f64.exp() + 3f64.exp()) - 1f64.exp()) / z;
        assert!((p[0] as f64 - want).abs() < 1e-6);
        assert_eq!(normalise(3.0, 5.0, 1.0), 0.5);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
    }
}
