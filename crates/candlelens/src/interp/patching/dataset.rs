//! A dataset of clean/corrupted pairs patched batch by batch: the grid of the whole dataset
//! (as if it ran as one batch) and each batch's own grid.

use std::ops::Range;
use std::sync::Arc;

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::{normalise, Metric};

use super::{PatchGrid, PatchOptions, PatchTarget, Patcher};

/// What [`Patcher::sweep_dataset`] returns.
#[derive(Clone, Debug)]
pub struct DatasetGrid {
    /// The whole dataset's grid: every batch's raw patched metric averaged with the batch's
    /// share of the pairs, normalised by the dataset's mean clean and corrupted metrics — the
    /// grid one batch of every pair would give, for a metric that averages over its prompts.
    /// Positions past a batch's longest prompt count as unpatched there (the corrupted value).
    pub mean: PatchGrid,
    /// Each batch's own grid, normalised by its own clean and corrupted metrics (with
    /// `batch_size` 1, each pair's grid).
    pub per_batch: Vec<PatchGrid>,
    /// The pairs in each batch.
    pub batches: Vec<Range<usize>>,
}

/// `tokens`' prompts in `r`, padded the same way.
fn slice(tokens: &Tokens, r: Range<usize>) -> Result<Tokens> {
    Tokens::with_padding(tokens.rows()[r].to_vec(), tokens.pad_id(), tokens.padding())
}

impl Patcher {
    /// Activation patching over a dataset of pairs (`clean[i]` with `corrupt[i]`),
    /// `batch_size` pairs per run: each batch gets a [`Patcher`] with the metric and options
    /// `make(range)` builds for its pairs (e.g. their answer pairs, their alignment) and sweeps
    /// `target` (the fast sweep: exact). The metric should average over its prompts, as the
    /// sources' do, for [`DatasetGrid::mean`] to equal one batch of the whole dataset.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for a zero `batch_size`; [`LensError::Mismatch`] for
    /// datasets of different sizes; [`LensError::NoEffect`] naming the batch whose corruption
    /// does not move its metric; as [`Patcher::with_options`] and [`Patcher::sweep`].
    pub fn sweep_dataset(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        target: PatchTarget,
        batch_size: usize,
        make: impl Fn(Range<usize>) -> Result<(Metric, PatchOptions)>,
    ) -> Result<DatasetGrid> {
        if batch_size == 0 {
            return Err(LensError::bad_parameter(
                "batch_size",
                "0",
                "run at least one pair at a time",
            ));
        }
        super::check_batches(clean, corrupt)?;
        let n = clean.batch();
        let batches: Vec<Range<usize>> = (0..n)
            .step_by(batch_size)
            .map(|s| s..(s + batch_size).min(n))
            .collect();
        let mut per_batch = Vec::with_capacity(batches.len());
        for r in &batches {
            let (metric, opts) = make(r.clone())?;
            let mut p = Patcher::with_options(
                model,
                &slice(clean, r.clone())?,
                &slice(corrupt, r.clone())?,
                metric,
                opts,
            )?;
            p.progress = false;
            let grid = p.sweep(target).map_err(|e| match e {
                LensError::NoEffect {
                    clean,
                    corrupted,
                    fix,
                } => LensError::NoEffect {
                    clean,
                    corrupted,
                    fix: format!("pairs {}..{}: {fix}", r.start, r.end),
                },
                other => other,
            })?;
            per_batch.push(grid);
        }
        let mean = combine(&per_batch, &batches, n)?;
        Ok(DatasetGrid {
            mean,
            per_batch,
            batches,
        })
    }
}

/// The dataset's grid from its batches' (see [`DatasetGrid::mean`]).
fn combine(grids: &[PatchGrid], batches: &[Range<usize>], n: usize) -> Result<PatchGrid> {
    let widest = grids
        .iter()
        .max_by_key(|g| g.values.first().map_or(0, Vec::len))
        .ok_or_else(|| {
            LensError::too_few("pairs in the dataset", 1, 0, "give at least one pair")
        })?;
    let (rows, cols) = (widest.values.len(), widest.values[0].len());
    let mut raw = vec![vec![0f64; cols]; rows];
    let (mut clean, mut corrupted) = (0f64, 0f64);
    let (mut seconds, mut fe) = (0f64, 0f64);
    for (g, r) in grids.iter().zip(batches) {
        let w = r.len() as f64 / n as f64;
        clean += w * g.clean as f64;
        corrupted += w * g.corrupted as f64;
        seconds += g.seconds;
        fe += w * g.forward_equivalents;
        for (i, row) in raw.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                // a cell this batch lacks patches nothing: its corrupted metric
                let s = g
                    .values
                    .get(i)
                    .and_then(|r| r.get(j))
                    .copied()
                    .unwrap_or(0.0);
                let patched = g.corrupted as f64 + s as f64 * (g.clean - g.corrupted) as f64;
                *v += w * patched;
            }
        }
    }
    let (clean, corrupted) = (clean as f32, corrupted as f32);
    crate::interp::metrics::require_effect(
        clean,
        corrupted,
        "the dataset's corruptions cancel out on average; check the answer pairs' order",
    )?;
    Ok(PatchGrid {
        target: widest.target,
        values: raw
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&v| normalise(v as f32, clean, corrupted))
                    .collect()
            })
            .collect(),
        row_labels: widest.row_labels.clone(),
        col_labels: widest.col_labels.clone(),
        clean,
        corrupted,
        seconds,
        forward_equivalents: fe,
        naive_forwards: rows * cols * batches.len(),
    })
}
