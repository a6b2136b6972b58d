//! Attribution patching (Nanda 2023; Syed et al. 2023) and its integrated-gradients variant
//! (EAP-IG, Hanna et al. 2024), node by node, with a self-check against the exact sweep.
//!
//! Activation patching asks, cell by cell (a layer and position, or a head), how much of the
//! clean behaviour comes back when the cell's clean activation replaces the corrupted one.
//! Attribution patching answers every cell at once, to first order: with `a` the activation at
//! the cell, `m` the metric and `∇m` its gradient on the corrupted run,
//!
//! `estimate[cell] = Σ_cell ∇m(corrupted) · (a_clean − a_corrupted) / (m_clean − m_corrupted)`,
//!
//! the sum running over the cell's positions, prompts and features — in the exact sweep's
//! normalised units (1 = the whole clean behaviour restored). It costs one clean run, one
//! corrupted run with gradients tracked and one backward pass, whatever the size of the grid.
//! The integrated-gradients variant averages `∇m` over `k` runs whose input embeddings go from
//! the corrupted to the clean ones (`α = 1/k, 2/k, …, 1`), which follows the metric along the
//! whole way instead of its slope at the corrupted end.
//!
//! The estimate is linear; patching is not. [`AttributionPatcher::verify`] runs the exact sweep on the
//! same grid and reports, cell by cell, where the two disagree — which no other tool does.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{Chain, HookFilter, HookPoint, HookSink, Hooks};
use crate::engine::model::HookedTransformer;
use crate::engine::runtime::memory::Workload;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::{normalise, GradMetric};
use crate::interp::patching::{
    check_batches, grid_labels, node_point, PatchGrid, PatchOptions, PatchTarget, SharedHooks,
};
use crate::interp::readout::{Alignment, ReadRows, Readout};

mod edge_graph;
mod edges;
mod verify;
pub use edge_graph::{Downstream, Edge, EdgeCheck, EdgeGraph, EdgeVerification, Input, Upstream};
pub(crate) use verify::pearson;
pub use verify::{Disagreement, Verification};

/// The most integrated-gradients steps a patcher takes (each is a forward and a backward pass).
pub const MAX_IG_STEPS: usize = 1024;

fn recorded(hp: &HookPoint) -> bool {
    *hp == HookPoint::Embed || node_point(hp)
}

/// The sink of a run with gradients: the token embedding becomes a leaf variable (replaced by
/// `embed` when given: the integrated-gradients interpolation), and every node activation `a`
/// goes on as `a + t` with `t` a zero-valued variable, the node's tap: candle's backward pass
/// keeps the gradients of variables only, and `∂m/∂t = ∂m/∂a` while the graph above `a` stays
/// whole.
struct GradSink {
    embed: Option<Tensor>,
    leaf: Option<Var>,
    acts: Vec<(HookPoint, Tensor, Var)>,
}

impl HookSink for GradSink {
    fn wants(&self, hp: &HookPoint) -> bool {
        recorded(hp)
    }

    fn visit(&mut self, hp: &HookPoint, act: Tensor) -> Result<Tensor> {
        if *hp == HookPoint::Embed {
            let base = self.embed.take().unwrap_or(act);
            let leaf = Var::from_tensor(&base.detach())?;
            let t = leaf.as_tensor().clone();
            self.leaf = Some(leaf);
            return Ok(t);
        }
        let tap = Var::zeros(act.shape(), act.dtype(), act.device())?;
        let out = (&act + tap.as_tensor())?;
        self.acts.push((*hp, act.detach(), tap));
        Ok(out)
    }
}

/// One run with gradients: the metric's value, each node's activation (detached) and
/// gradient `∂m/∂a`, and the logits of the `extra` final residuals unembedded with it.
type GradRun = (f32, Vec<(HookPoint, Tensor, Tensor)>, Option<Tensor>);

/// The final residual at the rows the metric reads, `[batch · k, d_model]`, of a run through
/// `sink` (no unembedding), the user's `hooks` (when given) applied first.
fn final_residual(
    model: &HookedTransformer,
    tokens: &Tokens,
    read: &ReadRows,
    hooks: Option<&SharedHooks>,
    sink: &mut dyn HookSink,
) -> Result<Tensor> {
    let x = match hooks {
        Some(h) => {
            let mut h = h.borrow_mut();
            model.run_until(tokens, model.cfg.n_layers, &mut Chain(&mut *h, sink))?
        }
        None => model.run_until(tokens, model.cfg.n_layers, sink)?,
    };
    read.gather(&x)
}

/// The clean run, recording the node points, up to its final residual at the rows the metric
/// reads, `[batch · k, d_model]`: its unembedding joins the corrupted run's (one pass over
/// `W_U` for both).
fn clean_pass(
    model: &HookedTransformer,
    tokens: &Tokens,
    read: &ReadRows,
    hooks: Option<&SharedHooks>,
) -> Result<(Tensor, ActivationCache)> {
    let mut rec = ActivationCache::recorder(HookFilter::Predicate(Box::new(recorded)));
    let last = final_residual(model, tokens, read, hooks, &mut rec)?;
    Ok((last, rec.finish(tokens.clone(), &model.cfg)))
}

#[allow(clippy::too_many_arguments)] // the run's parts: model, prompts, readout, hooks, ...
fn run_with_grads(
    model: &HookedTransformer,
    tokens: &Tokens,
    read: &ReadRows,
    hooks: Option<&SharedHooks>,
    embed: Option<Tensor>,
    metric: &GradMetric,
    extra: Option<&Tensor>,
) -> Result<GradRun> {
    let mut sink = GradSink {
        embed,
        leaf: None,
        acts: Vec::new(),
    };
    let last = final_residual(model, tokens, read, hooks, &mut sink)?;
    let last_rows = last.dim(0)?;
    // the untracked extra rows ride along in the unembedding: one read of a large W_U
    let (rows, n_extra) = match extra {
        Some(e) => (Tensor::cat(&[e, &last], 0)?, e.dim(0)?),
        None => (last, 0),
    };
    let logits = model.unembed_residual(&rows)?;
    let extra_logits = match n_extra {
        0 => None,
        n => Some(logits.narrow(0, 0, n)?.detach()),
    };
    let m = scalar(metric, &read.shape(&logits.narrow(0, n_extra, last_rows)?)?)?;
    let grads = m.backward()?;
    let value = m.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let out = sink
        .acts
        .into_iter()
        .map(|(hp, a, tap)| {
            let g = match grads.get(tap.as_tensor()) {
                Some(g) => g.detach(),
                // not on any path to the metric
                None => a.zeros_like()?,
            };
            Ok((hp, a, g))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((value, out, extra_logits))
}

/// The metric of final-position logits, checked to be one number (attribution patching and
/// SAE feature attribution read it).
pub(crate) fn scalar(metric: &GradMetric, last_logits: &Tensor) -> Result<Tensor> {
    let m = metric(last_logits)?;
    if m.rank() != 0 {
        return Err(LensError::mismatch("the attribution metric", format!(
                "it returned shape {:?}; it must reduce the logits to one number (e.g. the mean over the batch)",
                m.dims()
            )));
    }
    Ok(m)
}

/// The clean and corrupted runs and the metric's gradients at every node, ready to give
/// attribution grids for any target.
///
/// Like [`Patcher`](crate::interp::patching::Patcher), it shares the model and owns all it holds, so a notebook keeps it across
/// cells.
pub struct AttributionPatcher {
    model: Arc<HookedTransformer>,
    clean_tokens: Tokens,
    corrupt_tokens: Tokens,
    metric: GradMetric,
    clean: ActivationCache,
    corrupt: ActivationCache,
    grads: ActivationCache,
    clean_value: f32,
    corrupt_value: f32,
    ig_steps: Option<usize>,
    /// Hooks applied to every run (and to the exact check's).
    hooks: Option<SharedHooks>,
    /// Where the metric reads the logits.
    readout: Readout,
    /// How clean positions map onto corrupted ones.
    alignment: Alignment,
    /// Wall time of the runs and backward passes.
    pub seconds: f64,
    /// That time in forwards of the clean batch (the first run, timed in the same call).
    pub forward_equivalents: f64,
}

/// The old name of [`AttributionPatcher`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `AttributionPatcher` (`Attribution` was also direct logit attribution's name)"
)]
pub type Attribution = AttributionPatcher;

impl AttributionPatcher {
    /// Attribution patching: the clean run, the corrupted run with gradients tracked and one
    /// backward pass of `metric` (a scalar of the final-position logits `[batch, d_vocab]`, e.g.
    /// [`logit_diff_grad_metric`](crate::interp::metrics::logit_diff_grad_metric)).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the two batches differ in token counts or the metric is not a
    /// scalar; tensor errors.
    pub fn new(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: GradMetric,
    ) -> Result<Self> {
        Self::with_options(model, clean, corrupt, metric, PatchOptions::default(), None)
    }

    /// [`Self::new`] (or, with `ig_steps`, [`Self::integrated_gradients`]) with `hooks`
    /// applied to every run — clean, corrupted, each interpolation step, and the exact sweep
    /// that [`Self::verify`] compares with ([`Patcher::with_hooks`](crate::interp::patching::Patcher::with_hooks)) — e.g. a component ablated
    /// while attributing. A hook that replaces an activation with a constant cuts the gradient
    /// through it, as the ablation cuts the component's effect. Edge attribution and path
    /// patching, which wire their own runs, refuse such a patcher with a typed error.
    ///
    /// # Errors
    /// As [`Self::new`] / [`Self::integrated_gradients`]; [`LensError::HookNotOnModel`] /
    /// [`LensError::LayerOutOfRange`] for a hook at a point the model never fires.
    pub fn with_hooks(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: GradMetric,
        hooks: Hooks<'static>,
        ig_steps: Option<usize>,
    ) -> Result<Self> {
        let opts = PatchOptions {
            hooks: Some(hooks),
            ..Default::default()
        };
        Self::with_options(model, clean, corrupt, metric, opts, ig_steps)
    }

    /// [`Self::new`] (or, with `ig_steps`, [`Self::integrated_gradients`]) with
    /// [`PatchOptions`], as [`Patcher::with_options`](crate::interp::patching::Patcher::with_options):
    /// hooks on every run, a metric that reads the logits at any positions, and clean and
    /// corrupted prompts of different lengths (the estimate at a corrupted position uses the
    /// clean activation at its aligned position; integrated gradients interpolate the aligned
    /// embeddings). The exact check ([`Self::verify`]) runs with the same options.
    ///
    /// # Errors
    /// As [`Patcher::with_options`](crate::interp::patching::Patcher::with_options) and
    /// [`Self::integrated_gradients`].
    pub fn with_options(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: GradMetric,
        opts: PatchOptions,
        ig_steps: Option<usize>,
    ) -> Result<Self> {
        let hooks = match opts.hooks {
            Some(h) => {
                h.check(&model.cfg)?;
                Some(Rc::new(RefCell::new(h)))
            }
            None => None,
        };
        Self::build(
            model,
            clean,
            corrupt,
            metric,
            ig_steps,
            hooks,
            opts.readout,
            opts.alignment,
        )
    }

    /// The integrated-gradients variant (EAP-IG): the gradient averaged over `steps` runs whose
    /// token embeddings interpolate from the corrupted prompt's to the clean one's,
    /// `α = 1/steps, …, 1`.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for `steps == 0`; otherwise as [`Self::new`].
    pub fn integrated_gradients(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: GradMetric,
        steps: usize,
    ) -> Result<Self> {
        Self::with_options(
            model,
            clean,
            corrupt,
            metric,
            PatchOptions::default(),
            Some(steps),
        )
    }

    #[allow(clippy::too_many_arguments)] // with_options's parts, unpacked
    fn build(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: GradMetric,
        ig_steps: Option<usize>,
        hooks: Option<SharedHooks>,
        readout: Readout,
        alignment: Alignment,
    ) -> Result<Self> {
        if let Some(k) = ig_steps.filter(|&k| k == 0 || k > MAX_IG_STEPS) {
            return Err(LensError::bad_parameter(
                "ig_steps",
                k,
                &format!("use 1 to {MAX_IG_STEPS} interpolation steps (each is a forward and a backward pass; 5-50 is usual)"),
            ));
        }
        check_batches(clean, corrupt)?;
        let grads = Workload::Gradients { split_heads: false };
        model.ensure_fits(corrupt, &grads)?;
        model.ensure_fits(clean, &grads)?;
        let map = alignment.map(clean, corrupt)?;
        let (read_clean, read) = (readout.rows(clean)?, readout.rows(corrupt)?);
        let align = |clean_cache: ActivationCache, corrupt_cache: &ActivationCache| {
            if alignment == Alignment::Same {
                Ok(clean_cache)
            } else {
                Alignment::aligned_cache(&map, &clean_cache, corrupt_cache, corrupt, &model.cfg)
            }
        };
        let h = hooks.as_ref();
        let start = Instant::now();
        let value_of = |read: &ReadRows, logits: &Tensor| -> Result<f32> {
            Ok(scalar(&metric, &read.shape(logits)?)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?)
        };
        let (clean_last, clean_cache) = clean_pass(model, clean, &read_clean, h)?;
        let forward = start.elapsed().as_secs_f64();
        let mut grads = ActivationCache::recorder(HookFilter::Predicate(Box::new(node_point)));
        let (clean_value, corrupt_value, clean_cache, corrupt_cache) = match ig_steps {
            None => {
                // the run with gradients is the corrupted run itself; the clean run's final
                // residuals are unembedded with it
                let (value, nodes, clean_logits) =
                    run_with_grads(model, corrupt, &read, h, None, &metric, Some(&clean_last))?;
                let clean_logits = clean_logits
                    .ok_or_else(|| LensError::Internal("clean logits missing".into()))?;
                let mut cache =
                    ActivationCache::recorder(HookFilter::Predicate(Box::new(recorded)));
                for (hp, a, g) in nodes {
                    cache.insert(hp, a);
                    grads.insert(hp, g);
                }
                let cache = cache.finish(corrupt.clone(), &model.cfg);
                let clean_cache = align(clean_cache, &cache)?;
                (
                    value_of(&read_clean, &clean_logits)?,
                    value,
                    clean_cache,
                    cache,
                )
            }
            Some(steps) => {
                let clean_value = value_of(&read_clean, &model.unembed_residual(&clean_last)?)?;
                let (corrupt_last, cache) = clean_pass(model, corrupt, &read, h)?;
                let value = value_of(&read, &model.unembed_residual(&corrupt_last)?)?;
                let clean_cache = align(clean_cache, &cache)?;
                let e_clean = clean_cache.at(HookPoint::Embed)?;
                let e_corrupt = cache.at(HookPoint::Embed)?;
                let delta = (e_clean - e_corrupt)?;
                let mut sums: Vec<(HookPoint, Tensor)> = Vec::new();
                for step in 1..=steps {
                    let alpha = step as f64 / steps as f64;
                    let embed = (e_corrupt + (&delta * alpha)?)?;
                    let (_, nodes, _) =
                        run_with_grads(model, corrupt, &read, h, Some(embed), &metric, None)?;
                    if sums.is_empty() {
                        sums = nodes.into_iter().map(|(hp, _, g)| (hp, g)).collect();
                    } else {
                        for ((hp, s), (hq, _, g)) in sums.iter_mut().zip(nodes) {
                            debug_assert_eq!(*hp, hq);
                            *s = (&*s + g)?;
                        }
                    }
                }
                for (hp, s) in sums {
                    grads.insert(hp, (s / steps as f64)?);
                }
                (clean_value, value, clean_cache, cache)
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        Ok(AttributionPatcher {
            model: Arc::clone(model),
            clean_tokens: clean.clone(),
            corrupt_tokens: corrupt.clone(),
            metric,
            clean: clean_cache,
            corrupt: corrupt_cache,
            grads,
            clean_value,
            corrupt_value,
            ig_steps,
            hooks,
            readout,
            alignment,
            seconds,
            forward_equivalents: seconds / forward.max(1e-9),
        })
    }

    /// Errors unless the corruption moves the metric (every normalised estimate divides by
    /// `clean − corrupted`).
    fn check_effect(&self) -> Result<()> {
        crate::interp::metrics::require_effect(
            self.clean_value,
            self.corrupt_value,
            "choose a corruption that changes the answer (and answers that differ)",
        )
    }

    /// The metric on the clean run.
    pub fn clean_metric(&self) -> f32 {
        self.clean_value
    }

    /// The metric on the corrupted run.
    pub fn corrupted_metric(&self) -> f32 {
        self.corrupt_value
    }

    /// The integrated-gradients steps (`None`: plain attribution patching).
    pub fn ig_steps(&self) -> Option<usize> {
        self.ig_steps
    }

    /// The metric's gradient at every node (`∂m/∂a` on the corrupted run, or its average over
    /// the interpolation), keyed like a cache: `resid_pre/mid/post`, `attn_out`, `mlp_out`,
    /// `attn.hook_z`.
    pub fn gradients(&self) -> &ActivationCache {
        &self.grads
    }

    /// The clean run's activations.
    pub fn clean_cache(&self) -> &ActivationCache {
        &self.clean
    }

    /// The corrupted run's activations.
    pub fn corrupted_cache(&self) -> &ActivationCache {
        &self.corrupt
    }

    /// `Σ_batch ∇m · (a_clean − a_corrupted)` at `hp`, summed over every axis but position (and
    /// head, for `hook_z`): `[pos]`, or `[pos, head]` for `hook_z`.
    fn products(&self, hp: HookPoint) -> Result<Tensor> {
        let diff = (self.clean.at(hp)? - self.corrupt.at(hp)?)?;
        let prod = (self.grads.at(hp)? * diff)?.to_dtype(DType::F32)?;
        // [batch, pos, d] -> [pos]; z: [batch, pos, head, d_head] -> [pos, head]
        let summed = prod.sum(0)?;
        Ok(summed.sum(summed.rank() - 1)?)
    }

    /// The attribution estimate of every cell of `target`, in the exact sweep's normalised
    /// units and layout (rows: layers, or `L{l}H{h}`; columns: positions, or heads): a
    /// [`PatchGrid`] whose `seconds` and `forward_equivalents` are this attribution's.
    ///
    /// # Errors
    /// [`LensError::NoEffect`] when the corruption does not move the metric,
    /// [`LensError::Unsupported`] for `resid_mid` on a parallel-block model.
    pub fn nodes(&self, target: PatchTarget) -> Result<PatchGrid> {
        let cfg = &self.model.cfg;
        let (c, k) = (self.clean_value, self.corrupt_value);
        self.check_effect()?;
        target.check(cfg)?;
        // a first-order change x of the metric, as the sweep normalises a patched metric k + x
        let norm = |x: f32| normalise(k + x, c, k);
        let mut values: Vec<Vec<f32>> = Vec::new();
        for l in 0..cfg.n_layers {
            let hp = match target {
                PatchTarget::ResidPre => HookPoint::ResidPre(l),
                PatchTarget::ResidMid => HookPoint::ResidMid(l),
                PatchTarget::ResidPost => HookPoint::ResidPost(l),
                PatchTarget::AttnOut => HookPoint::AttnOut(l),
                PatchTarget::MlpOut => HookPoint::MlpOut(l),
                PatchTarget::HeadsAllPos | PatchTarget::HeadsByPos => HookPoint::Z(l),
                PatchTarget::Q => HookPoint::Q(l),
                PatchTarget::K => HookPoint::K(l),
                PatchTarget::V => HookPoint::V(l),
                PatchTarget::Pattern => HookPoint::Pattern(l),
            };
            if target == PatchTarget::Pattern {
                // [batch, head, q, k] -> [head]
                let diff = (self.clean.at(hp)? - self.corrupt.at(hp)?)?;
                let prod = (self.grads.at(hp)? * diff)?.to_dtype(DType::F32)?;
                let per_head: Vec<f32> = prod.sum(3)?.sum(2)?.sum(0)?.to_vec1()?;
                values.push(per_head.into_iter().map(norm).collect());
                continue;
            }
            let p = self.products(hp)?;
            match target {
                PatchTarget::HeadsAllPos | PatchTarget::Q | PatchTarget::K | PatchTarget::V => {
                    let per_head: Vec<f32> = p.sum(0)?.to_vec1()?;
                    values.push(per_head.into_iter().map(norm).collect());
                }
                PatchTarget::HeadsByPos => {
                    // [pos, head] -> one row per head
                    let rows: Vec<Vec<f32>> = p.t()?.contiguous()?.to_vec2()?;
                    values.extend(rows.into_iter().map(|r| r.into_iter().map(norm).collect()));
                }
                _ => {
                    let row: Vec<f32> = p.to_vec1()?;
                    values.push(row.into_iter().map(norm).collect());
                }
            }
        }
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        let (row_labels, col_labels) = grid_labels(cfg, target, rows, cols);
        Ok(PatchGrid {
            target,
            values,
            row_labels,
            col_labels,
            clean: c,
            corrupted: k,
            seconds: self.seconds,
            forward_equivalents: self.forward_equivalents,
            naive_forwards: rows * cols,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::verify::pearson;

    #[test]
    fn pearson_is_one_on_a_line_and_nan_on_a_constant() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[0.0, 2.0]).is_nan());
    }
}
