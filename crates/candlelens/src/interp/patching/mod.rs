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

pub use crate::engine::block::QkvInputs;
pub use crate::interp::metrics::Metric;
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

/// A sweep's result: normalised scores `(patched - corrupted) / (clean - corrupted)`.
///
/// Serializes as `lens patch --json` prints it: `{"hook", "grid", "row_labels", "col_labels",
/// "clean_diff", "corrupt_diff", "seconds", "forward_equivalents", "naive_forwards"}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchGrid {
    /// What was patched.
    #[serde(rename = "hook")]
    pub target: PatchTarget,
    /// `[rows][cols]`: layer × position, layer × head, or head × position.
    #[serde(rename = "grid")]
    pub values: Vec<Vec<f32>>,
    /// One label per row: the layer (`"3"`), or the head (`"L3H5"`) for
    /// [`PatchTarget::HeadsByPos`].
    pub row_labels: Vec<String>,
    /// One label per column: the position (`"12"`), or the head (`"H5"`) for
    /// [`PatchTarget::HeadsAllPos`].
    pub col_labels: Vec<String>,
    /// The metric on the clean run.
    #[serde(rename = "clean_diff")]
    pub clean: f32,
    /// The metric on the corrupted run.
    #[serde(rename = "corrupt_diff")]
    pub corrupted: f32,
    /// Wall time of the sweep.
    pub seconds: f64,
    /// Block evaluations of the sweep, in full forwards (layers × positions × batch).
    pub forward_equivalents: f64,
    /// How many full forwards the one-forward-per-cell method runs.
    pub naive_forwards: usize,
}

/// A grid cell `(row, col)` and the metric its patched run scored.
type CellMetric = ((usize, usize), f32);

impl PatchGrid {
    /// The grid as a heatmap; `col_labels` (e.g. `"Peb_26"`) replace the numeric columns.
    pub fn figure(&self, title: &str, col_labels: Option<Vec<String>>) -> crate::viz::Figure {
        let (x, y) = match self.target {
            PatchTarget::K | PatchTarget::V => ("KV head", "Layer"),
            t if t.by_head() => ("Head", "Layer"),
            PatchTarget::HeadsByPos => ("Position", "Head"),
            _ => ("Position", "Layer"),
        };
        crate::viz::Figure::heatmap(
            self.values.clone(),
            col_labels.unwrap_or_else(|| self.col_labels.clone()),
            self.row_labels.clone(),
            title,
        )
        .axes(x, y)
    }

    /// The `k` heads with the largest score (`descending`) or the most negative (`!descending`),
    /// as `(layer, head)`, for a grid by layer × head ([`PatchTarget::HeadsAllPos`], as path
    /// patching's grids are).
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a grid of another target.
    pub fn top_heads(&self, k: usize, descending: bool) -> Result<Vec<(usize, usize)>> {
        if !self.target.by_head() {
            return Err(LensError::Unsupported {
                what: format!("top_heads of a {} grid", self.target.name()),
                fix: "it reads layer x head grids (PatchTarget::HeadsAllPos, path patching); use strongest() for others".into(),
            });
        }
        let mut cells = self.cells();
        cells.sort_by(|a, b| {
            if descending {
                b.2.total_cmp(&a.2)
            } else {
                a.2.total_cmp(&b.2)
            }
        });
        Ok(cells.into_iter().take(k).map(|(l, h, _)| (l, h)).collect())
    }

    /// Every cell as `(row, col, score)`.
    fn cells(&self) -> Vec<(usize, usize, f32)> {
        self.values
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, &v)| (r, c, v)))
            .collect()
    }

    /// The `k` cells with the largest absolute score: `(row label, col label, score)`.
    pub fn strongest(&self, k: usize) -> Vec<(String, String, f32)> {
        let mut cells = self.cells();
        cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        cells
            .into_iter()
            .take(k)
            .map(|(r, c, v)| (self.row_labels[r].clone(), self.col_labels[c].clone(), v))
            .collect()
    }

    /// Two lines a reader wants under the figure: the five strongest cells (positions named by
    /// `labels`, e.g. [`HookedTransformer::position_labels`], where given) and the sweep's cost
    /// against one forward per cell.
    pub fn summary(&self, labels: Option<&[String]>) -> String {
        let name = |col: &str| -> String {
            col.parse::<usize>()
                .ok()
                .and_then(|i| labels.and_then(|l| l.get(i)))
                .map_or_else(|| col.to_string(), String::clone)
        };
        let strongest: Vec<String> = self
            .strongest(5)
            .iter()
            .map(|(row, col, v)| format!("layer {row} at {}: {v:+.2}", name(col)))
            .collect();
        format!(
            "strongest cells: {}\nsweep {:.1} s, {:.0} forward-equivalents instead of {} (exact: tests hold it equal to one forward per cell)",
            strongest.join("; "),
            self.seconds,
            self.forward_equivalents,
            self.naive_forwards
        )
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
    clean: ActivationCache,
    corrupt: ActivationCache,
    metric: Metric,
    clean_value: f32,
    corrupt_value: f32,
    /// Hooks applied to every run: both cached runs and every patched one.
    hooks: Option<SharedHooks>,
    /// Show progress on stderr.
    pub progress: bool,
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

/// Errors unless the clean and corrupted prompts line up token for token, as patching one
/// into the other needs.
///
/// # Errors
/// [`LensError::Mismatch`] naming both prompts' lengths when the batches or lengths differ.
pub(crate) fn check_pair(clean: &Tokens, corrupt: &Tokens) -> Result<()> {
    if clean.batch() != corrupt.batch() || clean.lengths() != corrupt.lengths() {
        return Err(LensError::mismatch(
            "clean and corrupted prompts",
            format!(
                "they must have the same number of tokens (clean {:?}, corrupted {:?}); \
                 pick corruptions that keep the token count",
                clean.lengths(),
                corrupt.lengths()
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
        Patcher::build(model, clean, corrupt, metric, None)
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
        Patcher::build(
            model,
            clean,
            corrupt,
            metric,
            Some(Rc::new(RefCell::new(hooks))),
        )
    }

    fn build(
        model: &Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric,
        hooks: Option<SharedHooks>,
    ) -> Result<Self> {
        check_pair(clean, corrupt)?;
        let f = || Some(HookFilter::Predicate(Box::new(needed)));
        let run = |tokens: &Tokens| -> Result<(Tensor, ActivationCache)> {
            match &hooks {
                Some(h) => {
                    let mut h = h.borrow_mut();
                    model.run_with_hooks_and_cache(tokens, &mut h, f(), LogitsAt::Last)
                }
                None => {
                    let (logits, cache) = model.run_with_cache(tokens, f())?;
                    Ok((model.gather_last(&logits, tokens)?, cache))
                }
            }
        };
        let (cl, clean_cache) = run(clean)?;
        let (co, corrupt_cache) = run(corrupt)?;
        let clean_value = metric(&cl)?;
        let corrupt_value = metric(&co)?;
        Ok(Patcher {
            model: Arc::clone(model),
            corrupt_tokens: corrupt.clone(),
            clean: clean_cache,
            corrupt: corrupt_cache,
            metric,
            clean_value,
            corrupt_value,
            hooks,
            progress: true,
        })
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
    ) -> Result<Self> {
        Patcher::build(model, clean, corrupt, metric, hooks)
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

/// A grid's labels: rows are layers, or `L{l}H{h}` heads for [`PatchTarget::HeadsByPos`];
/// columns are positions, or `H{h}` heads for [`PatchTarget::HeadsAllPos`].
pub(crate) fn grid_labels(
    cfg: &crate::engine::config::ModelConfig,
    target: PatchTarget,
    rows: usize,
    cols: usize,
) -> (Vec<String>, Vec<String>) {
    let row_labels = match target {
        PatchTarget::HeadsByPos => (0..cfg.n_layers)
            .flat_map(|l| (0..cfg.n_heads).map(move |h| format!("L{l}H{h}")))
            .collect(),
        _ => (0..rows).map(|l| l.to_string()).collect(),
    };
    let col_labels = match target {
        t if t.by_head() => (0..cols).map(|h| format!("H{h}")).collect(),
        _ => (0..cols).map(|p| p.to_string()).collect(),
    };
    (row_labels, col_labels)
}
