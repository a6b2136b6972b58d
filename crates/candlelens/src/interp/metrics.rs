//! Metrics on final-position logits `[batch, d_vocab]`: logit difference of token pairs, the
//! Paris source's token-group metrics, and the normalised patching score.

use candle_core::{DType, Tensor};

use crate::error::{LensError, Result};

/// A metric of final-position logits `[batch, d_vocab]` (e.g. mean logit difference, see
/// [`logit_diff_metric`]), as activation patching scores a run. It owns what it reads, so a
/// [`Patcher`](crate::interp::patching::Patcher) holding it can be kept across notebook cells.
pub type Metric = Box<dyn Fn(&Tensor) -> Result<f32>>;

fn rows(last_logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(last_logits.to_dtype(DType::F32)?.to_vec2()?)
}

/// Per prompt `logit[correct] - logit[incorrect]`. `pairs` has one `(correct, incorrect)` per
/// prompt, or a single pair used for every prompt.
///
/// # Errors
/// [`LensError::Mismatch`] if the counts do not match, [`LensError::TokenOutOfRange`] for an id
/// outside the vocabulary.
pub fn logit_diff(last_logits: &Tensor, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
    let rows = rows(last_logits)?;
    check_count(rows.len(), pairs.len(), "answer pairs")?;
    rows.iter()
        .enumerate()
        .map(|(b, r)| {
            let (c, i) = pairs[if pairs.len() == 1 { 0 } else { b }];
            Ok(at(r, c)? - at(r, i)?)
        })
        .collect()
}

/// The patching metric "mean logit difference over the answer pairs" (TransformerLens's
/// `logits_to_ave_logit_diff`): [`logit_diff`] then [`mean`]. It owns its pairs, so the
/// [`Patcher`](crate::interp::patching::Patcher) it goes into can be kept across notebook cells.
/// Pairs come from strings with [`HookedTransformer::answer_pairs`](crate::engine::model::HookedTransformer::answer_pairs).
pub fn logit_diff_metric(pairs: &[(u32, u32)]) -> Metric {
    let pairs = pairs.to_vec();
    Box::new(move |l| Ok(mean(&logit_diff(l, &pairs)?)))
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

/// Per prompt, mean logit over the correct group minus mean logit over the incorrect group (in
/// nats); groups may differ in size. `groups` has one entry per prompt or a single shared one.
///
/// # Errors
/// As [`logit_diff`]; empty groups.
pub fn group_logit_diff(last_logits: &Tensor, groups: &[TokenGroups]) -> Result<Vec<f32>> {
    let rows = rows(last_logits)?;
    check_count(rows.len(), groups.len(), "token groups")?;
    rows.iter()
        .enumerate()
        .map(|(b, r)| {
            let g = &groups[if groups.len() == 1 { 0 } else { b }];
            Ok(group_mean(r, &g.correct)? - group_mean(r, &g.incorrect)?)
        })
        .collect()
}

/// Per prompt, total softmax probability of the correct group minus that of the incorrect one.
///
/// # Errors
/// As [`group_logit_diff`].
pub fn group_prob_diff(last_logits: &Tensor, groups: &[TokenGroups]) -> Result<Vec<f32>> {
    let rows = rows(last_logits)?;
    check_count(rows.len(), groups.len(), "token groups")?;
    rows.iter()
        .enumerate()
        .map(|(b, r)| {
            let g = &groups[if groups.len() == 1 { 0 } else { b }];
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
        .collect()
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

/// Whether a corruption moves the metric at all: the normalised scores of patching and
/// attribution divide by `clean − corrupted`.
///
/// # Errors
/// [`LensError::NoEffect`] (with `fix`) when either value is not finite or `|clean −
/// corrupted|` is below `1e-6` of their scale.
pub fn require_effect(clean: f32, corrupted: f32, fix: &str) -> Result<()> {
    let scale = clean.abs().max(corrupted.abs()).max(1.0);
    if !clean.is_finite() || !corrupted.is_finite() || (clean - corrupted).abs() <= 1e-6 * scale {
        return Err(LensError::NoEffect {
            clean,
            corrupted,
            fix: fix.into(),
        });
    }
    Ok(())
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
        return Err(LensError::TooFew {
            what: "tokens in an answer token group".into(),
            need: 1,
            got: 0,
            fix: "give every group at least one token id".into(),
        });
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
