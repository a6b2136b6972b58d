//! `lens bench patch`: the fast patching sweep against the naive one-forward-per-cell loop, on
//! the pet prompts.

use std::time::Instant;

use candlelens::patching::PatchTarget;
use candlelens::prelude::*;
use serde::Serialize;

use crate::common::{answer_pair, emit_json};

/// What `lens bench patch` prints.
#[derive(Serialize)]
struct PatchBench {
    model: String,
    answers: Vec<String>,
    n_tokens: usize,
    cells: usize,
    fast_s: f64,
    naive_s: f64,
    naive_estimated_from_sample: bool,
    speedup: f64,
    fast_forward_equivalents: f64,
    naive_forwards: usize,
    forward_ratio: f64,
    max_abs_diff: Option<f32>,
    clean_diff: f32,
    corrupt_diff: f32,
}

/// The first token of each of the pet prompt's names on `model`'s tokenizer: the answers the
/// source's logit difference reads (" Peb" of " Pebbles" on GPT-2).
fn first_tokens(model: &HookedTransformer) -> candlelens::Result<Vec<String>> {
    [" Pebbles", " Rachel"]
        .iter()
        .map(|w| {
            let ids = model.tokenizer().encode(w)?;
            let first = ids.first().copied().ok_or_else(|| {
                candlelens::LensError::Internal(format!("{w:?} encodes to no tokens"))
            })?;
            Ok(model.ids_to_str_tokens(&[first])?.remove(0))
        })
        .collect()
}

pub(super) fn patch(
    model: &str,
    answers: Option<&[String]>,
    sample: Option<usize>,
    as_json: bool,
) -> candlelens::Result<()> {
    let model = std::sync::Arc::new(HookedTransformer::from_pretrained(model)?);
    let clean = model.to_tokens(PET, None)?;
    let corrupt = model.to_tokens(PET_SWAPPED, None)?;
    let answers = match answers {
        Some(a) => a.to_vec(),
        None => first_tokens(&model)?,
    };
    let mut p = Patcher::new(
        &model,
        &clean,
        &corrupt,
        candlelens::metrics::logit_diff_metric(&answer_pair(&model, &answers)?),
    )?;
    p.progress = !as_json;
    let fast = p.sweep(PatchTarget::ResidPre)?;
    let (naive_s, estimated, max_diff) = match sample {
        None => {
            let naive = p.naive_sweep(PatchTarget::ResidPre)?;
            let d = fast
                .values
                .iter()
                .flatten()
                .zip(naive.values.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            (naive.seconds, false, Some(d))
        }
        Some(k) => {
            let n_pos = clean.max_len();
            let t0 = Instant::now();
            let cells = k.max(1).min(fast.naive_forwards);
            for i in 0..cells {
                let cell = i * fast.naive_forwards / cells;
                p.naive(PatchTarget::ResidPre, cell / n_pos, cell % n_pos)?;
            }
            let per = t0.elapsed().as_secs_f64() / cells as f64;
            (per * fast.naive_forwards as f64, true, None)
        }
    };
    let report = PatchBench {
        model: model.cfg.name.clone(),
        answers: answers.clone(),
        n_tokens: clean.max_len(),
        cells: fast.naive_forwards,
        fast_s: fast.seconds,
        naive_s,
        naive_estimated_from_sample: estimated,
        speedup: naive_s / fast.seconds,
        fast_forward_equivalents: fast.forward_equivalents,
        naive_forwards: fast.naive_forwards,
        forward_ratio: fast.naive_forwards as f64 / fast.forward_equivalents,
        max_abs_diff: max_diff,
        clean_diff: fast.clean,
        corrupt_diff: fast.corrupted,
    };
    emit_json(&report, as_json);
    Ok(())
}

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
const PET_SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";
