//! `lens bench padding` and `lens bench cache`: what a padded batch and a full cache cost
//! against the plain forward of the same shape, interleaved in one process.

use std::time::Instant;

use candlelens::prelude::*;
use serde::Serialize;

use super::touch;
use crate::common::{emit_json, Input};

/// What `lens bench padding` prints.
#[derive(Serialize)]
struct PaddingBench {
    model: String,
    batch: usize,
    n_tokens: usize,
    /// Prompt lengths of the padded batch.
    lengths: Vec<usize>,
    runs: usize,
    /// The same shape, no pads: the baseline.
    rectangular_ms: f64,
    left_padded_ms: f64,
    right_padded_ms: f64,
    /// left / rectangular and right / rectangular.
    left_ratio: f64,
    right_ratio: f64,
}

pub(super) fn padding(input: &Input, runs: usize, as_json: bool) -> candlelens::Result<()> {
    use candlelens::tokens::Padding;
    let model = input.load()?;
    let tokens = input.tokens(&model)?;
    let rows = tokens.rows().to_vec();
    let longest = rows
        .iter()
        .max_by_key(|r| r.len())
        .cloned()
        .unwrap_or_default();
    let pad = tokens.pad_id();
    let batches = [
        Tokens::with_padding(vec![longest; rows.len()], pad, Padding::Right)?,
        Tokens::with_padding(rows.clone(), pad, Padding::Left)?,
        Tokens::with_padding(rows, pad, Padding::Right)?,
    ];
    // interleave the three so that the machine's drift hits all alike
    let mut ms: [Vec<f64>; 3] = Default::default();
    for i in 0..=runs.max(1) {
        for (t, out) in batches.iter().zip(ms.iter_mut()) {
            let t0 = Instant::now();
            touch(&model.last_logits(t)?)?;
            if i > 0 {
                out.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut r, mut l, mut rp] = ms;
    let (r, l, rp) = (med(&mut r), med(&mut l), med(&mut rp));
    let report = PaddingBench {
        model: model.cfg.name.clone(),
        batch: tokens.batch(),
        n_tokens: tokens.max_len(),
        lengths: tokens.lengths(),
        runs: runs.max(1),
        rectangular_ms: r,
        left_padded_ms: l,
        right_padded_ms: rp,
        left_ratio: l / r,
        right_ratio: rp / r,
    };
    emit_json(&report, as_json);
    Ok(())
}

/// What `lens bench cache` prints.
#[derive(Serialize)]
struct CacheBench {
    model: String,
    batch: usize,
    last: bool,
    n_tokens: usize,
    runs: usize,
    /// Median of `run_with_cache` with every hook.
    cache_ms: f64,
    /// Median of the plain forward computing the same logits.
    forward_ms: f64,
    /// `cache_ms / forward_ms`.
    ratio: f64,
    /// Activations cached and their size.
    n_cached: usize,
    cached_mb: f64,
}

pub(super) fn cache(
    input: &Input,
    last: bool,
    runs: usize,
    as_json: bool,
) -> candlelens::Result<()> {
    let model = input.load()?;
    let tokens = input.tokens(&model)?;
    let at = if last { LogitsAt::Last } else { LogitsAt::All };
    let mut hooks = Hooks::new();
    let mut sizes = (0usize, 0usize);
    // interleave the two so that the machine's drift hits both alike
    let (mut c_ms, mut f_ms) = (Vec::new(), Vec::new());
    for i in 0..=runs.max(1) {
        let t = Instant::now();
        let (logits, cache) = model.run_with_hooks_and_cache(&tokens, &mut hooks, None, at)?;
        touch(&logits)?;
        let c = t.elapsed().as_secs_f64() * 1e3;
        sizes = (
            cache.len(),
            cache
                .keys()
                .filter_map(|hp| cache.at(*hp).ok())
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum(),
        );
        drop(cache);
        let t = Instant::now();
        touch(&model.forward_with(&tokens, at, &mut candlelens::hooks::NoHooks)?)?;
        let f = t.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            c_ms.push(c);
            f_ms.push(f);
        }
    }
    c_ms.sort_by(f64::total_cmp);
    f_ms.sort_by(f64::total_cmp);
    let (cache_ms, forward_ms) = (c_ms[c_ms.len() / 2], f_ms[f_ms.len() / 2]);
    let report = CacheBench {
        model: model.cfg.name.clone(),
        batch: tokens.batch(),
        last,
        n_tokens: tokens.max_len(),
        runs: c_ms.len(),
        cache_ms,
        forward_ms,
        ratio: cache_ms / forward_ms,
        n_cached: sizes.0,
        cached_mb: sizes.1 as f64 / (1024.0 * 1024.0),
    };
    emit_json(&report, as_json);
    Ok(())
}
