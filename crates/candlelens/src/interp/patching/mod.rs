//! Activation patching: run the corrupted prompt, put in one activation from the clean run,
//! and measure how much of the clean behaviour comes back — for every layer and position (or
//! head), as TransformerLens's `patching` module does.
//!
//! The sweep does less work than one forward per cell, exactly:
//! - nothing before the patched layer is recomputed: the run starts from the corrupted run's
//!   cached residual stream at that layer;
//! - positions before the patched one cannot change (causal attention): only the suffix from
//!   the patched position is recomputed, attending to the corrupted run's cached keys and
//!   values for the prefix;
//! - a cell whose clean and corrupted activations are identical is a no-op (score 0);
//! - only the final position's logits are computed;
//! - the runs that patch the same position at different layers share one batch, joining it at
//!   their layer.
//!
//! [`Patcher::naive`] is the one-forward-per-cell method, kept as the reference.

mod dataset;
mod grid;
mod naive;
mod path;
mod sweep;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{HookFilter, HookPoint, Hooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::normalise;
use crate::interp::readout::ReadRows;

pub use crate::engine::block::QkvInputs;
pub use crate::interp::metrics::Metric;
pub use crate::interp::readout::{Alignment, Readout};
pub use dataset::DatasetGrid;
pub use grid::PatchGrid;
pub(crate) use grid::{grid_labels, CellMetric};
pub use path::{Head, PathPatcher, Receiver, Receivers};

/// What a sweep patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchTarget {
    /// `hook_resid_pre` by layer and position.
    ResidPre,
    /// `hook_resid_mid` by layer and position.
    ResidMid,
    /// `hook_resid_post` by layer and position.
    ResidPost,
    /// `hook_attn_out` by layer and position.
    AttnOut,
    /// `hook_mlp_out` by layer and position.
    MlpOut,
    /// One head's `hook_z` at every position, by layer and head.
    HeadsAllPos,
    /// One head's `hook_z` at one position: rows `L{l}H{h}`, columns positions.
    HeadsByPos,
    /// One head's queries (`attn.hook_q`) at every position, by layer and head.
    Q,
    /// One kv head's keys (`attn.hook_k`) at every position, by layer and kv head (under
    /// grouped-query attention a kv head serves several query heads).
    K,
    /// One kv head's values (`attn.hook_v`) at every position, by layer and kv head.
    V,
    /// One head's attention pattern (`attn.hook_pattern`) at every query position, by layer
    /// and head.
    Pattern,
}

impl PatchTarget {
    /// Parses `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`, `heads`,
    /// `heads_by_pos`, `q`, `k`, `v`, `pattern`.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] listing the names.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim_start_matches("hook_") {
            "resid_pre" => PatchTarget::ResidPre,
            "resid_mid" => PatchTarget::ResidMid,
            "resid_post" => PatchTarget::ResidPost,
            "attn_out" => PatchTarget::AttnOut,
            "mlp_out" => PatchTarget::MlpOut,
            "heads" | "z" | "heads_all_pos" => PatchTarget::HeadsAllPos,
            "heads_by_pos" => PatchTarget::HeadsByPos,
            "q" => PatchTarget::Q,
            "k" => PatchTarget::K,
            "v" => PatchTarget::V,
            "pattern" => PatchTarget::Pattern,
            other => {
                return Err(LensError::UnknownChoice {
                    what: "patch target".into(),
                    given: other.to_string(),
                    choices:
                        "resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, heads_by_pos, q, k, v or pattern"
                            .into(),
                })
            }
        })
    }

    /// Errors if `cfg`'s models have no such activation: `resid_mid` on a model whose blocks
    /// run attention and MLP in parallel.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] naming the targets to use instead.
    pub fn check(&self, cfg: &crate::engine::config::ModelConfig) -> Result<()> {
        if *self == PatchTarget::ResidMid
            && !crate::engine::block::kind::BlockKind::of(cfg).has_resid_mid()
        {
            return Err(LensError::Unsupported {
                what: "resid_mid".into(),
                fix: "this model runs attention and MLP in parallel, so it has no resid_mid; use resid_pre or resid_post".into(),
            });
        }
        Ok(())
    }

    /// The TransformerLens-style name.
    pub fn name(&self) -> &'static str {
        match self {
            PatchTarget::ResidPre => "resid_pre",
            PatchTarget::ResidMid => "resid_mid",
            PatchTarget::ResidPost => "resid_post",
            PatchTarget::AttnOut => "attn_out",
            PatchTarget::MlpOut => "mlp_out",
            PatchTarget::HeadsAllPos => "heads",
            PatchTarget::HeadsByPos => "heads_by_pos",
            PatchTarget::Q => "q",
            PatchTarget::K => "k",
            PatchTarget::V => "v",
            PatchTarget::Pattern => "pattern",
        }
    }

    /// Whether the grid is by layer × head (or kv head): `heads`, `q`, `k`, `v`, `pattern`.
    pub fn by_head(&self) -> bool {
        matches!(
            self,
            PatchTarget::HeadsAllPos
                | PatchTarget::Q
                | PatchTarget::K
                | PatchTarget::V
                | PatchTarget::Pattern
        )
    }
}

impl serde::Serialize for PatchTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// User hooks that several runs (and tools) share: a patcher's, and the exact check of an
/// attribution patcher built with the same hooks.
pub(crate) type SharedHooks = Rc<RefCell<Hooks<'static>>>;

/// Everything a sweep needs from the clean and corrupted runs. It shares the model (an [`Arc`]),
/// so it owns all it holds and lives as long as the caller wants (across evcxr cells too): build
/// it once, then sweep as many targets as needed.
pub struct Patcher {
    model: Arc<HookedTransformer>,
    corrupt_tokens: Tokens,
    /// The clean run's activations, in the corrupted run's positions.
    clean: ActivationCache,
    corrupt: ActivationCache,
    metric: Metric,
    clean_value: f32,
    corrupt_value: f32,
    /// Hooks applied to every run: both cached runs and every patched one.
    hooks: Option<SharedHooks>,
    /// The rows of the corrupted run the metric reads.
    read: ReadRows,
    /// Whether the clean positions are mapped onto the corrupted ones (not `Alignment::Same`).
    aligned: bool,
    /// Show progress on stderr.
    pub progress: bool,
}

/// How a [`Patcher`] runs beyond its prompts and metric.
#[derive(Default)]
pub struct PatchOptions {
    /// Hooks applied to every run, both cached runs and every patched one (see
    /// [`Patcher::with_hooks`]).
    pub hooks: Option<Hooks<'static>>,
    /// Where the metric reads the logits (each prompt's last token by default; any positions,
    /// or every position for a loss).
    pub readout: Readout,
    /// Which clean position each corrupted position takes its patch from (the same position
    /// by default; the last `k` tokens or explicit pairs for prompts of different lengths).
    pub alignment: Alignment,
}

/// The activations of the nodes patching and attribution patching change: the residual stream
/// at each stage, each block's attention and MLP output, and each head's `z`, `q`, `k`, `v` and
/// pattern.
pub(crate) fn node_point(hp: &HookPoint) -> bool {
    matches!(
        hp,
        HookPoint::ResidPre(_)
            | HookPoint::ResidMid(_)
            | HookPoint::ResidPost(_)
            | HookPoint::AttnOut(_)
            | HookPoint::MlpOut(_)
            | HookPoint::Z(_)
            | HookPoint::Q(_)
            | HookPoint::K(_)
            | HookPoint::V(_)
            | HookPoint::Pattern(_)
    )
}

/// Errors unless the clean and corrupted batches hold the same number of prompts.
pub(crate) fn check_batches(clean: &Tokens, corrupt: &Tokens) -> Result<()> {
    if clean.batch() != corrupt.batch() {
        return Err(LensError::mismatch(
            "clean and corrupted prompts",
            format!(
                "{} clean prompts and {} corrupted ones; give one corruption per clean prompt",
                clean.batch(),
                corrupt.batch()
            ),
        ));
    }
    Ok(())
}

/// What a sweep caches: the nodes, and the rotated keys the runs that start late attend to.
fn needed(hp: &HookPoint) -> bool {
    node_point(hp) || matches!(hp, HookPoint::RotK(_))
}

impl Patcher {
    /// Runs the clean and corrupted prompts once each and caches what sweeps read. The model is
    /// shared, not copied (`Arc::clone`).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the two batches differ in shape.
    pub fn new(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
    ) -> Result<Self> {
        Patcher::with_options(model, clean, corrupt, metric, PatchOptions::default())
    }

    /// [`Self::new`] with `hooks` applied to every run — both cached runs and every patched
    /// one — e.g. a component frozen or ablated while sweeping. A patched activation is the
    /// clean run's (hooked) value; everything else runs through the hooks. With hooks,
    /// [`Self::sweep`] runs one forward per cell ([`Self::naive_sweep`]), so that every hook
    /// fires exactly where it would in a run of its own.
    ///
    /// # Errors
    /// As [`Self::new`]; [`LensError::HookNotOnModel`] / [`LensError::LayerOutOfRange`] for a
    /// hook at a point the model never fires.
    pub fn with_hooks(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
        hooks: Hooks<'static>,
    ) -> Result<Self> {
        let opts = PatchOptions {
            hooks: Some(hooks),
            ..Default::default()
        };
        Patcher::with_options(model, clean, corrupt, metric, opts)
    }

    /// [`Self::new`] with [`PatchOptions`]: hooks on every run, a metric that reads the logits
    /// at any positions (`Readout`: each prompt's own positions, a span, or every position for
    /// a loss), and clean and corrupted prompts of different lengths (`Alignment`: a patch at a
    /// corrupted position puts in the clean activation at its aligned position; positions with
    /// none are left alone and score 0). The grid stays in the corrupted prompt's positions, and
    /// the fast sweep stays exact.
    ///
    /// # Errors
    /// As [`Self::new`]; [`LensError::Mismatch`] for batches of different sizes, prompts of
    /// different lengths under `Alignment::Same`, or a readout or alignment that does not fit
    /// the prompts; as [`Self::with_hooks`] for bad hooks.
    pub fn with_options(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
        opts: PatchOptions,
    ) -> Result<Self> {
        let hooks = opts.hooks.map(|h| Rc::new(RefCell::new(h)));
        Patcher::build(
            model,
            clean,
            corrupt,
            metric,
            hooks,
            &opts.readout,
            &opts.alignment,
        )
    }

    fn build(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
        hooks: Option<SharedHooks>,
        readout: &Readout,
        alignment: &Alignment,
    ) -> Result<Self> {
        check_batches(clean, corrupt)?;
        let map = alignment.map(clean, corrupt)?;
        let f = || Some(HookFilter::Predicate(Box::new(needed)));
        let run = |tokens: &Tokens| -> Result<(f32, ActivationCache)> {
            let read = readout.rows(tokens)?;
            let (logits, cache) = match &hooks {
                Some(h) => {
                    let mut h = h.borrow_mut();
                    model.run_with_hooks_and_cache(tokens, &mut h, f(), LogitsAt::All)?
                }
                None => model.run_with_cache(tokens, f())?,
            };
            Ok((metric(&read.shape(&read.gather(&logits)?)?)?, cache))
        };
        let (clean_value, clean_cache) = run(clean)?;
        let (corrupt_value, corrupt_cache) = run(corrupt)?;
        let aligned = *alignment != Alignment::Same;
        let clean_cache = if aligned {
            Alignment::aligned_cache(&map, &clean_cache, &corrupt_cache, corrupt, &model.cfg)?
        } else {
            clean_cache
        };
        Ok(Patcher {
            model: Arc::clone(model),
            corrupt_tokens: corrupt.clone(),
            clean: clean_cache,
            corrupt: corrupt_cache,
            metric,
            clean_value,
            corrupt_value,
            hooks,
            read: readout.rows(corrupt)?,
            aligned,
            progress: true,
        })
    }

    /// The metric of a run of the corrupted prompts from its logits `[batch, pos, d_vocab]`.
    pub(crate) fn metric_of(&self, logits: &Tensor) -> Result<f32> {
        let v = (self.metric)(&self.read.shape(&self.read.gather(logits)?)?)?;
        crate::interp::metrics::check_metric_value(v, "a patched run")?;
        Ok(v)
    }

    /// The model the sweeps run.
    pub fn model(&self) -> &Arc<HookedTransformer> {
        &self.model
    }

    /// The clean run's cache (the activations a sweep puts in).
    pub fn clean_cache(&self) -> &ActivationCache {
        &self.clean
    }

    /// The corrupted run's cache.
    pub fn corrupted_cache(&self) -> &ActivationCache {
        &self.corrupt
    }

    /// The metric on the clean run.
    pub fn clean_metric(&self) -> f32 {
        self.clean_value
    }

    /// The metric on the corrupted run.
    pub fn corrupted_metric(&self) -> f32 {
        self.corrupt_value
    }

    /// What the corruption does to the metric, by the one rule of
    /// [`Effect`](crate::interp::metrics::Effect): a sweep runs on all but `Effect::None`, and
    /// is worth reading on a clear effect.
    pub fn effect(&self) -> crate::interp::metrics::Effect {
        crate::interp::metrics::Effect::of(self.clean_value, self.corrupt_value)
    }

    /// [`Self::with_hooks`] on hooks another tool shares (attribution patching's exact check).
    pub(crate) fn with_shared_hooks(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
        hooks: Option<SharedHooks>,
        readout: &Readout,
        alignment: &Alignment,
    ) -> Result<Self> {
        Patcher::build(model, clean, corrupt, metric, hooks, readout, alignment)
    }

    /// Errors for the attention-pattern target under an alignment: a pattern row reads every
    /// position, so it has no one clean position to take.
    pub(crate) fn check_aligned_target(&self, target: PatchTarget) -> Result<()> {
        if self.aligned && target == PatchTarget::Pattern {
            return Err(LensError::Unsupported {
                what: "patching attention patterns between prompts of different lengths".into(),
                fix: "patch the heads' outputs (heads_all_pos, heads_by_pos) or q / k / v instead, or use corruptions of the same length".into(),
            });
        }
        Ok(())
    }

    /// Errors when this patcher has hooks of its own and `what` cannot honour them.
    pub(crate) fn check_no_hooks(&self, what: &str) -> Result<()> {
        if self.hooks.is_some() {
            return Err(LensError::Unsupported {
                what: format!("{what} with a patcher's own hooks"),
                fix: "build the patcher with Patcher::new (no hooks), or apply the intervention with hooks on activation patching (Patcher::with_hooks + sweep)".into(),
            });
        }
        Ok(())
    }

    /// Whether the corruption moves the metric at all; without that every normalised score is
    /// `x / 0`.
    ///
    /// # Errors
    /// [`LensError::NoEffect`] when `|clean − corrupted|` is below `1e-6` of their scale.
    pub fn check_effect(&self) -> Result<()> {
        crate::interp::metrics::require_effect(
            self.clean_value,
            self.corrupt_value,
            "choose a corruption that changes the answer (and answers that differ), or compare raw metrics instead of normalised scores",
        )
    }

    fn score(&self, m: f32) -> f32 {
        normalise(m, self.clean_value, self.corrupt_value)
    }

    fn act(&self, cache_is_clean: bool, hp: HookPoint) -> Result<&Tensor> {
        if cache_is_clean {
            self.clean.at(hp)
        } else {
            self.corrupt.at(hp)
        }
    }

    /// A grid of scores with its labels (rows: layers, or `L{l}H{h}` heads; columns: positions,
    /// or `H{h}` heads); timing and work are left for the caller to fill in.
    fn grid(&self, target: PatchTarget, values: Vec<Vec<f32>>) -> PatchGrid {
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        let (row_labels, col_labels) = grid_labels(&self.model.cfg, target, rows, cols);
        PatchGrid {
            target,
            values,
            row_labels,
            col_labels,
            clean: self.clean_value,
            corrupted: self.corrupt_value,
            seconds: 0.0,
            forward_equivalents: 0.0,
            naive_forwards: rows * cols,
        }
    }
}
