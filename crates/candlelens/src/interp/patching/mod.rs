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

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::block::PastKv;
use crate::engine::cache::ActivationCache;
use crate::engine::config::Positional;
use crate::engine::hooks::{HookFilter, HookPoint, Hooks, NoHooks};
use crate::engine::model::HookedTransformer;
use crate::engine::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::normalise;

/// A metric of final-position logits `[batch, d_vocab]` (e.g. mean logit difference).
pub type Metric<'a> = Box<dyn Fn(&Tensor) -> Result<f32> + 'a>;

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
}

impl PatchTarget {
    /// Parses `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`, `heads`,
    /// `heads_by_pos`.
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
            other => {
                return Err(LensError::UnknownChoice {
                    what: "patch target".into(),
                    given: other.to_string(),
                    choices:
                        "resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads or heads_by_pos"
                            .into(),
                })
            }
        })
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
        }
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
            PatchTarget::HeadsAllPos => ("Head", "Layer"),
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

    /// The `k` cells with the largest absolute score: `(row label, col label, score)`.
    pub fn strongest(&self, k: usize) -> Vec<(String, String, f32)> {
        let mut cells: Vec<(usize, usize, f32)> = self
            .values
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, &v)| (r, c, v)))
            .collect();
        cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        cells
            .into_iter()
            .take(k)
            .map(|(r, c, v)| (self.row_labels[r].clone(), self.col_labels[c].clone(), v))
            .collect()
    }
}

/// Where a patched run enters the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// As the residual entering block `layer` (`layer == n_layers`: straight to the unembedding).
    Pre,
    /// As `resid_mid` of block `layer` (sequential blocks only).
    Mid,
}

/// One patched run: the residual stream from `start` on, `[batch, seq - start, d_model]`.
struct Injection {
    layer: usize,
    stage: Stage,
    start: usize,
    rows: Tensor,
    cell: (usize, usize),
}

/// Everything a sweep needs from the clean and corrupted runs.
pub struct Patcher<'m> {
    model: &'m HookedTransformer,
    corrupt_tokens: Tokens,
    clean: ActivationCache,
    corrupt: ActivationCache,
    metric: Metric<'m>,
    clean_value: f32,
    corrupt_value: f32,
    /// Show progress on stderr.
    pub progress: bool,
}

fn needed(hp: &HookPoint) -> bool {
    matches!(
        hp,
        HookPoint::ResidPre(_)
            | HookPoint::ResidMid(_)
            | HookPoint::ResidPost(_)
            | HookPoint::AttnOut(_)
            | HookPoint::MlpOut(_)
            | HookPoint::Z(_)
            | HookPoint::K(_)
            | HookPoint::RotK(_)
            | HookPoint::V(_)
    )
}

impl<'m> Patcher<'m> {
    /// Runs the clean and corrupted prompts once each and caches what sweeps read.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the two batches differ in shape.
    pub fn new(
        model: &'m HookedTransformer,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: Metric<'m>,
    ) -> Result<Self> {
        if clean.batch() != corrupt.batch() || clean.lengths() != corrupt.lengths() {
            return Err(LensError::Mismatch {
                what: "clean and corrupted prompts".into(),
                detail: format!(
                    "they must have the same number of tokens (clean {:?}, corrupted {:?}); \
                     pick corruptions that keep the token count",
                    clean.lengths(),
                    corrupt.lengths()
                ),
            });
        }
        let f = || Some(HookFilter::Predicate(Box::new(needed)));
        let (cl, clean_cache) = model.run_with_cache(clean, f())?;
        let (co, corrupt_cache) = model.run_with_cache(corrupt, f())?;
        let clean_value = metric(&model.gather_last(&cl, clean)?)?;
        let corrupt_value = metric(&model.gather_last(&co, corrupt)?)?;
        Ok(Patcher {
            model,
            corrupt_tokens: corrupt.clone(),
            clean: clean_cache,
            corrupt: corrupt_cache,
            metric,
            clean_value,
            corrupt_value,
            progress: true,
        })
    }

    /// The metric on the clean run.
    pub fn clean_metric(&self) -> f32 {
        self.clean_value
    }

    /// The metric on the corrupted run.
    pub fn corrupted_metric(&self) -> f32 {
        self.corrupt_value
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

    /// `base[:, start..]` with position `start` replaced by `value [batch, d_model]`.
    fn rows_with(&self, base: &Tensor, start: usize, value: &Tensor) -> Result<Tensor> {
        let seq = base.dim(1)?;
        let first = value.unsqueeze(1)?;
        if start + 1 == seq {
            return Ok(first);
        }
        Ok(Tensor::cat(
            &[&first, &base.narrow(1, start + 1, seq - start - 1)?],
            1,
        )?)
    }

    /// The attention output that `z [batch, pos, head, d_head]` produces (post-norm included).
    fn attn_out_from_z(&self, l: usize, z: &Tensor) -> Result<Tensor> {
        self.model.block(l)?.attn_out_from_z(z)
    }

    /// The injection that puts `attn_out` values `new [batch, n, d_model]` (positions
    /// `start..start + n`) into the corrupted run at layer `l`; later positions keep the
    /// corrupted residual.
    fn attn_injection(
        &self,
        l: usize,
        start: usize,
        new: &Tensor,
        cell: (usize, usize),
    ) -> Result<Injection> {
        let seq = self.corrupt_tokens.max_len();
        let n = new.dim(1)?;
        let co_attn = self
            .corrupt
            .at(HookPoint::AttnOut(l))?
            .narrow(1, start, n)?;
        let delta = (new - co_attn)?;
        let (layer, stage, base) = if self.model.cfg.parallel_attn_mlp {
            (l + 1, Stage::Pre, self.corrupt.at(HookPoint::ResidPost(l))?)
        } else {
            (l, Stage::Mid, self.corrupt.at(HookPoint::ResidMid(l))?)
        };
        let head = (base.narrow(1, start, n)? + delta)?;
        let rows = if start + n == seq {
            head
        } else {
            Tensor::cat(&[&head, &base.narrow(1, start + n, seq - start - n)?], 1)?
        };
        Ok(Injection {
            layer,
            stage,
            start,
            rows,
            cell,
        })
    }

    /// Builds the injections of a sweep; cells that are no-ops are left out (score 0).
    fn injections(&self, target: PatchTarget) -> Result<(Vec<Injection>, usize, usize)> {
        let cfg = &self.model.cfg;
        let (n_layers, seq) = (cfg.n_layers, self.corrupt_tokens.max_len());
        let mut out = Vec::new();
        let same = |a: &Tensor, b: &Tensor| -> Result<bool> {
            Ok((a - b)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?
                == 0.0)
        };
        match target {
            PatchTarget::ResidPre
            | PatchTarget::ResidMid
            | PatchTarget::ResidPost
            | PatchTarget::MlpOut
            | PatchTarget::AttnOut => {
                if target == PatchTarget::ResidMid && cfg.parallel_attn_mlp {
                    return Err(LensError::Unsupported {
                        what: "resid_mid".into(),
                        fix: "this model runs attention and MLP in parallel, so it has no resid_mid; patch resid_pre or resid_post".into(),
                    });
                }
                for l in 0..n_layers {
                    for p in 0..seq {
                        let hp = match target {
                            PatchTarget::ResidPre => HookPoint::ResidPre(l),
                            PatchTarget::ResidMid => HookPoint::ResidMid(l),
                            PatchTarget::ResidPost => HookPoint::ResidPost(l),
                            PatchTarget::AttnOut => HookPoint::AttnOut(l),
                            _ => HookPoint::MlpOut(l),
                        };
                        let clean_v = self.act(true, hp)?.i((.., p))?;
                        let corrupt_v = self.act(false, hp)?.i((.., p))?;
                        if same(&clean_v, &corrupt_v)? {
                            continue;
                        }
                        // the clean value enters the residual stream as it is, at this stage
                        let resid_at = |layer: usize, stage: Stage| -> Result<Injection> {
                            Ok(Injection {
                                layer,
                                stage,
                                start: p,
                                rows: self.rows_with(self.corrupt.at(hp)?, p, &clean_v)?,
                                cell: (l, p),
                            })
                        };
                        let inj = match target {
                            PatchTarget::ResidPre => resid_at(l, Stage::Pre)?,
                            PatchTarget::ResidMid => resid_at(l, Stage::Mid)?,
                            PatchTarget::ResidPost => resid_at(l + 1, Stage::Pre)?,
                            PatchTarget::AttnOut => {
                                self.attn_injection(l, p, &clean_v.unsqueeze(1)?, (l, p))?
                            }
                            _ => {
                                let post = self.corrupt.at(HookPoint::ResidPost(l))?;
                                let value = ((post.i((.., p))? - &corrupt_v)? + &clean_v)?;
                                Injection {
                                    layer: l + 1,
                                    stage: Stage::Pre,
                                    start: p,
                                    rows: self.rows_with(post, p, &value)?,
                                    cell: (l, p),
                                }
                            }
                        };
                        out.push(inj);
                    }
                }
                Ok((out, n_layers, seq))
            }
            PatchTarget::HeadsAllPos => {
                for l in 0..n_layers {
                    let cz = self.clean.at(HookPoint::Z(l))?;
                    let kz = self.corrupt.at(HookPoint::Z(l))?;
                    for h in 0..cfg.n_heads {
                        // [batch, pos, d_head] -> largest difference per position
                        let diff = (cz.i((.., .., h))? - kz.i((.., .., h))?)?
                            .abs()?
                            .max(2)?
                            .max(0)?
                            .to_dtype(DType::F32)?
                            .to_vec1::<f32>()?;
                        let Some(start) = diff.iter().position(|&d| d > 0.0) else {
                            continue;
                        };
                        let z = kz.narrow(1, start, seq - start)?;
                        let z = z.slice_assign(
                            &[0..z.dim(0)?, 0..seq - start, h..h + 1, 0..cfg.d_head],
                            &cz.narrow(1, start, seq - start)?.narrow(2, h, 1)?,
                        )?;
                        let new = self.attn_out_from_z(l, &z)?;
                        out.push(self.attn_injection(l, start, &new, (l, h))?);
                    }
                }
                Ok((out, n_layers, cfg.n_heads))
            }
            PatchTarget::HeadsByPos => {
                for l in 0..n_layers {
                    let cz = self.clean.at(HookPoint::Z(l))?;
                    let kz = self.corrupt.at(HookPoint::Z(l))?;
                    for h in 0..cfg.n_heads {
                        for p in 0..seq {
                            let c = cz.i((.., p, h))?;
                            let k = kz.i((.., p, h))?;
                            if same(&c, &k)? {
                                continue;
                            }
                            let z = kz.narrow(1, p, 1)?;
                            let z = z.slice_assign(
                                &[0..z.dim(0)?, 0..1, h..h + 1, 0..cfg.d_head],
                                &cz.narrow(1, p, 1)?.narrow(2, h, 1)?,
                            )?;
                            let new = self.attn_out_from_z(l, &z)?;
                            let inj = self.attn_injection(l, p, &new, (l * cfg.n_heads + h, p))?;
                            out.push(inj);
                        }
                    }
                }
                Ok((out, n_layers * cfg.n_heads, seq))
            }
        }
    }

    /// Keys and values of the corrupted run at layer `l` for positions `..start`.
    fn past(&self, l: usize, start: usize) -> Result<Option<PastKv>> {
        if start == 0 {
            return Ok(None);
        }
        let k = match self.model.cfg.positional {
            Positional::Rotary(_) => self.corrupt.at(HookPoint::RotK(l))?,
            Positional::Learned => self.corrupt.at(HookPoint::K(l))?,
        };
        let v = self.corrupt.at(HookPoint::V(l))?;
        Ok(Some(PastKv {
            k: k.narrow(1, 0, start)?.contiguous()?,
            v: v.narrow(1, 0, start)?.contiguous()?,
        }))
    }

    /// Runs every injection starting at `start` in one growing batch; returns each cell's
    /// metric and the block evaluations spent (in position-rows).
    fn run_group(&self, start: usize, mut injs: Vec<Injection>) -> Result<(Vec<CellMetric>, f64)> {
        let m = self.model;
        let n_layers = m.cfg.n_layers;
        let b = self.corrupt_tokens.batch();
        let seq = self.corrupt_tokens.max_len();
        let s = seq - start;
        let ctx = m.context(seq)?;
        injs.sort_by_key(|i| (i.layer, i.stage == Stage::Mid));
        let mut cells = Vec::new();
        let mut x: Option<Tensor> = None;
        let mut work = 0f64;
        let mut pending = injs.into_iter().peekable();
        let join = |x: Option<Tensor>, rows: Tensor| -> Result<Tensor> {
            Ok(match x {
                Some(x) => Tensor::cat(&[&x, &rows], 0)?,
                None => rows,
            })
        };
        for l in 0..=n_layers {
            while let Some(inj) = pending.next_if(|i| i.layer == l && i.stage == Stage::Pre) {
                cells.push(inj.cell);
                x = Some(join(x, inj.rows)?);
            }
            if l == n_layers {
                break;
            }
            let has_mid = pending
                .peek()
                .is_some_and(|i| i.layer == l && i.stage == Stage::Mid);
            if x.is_none() && !has_mid {
                continue;
            }
            let mut mid = None;
            if let Some(xc) = x.take() {
                let runs = xc.dim(0)? / b;
                let past = self
                    .past(l, start)?
                    .map(|p| -> Result<PastKv> {
                        Ok(PastKv {
                            k: p.k.repeat((runs, 1, 1, 1))?,
                            v: p.v.repeat((runs, 1, 1, 1))?,
                        })
                    })
                    .transpose()?;
                work += (runs * b * s) as f64;
                let (attn_out, n1, _) =
                    m.block(l)?
                        .attn_half(&xc, &ctx, start, past.as_ref(), &mut NoHooks)?;
                if m.cfg.parallel_attn_mlp {
                    let mlp_out = m.block(l)?.mlp(&n1, &mut NoHooks)?;
                    x = Some(((xc + attn_out)? + mlp_out)?);
                    continue;
                }
                mid = Some((xc + attn_out)?);
            }
            while let Some(inj) = pending.next_if(|i| i.layer == l && i.stage == Stage::Mid) {
                cells.push(inj.cell);
                mid = Some(join(mid, inj.rows)?);
            }
            if let Some(mid) = mid {
                x = Some(m.block(l)?.mlp_half(mid, &mut NoHooks)?);
            }
        }
        let Some(x) = x else {
            return Ok((Vec::new(), work));
        };
        // each prompt's final position, in suffix coordinates; prompts that end before the
        // patched position keep their corrupted final residual
        let runs = x.dim(0)? / b;
        let last = self.corrupt_tokens.last_positions();
        let final_corrupt = self.corrupt.at(HookPoint::ResidPost(n_layers - 1))?;
        let mut finals = Vec::with_capacity(runs * b);
        for r in 0..runs {
            for (i, &lp) in last.iter().enumerate() {
                finals.push(if lp >= start {
                    x.i((r * b + i, lp - start))?
                } else {
                    final_corrupt.i((i, lp))?
                });
            }
        }
        let logits = m.unembed_residual(&Tensor::stack(&finals, 0)?)?;
        let mut out = Vec::with_capacity(runs);
        for (r, cell) in cells.into_iter().enumerate() {
            out.push((cell, (self.metric)(&logits.narrow(0, r * b, b)?)?));
        }
        Ok((out, work))
    }

    /// The fast sweep over every layer and position (or head) of `target`.
    ///
    /// # Errors
    /// Tensor errors, metric errors.
    pub fn sweep(&self, target: PatchTarget) -> Result<PatchGrid> {
        let t0 = Instant::now();
        let (injs, rows, cols) = self.injections(target)?;
        let mut groups: BTreeMap<usize, Vec<Injection>> = BTreeMap::new();
        for inj in injs {
            groups.entry(inj.start).or_default().push(inj);
        }
        let mut values = vec![vec![0f32; cols]; rows];
        let mut work = 0f64;
        let bar = crate::notebook::progress::Progress::new(
            &format!("patching {}", target.name()),
            groups.len() as u64,
            self.progress,
        );
        for (start, injs) in groups {
            let (res, w) = self.run_group(start, injs)?;
            work += w;
            for ((r, c), v) in res {
                values[r][c] = self.score(v);
            }
            bar.inc();
        }
        bar.finish();
        let cfg = &self.model.cfg;
        let seq = self.corrupt_tokens.max_len();
        let full = (cfg.n_layers * seq * self.corrupt_tokens.batch()) as f64;
        let mut grid = self.grid(target, values);
        grid.seconds = t0.elapsed().as_secs_f64();
        grid.forward_equivalents = work / full;
        Ok(grid)
    }

    /// TransformerLens's "every block": resid_pre, attn_out and mlp_out grids.
    ///
    /// # Errors
    /// As [`Self::sweep`].
    pub fn every_block(&self) -> Result<[PatchGrid; 3]> {
        Ok([
            self.sweep(PatchTarget::ResidPre)?,
            self.sweep(PatchTarget::AttnOut)?,
            self.sweep(PatchTarget::MlpOut)?,
        ])
    }

    /// One cell the naive way: a full forward of the corrupted prompt with a hook that puts in
    /// the clean activation. `row`/`col` index the grid as [`Self::sweep`] lays it out.
    /// Returns the normalised score.
    ///
    /// # Errors
    /// Hook and tensor errors.
    pub fn naive(&self, target: PatchTarget, row: usize, col: usize) -> Result<f32> {
        let cfg = &self.model.cfg;
        let (hp, pos, head) = match target {
            PatchTarget::ResidPre => (HookPoint::ResidPre(row), Some(col), None),
            PatchTarget::ResidMid => (HookPoint::ResidMid(row), Some(col), None),
            PatchTarget::ResidPost => (HookPoint::ResidPost(row), Some(col), None),
            PatchTarget::AttnOut => (HookPoint::AttnOut(row), Some(col), None),
            PatchTarget::MlpOut => (HookPoint::MlpOut(row), Some(col), None),
            PatchTarget::HeadsAllPos => (HookPoint::Z(row), None, Some(col)),
            PatchTarget::HeadsByPos => (
                HookPoint::Z(row / cfg.n_heads),
                Some(col),
                Some(row % cfg.n_heads),
            ),
        };
        let clean = self.clean.at(hp)?.clone();
        let mut hooks = Hooks::new();
        hooks.add_filter(hp.into(), move |act, _| {
            let dims = act.dims().to_vec();
            let mut ranges: Vec<std::ops::Range<usize>> = dims.iter().map(|&d| 0..d).collect();
            if let Some(p) = pos {
                ranges[1] = p..p + 1;
            }
            if let Some(h) = head {
                ranges[2] = h..h + 1;
            }
            let mut src = clean.clone();
            for (axis, r) in ranges.iter().enumerate() {
                src = src.narrow(axis, r.start, r.end - r.start)?;
            }
            Ok(Some(act.slice_assign(&ranges, &src)?))
        });
        let logits = self
            .model
            .run_with_hooks(&self.corrupt_tokens, &mut hooks)?;
        let m = (self.metric)(&self.model.gather_last(&logits, &self.corrupt_tokens)?)?;
        Ok(self.score(m))
    }

    /// The whole grid the naive way (one full forward per cell).
    ///
    /// # Errors
    /// As [`Self::naive`].
    pub fn naive_sweep(&self, target: PatchTarget) -> Result<PatchGrid> {
        let t0 = Instant::now();
        let cfg = &self.model.cfg;
        let seq = self.corrupt_tokens.max_len();
        let (rows, cols) = match target {
            PatchTarget::HeadsAllPos => (cfg.n_layers, cfg.n_heads),
            PatchTarget::HeadsByPos => (cfg.n_layers * cfg.n_heads, seq),
            _ => (cfg.n_layers, seq),
        };
        let bar = crate::notebook::progress::Progress::new(
            &format!("naive patching {}", target.name()),
            (rows * cols) as u64,
            self.progress,
        );
        let mut values = vec![vec![0f32; cols]; rows];
        for (r, row) in values.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = self.naive(target, r, c)?;
                bar.inc();
            }
        }
        bar.finish();
        let mut grid = self.grid(target, values);
        grid.seconds = t0.elapsed().as_secs_f64();
        grid.forward_equivalents = (rows * cols) as f64;
        Ok(grid)
    }

    /// A grid of scores with its labels (rows: layers, or `L{l}H{h}` heads; columns: positions,
    /// or `H{h}` heads); timing and work are left for the caller to fill in.
    fn grid(&self, target: PatchTarget, values: Vec<Vec<f32>>) -> PatchGrid {
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        let cfg = &self.model.cfg;
        let row_labels = match target {
            PatchTarget::HeadsByPos => (0..cfg.n_layers)
                .flat_map(|l| (0..cfg.n_heads).map(move |h| format!("L{l}H{h}")))
                .collect(),
            _ => (0..rows).map(|l| l.to_string()).collect(),
        };
        let col_labels = match target {
            PatchTarget::HeadsAllPos => (0..cols).map(|h| format!("H{h}")).collect(),
            _ => (0..cols).map(|p| p.to_string()).collect(),
        };
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
