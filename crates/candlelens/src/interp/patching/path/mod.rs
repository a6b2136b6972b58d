//! Path patching (Wang et al. 2022, the IOI paper): how much of the clean behaviour comes back
//! when the clean output of some *sender* heads reaches chosen *receivers* — and nothing else
//! does.
//!
//! Activation patching a head puts its clean output into the corrupted run and lets every later
//! component react. Path patching restricts the effect to the paths from the senders into the
//! receivers:
//!
//! 1. run the corrupted prompt with the senders' `hook_z` set to the clean run's and every other
//!    head's `hook_z` *frozen* at the corrupted run's (MLPs recompute, so paths through MLPs
//!    count — as in the paper; [`PathPatcher::freeze_mlps`] freezes them too);
//! 2. the receivers' inputs are read off that run: the residual stream at the unembedding
//!    ([`Receivers::Logits`]), or the queries, keys or values of receiver heads
//!    ([`Receivers::Heads`]);
//! 3. for head receivers, run the corrupted prompt once more with only those inputs replaced,
//!    everything downstream free, and measure.
//!
//! Scores are normalised like the patching sweep's, `(patched − corrupted) / (clean −
//! corrupted)`: 1 means the path carries the whole clean behaviour.
//!
//! Exactly, with less work than the hooks-based recipe (kept as [`PathPatcher::naive`], the
//! tests' reference): step 1 starts at the senders' layer from the corrupted run's cached
//! residual stream, and since every head is frozen no information moves between positions —
//! so for logit receivers only each prompt's final position is computed; every sender set of a
//! grid runs in one growing batch, joining at its layer.
//!
//! Receiver keys and values are patched per query head: under grouped-query attention the
//! other query heads of the group keep theirs (TransformerLens's `ungroup_grouped_query_attention`).

mod naive;
mod receivers;

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;

use crate::engine::block::{Forward, Heads, QkvInputs, Stage};
use crate::engine::hooks::HookPoint;
use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

use super::{PatchGrid, PatchTarget, Patcher};

use receivers::check_head;
pub use receivers::{Head, Receiver, Receivers};

/// Path patching on a clean / corrupted pair: [`Self::patch`] for one set of senders,
/// [`Self::grid`] for every head as the sender, by layer × head.
///
/// Built on a [`Patcher`] (its cached runs); like it, it owns what it holds and lives across
/// notebook cells.
pub struct PathPatcher {
    patcher: Patcher,
    /// Freeze the MLPs at the corrupted run as well, so that only the direct paths (through the
    /// residual stream alone) count. Off by default, as in the IOI paper.
    pub freeze_mlps: bool,
    /// Most residual rows (`runs × prompts × positions`) computed at once.
    pub max_rows: usize,
}

/// The residual rows a path-patched run computes: the positions the metric reads (logit
/// receivers; attention is frozen, so each row computes on its own), or every position from the first one a sender changes (head receivers; the
/// earlier ones are the corrupted run's).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// The rows the metric reads (`[batch, k, ·]`).
    Read,
    From(usize),
}

impl PathPatcher {
    /// Runs the clean and corrupted prompts and caches what path patching reads.
    ///
    /// # Errors
    /// As [`Patcher::new`].
    pub fn new(
        model: &std::sync::Arc<HookedTransformer>,
        clean: &Tokens,
        corrupt: &Tokens,
        metric: super::Metric,
    ) -> Result<Self> {
        Ok(Self::from_patcher(Patcher::new(
            model, clean, corrupt, metric,
        )?))
    }

    /// Path patching on the runs a [`Patcher`] already holds.
    pub fn from_patcher(mut patcher: Patcher) -> Self {
        patcher.progress = false;
        PathPatcher {
            patcher,
            freeze_mlps: false,
            max_rows: 8192,
        }
    }

    /// The underlying patcher (its caches, metric values and the activation-patching sweep).
    pub fn patcher(&self) -> &Patcher {
        &self.patcher
    }

    fn check_senders(&self, senders: &[Head]) -> Result<()> {
        let cfg = &self.patcher.model.cfg;
        if senders.is_empty() {
            return Err(LensError::Unsupported {
                what: "path patching without senders".into(),
                fix: "name at least one sender head (layer, head)".into(),
            });
        }
        for &s in senders {
            check_head(s, cfg.n_layers, cfg.n_heads)?;
        }
        Ok(())
    }

    /// The normalised score of the paths from `senders` (their clean `hook_z` at every
    /// position) to `receivers`.
    ///
    /// # Errors
    /// [`LensError::NoEffect`] if the corruption does not move the metric; out-of-range heads
    /// or layers; [`LensError::BadParameter`] when no sender is in a layer before the last
    /// receiver's (no path exists: a score would be a number for nothing); tensor and metric
    /// errors.
    pub fn patch(&self, senders: &[Head], receivers: &Receivers) -> Result<f32> {
        self.patcher.check_effect()?;
        self.patcher.check_no_hooks("path patching")?;
        self.check_senders(senders)?;
        let cfg = &self.patcher.model.cfg;
        receivers.check(cfg.n_layers, cfg.n_heads)?;
        let last = receivers.last_layer(cfg.n_layers);
        if senders.iter().all(|s| s.0 >= last) {
            let list: Vec<String> = senders.iter().map(|s| format!("{}.{}", s.0, s.1)).collect();
            return Err(LensError::bad_parameter(
                "senders",
                list.join(" "),
                &format!("no path leads from these heads to receivers in layers up to {last}: a sender must sit in an earlier layer than a receiver"),
            ));
        }
        let (m, _) = self.run_all(&[senders.to_vec()], receivers)?;
        Ok(self.patcher.score(m[0]))
    }

    /// Every head on its own as the sender: a layer × head grid of normalised scores (heads at
    /// or after the last receiver's layer have no path to it and score 0).
    ///
    /// # Errors
    /// As [`Self::patch`].
    pub fn grid(&self, receivers: &Receivers) -> Result<PatchGrid> {
        self.patcher.check_effect()?;
        self.patcher.check_no_hooks("path patching")?;
        let cfg = &self.patcher.model.cfg;
        receivers.check(cfg.n_layers, cfg.n_heads)?;
        let t0 = Instant::now();
        let end = receivers.last_layer(cfg.n_layers);
        let runs: Vec<Vec<Head>> = (0..end.min(cfg.n_layers))
            .flat_map(|l| (0..cfg.n_heads).map(move |h| vec![(l, h)]))
            .collect();
        let (metrics, work) = self.run_all(&runs, receivers)?;
        let mut values = vec![vec![0f32; cfg.n_heads]; cfg.n_layers];
        for (run, m) in runs.iter().zip(metrics) {
            let (l, h) = run[0];
            values[l][h] = self.patcher.score(m);
        }
        let mut grid = self.patcher.grid(PatchTarget::HeadsAllPos, values);
        grid.seconds = t0.elapsed().as_secs_f64();
        grid.forward_equivalents = work;
        grid.naive_forwards = 2 * runs.len();
        Ok(grid)
    }

    /// The raw metric of each sender set's path-patched run, and the block evaluations spent
    /// in full forwards.
    fn run_all(&self, runs: &[Vec<Head>], receivers: &Receivers) -> Result<(Vec<f32>, f64)> {
        let p = &self.patcher;
        let (b, seq) = (p.corrupt_tokens.batch(), p.corrupt_tokens.max_len());
        let per_run = b * match receivers {
            Receivers::Logits => 1,
            Receivers::Heads(_) => seq,
        };
        let chunk = (self.max_rows / per_run.max(1)).max(1);
        // runs sorted by the layer they start at, so that each chunk's batch grows
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by_key(|&i| runs[i].iter().map(|s| s.0).min().unwrap_or(0));
        let mut out = vec![0f32; runs.len()];
        let mut work = 0f64;
        for idx in order.chunks(chunk) {
            let group: Vec<&Vec<Head>> = idx.iter().map(|&i| &runs[i]).collect();
            let rows = match receivers {
                Receivers::Logits => Rows::Read,
                Receivers::Heads(_) => Rows::From(self.first_changed(&group)?),
            };
            let (metrics, w) = self.run_chunk(&group, receivers, rows)?;
            work += w;
            for (&i, m) in idx.iter().zip(metrics) {
                out[i] = m;
            }
        }
        let full = (self.patcher.model.cfg.n_layers * seq * b) as f64;
        Ok((out, work / full))
    }

    /// The first position at which some sender's clean `hook_z` differs from the corrupted
    /// one (the sequence length if none does).
    fn first_changed(&self, runs: &[&Vec<Head>]) -> Result<usize> {
        let p = &self.patcher;
        let seq = p.corrupt_tokens.max_len();
        let mut first = seq;
        for run in runs {
            for &(l, h) in run.iter() {
                let (cz, kz) = (p.clean.at(HookPoint::Z(l))?, p.corrupt.at(HookPoint::Z(l))?);
                if let Some(pos) = super::sweep::first_difference(cz, kz, h)? {
                    first = first.min(pos);
                }
            }
        }
        Ok(first)
    }

    /// An activation of the corrupted run at the rows a path-patched run computes:
    /// `[batch, k or pos, ·]` (k: the rows the metric reads).
    fn corrupt_rows(&self, hp: HookPoint, rows: Rows) -> Result<Tensor> {
        self.at_rows(self.patcher.corrupt.at(hp)?, rows)
    }

    /// The corrupted run's final residual at the rows the metric reads, `[batch · k,
    /// d_model]`.
    fn corrupt_finals(&self) -> Result<Tensor> {
        let p = &self.patcher;
        p.read.gather(
            p.corrupt
                .at(HookPoint::ResidPost(p.model.cfg.n_layers - 1))?,
        )
    }

    /// `t [batch, pos, ·]` at the rows a path-patched run computes: `[batch, k or pos, ·]` (k: the rows the metric reads).
    fn at_rows(&self, t: &Tensor, rows: Rows) -> Result<Tensor> {
        Ok(match rows {
            Rows::From(p0) => t.narrow(1, p0, t.dim(1)? - p0)?,
            Rows::Read => self.patcher.read.gather_rows(t)?,
        })
    }

    /// `hook_attn_out` of layer `l` with the `heads` given their clean `hook_z` (every other
    /// head frozen at the corrupted run's), at the rows computed.
    fn sender_attn_out(&self, l: usize, heads: &[usize], rows: Rows) -> Result<Tensor> {
        let p = &self.patcher;
        let cz = p.clean.at(HookPoint::Z(l))?;
        let mut z = p.corrupt.at(HookPoint::Z(l))?.clone();
        let dims = z.dims().to_vec();
        for &h in heads {
            z = z.slice_assign(
                &[0..dims[0], 0..dims[1], h..h + 1, 0..dims[3]],
                &cz.narrow(2, h, 1)?,
            )?;
        }
        // position by position: the rows of z give the rows of the output
        p.model.block(l)?.attn_out_from_z(&self.at_rows(&z, rows)?)
    }

    /// The metric of each run of one chunk, and the block evaluations spent (in position-rows).
    fn run_chunk(
        &self,
        runs: &[&Vec<Head>],
        receivers: &Receivers,
        rows: Rows,
    ) -> Result<(Vec<f32>, f64)> {
        let p = &self.patcher;
        let m = &*p.model;
        let n_layers = m.cfg.n_layers;
        let n_runs = runs.len();
        let starts: Vec<usize> = runs
            .iter()
            .map(|r| r.iter().map(|s| s.0).min().unwrap_or(0))
            .collect();
        let first_receiver = receivers.first_layer(n_layers);
        let end = receivers.last_layer(n_layers);
        let receiver_layers = receivers.by_layer(m.cfg.n_heads);
        // (no attention runs in step 1: the context's tables go unused)
        let ctx = m.context_for(&p.corrupt_tokens)?;
        // step 1: the senders' clean outputs along the frozen network, joining at their layer
        let mut x: Option<Tensor> = None;
        let mut joined = 0usize;
        let mut work = 0f64;
        // the residual each receiver layer reads, per run: [runs * batch, pos, d_model]
        let mut alt: BTreeMap<usize, Tensor> = BTreeMap::new();
        let lo = starts.iter().copied().min().unwrap_or(0);
        for l in lo..end {
            let mut newcomers = 0;
            while joined + newcomers < n_runs && starts[joined + newcomers] == l {
                newcomers += 1;
            }
            if newcomers > 0 {
                let base = self.corrupt_rows(HookPoint::ResidPre(l), rows)?;
                let add = base.repeat((newcomers, 1, 1))?;
                x = Some(match x {
                    Some(x) => Tensor::cat(&[&x, &add], 0)?,
                    None => add,
                });
                joined += newcomers;
            }
            let Some(xc) = x.take() else { continue };
            work += (xc.dim(0)? * xc.dim(1)?) as f64;
            // attention: frozen, except the senders at this layer
            let frozen = self.corrupt_rows(HookPoint::AttnOut(l), rows)?;
            let mut parts = Vec::with_capacity(joined);
            for run in &runs[..joined] {
                let heads: Vec<usize> = run.iter().filter(|s| s.0 == l).map(|s| s.1).collect();
                parts.push(if heads.is_empty() {
                    frozen.clone()
                } else {
                    self.sender_attn_out(l, &heads, rows)?
                });
            }
            // the block with its attention frozen at those values, its MLPs free or frozen
            let mut f = Forward::new(&ctx, 0, None);
            f.attn_out = Some(Tensor::cat(&parts, 0)?);
            if self.freeze_mlps {
                f.mlp_out = Some(
                    self.corrupt_rows(HookPoint::MlpOut(l), rows)?
                        .repeat((joined, 1, 1))?,
                );
            }
            let next = m.block(l)?.wire(Stage::Pre, xc, &mut f)?;
            if receiver_layers.contains_key(&(l + 1)) {
                // runs not yet joined still read the corrupted residual
                let rest = n_runs - joined;
                let full = if rest == 0 {
                    next.clone()
                } else {
                    let base = self.corrupt_rows(HookPoint::ResidPre(l + 1), rows)?;
                    Tensor::cat(&[&next, &base.repeat((rest, 1, 1))?], 0)?
                };
                alt.insert(l + 1, full);
            }
            x = Some(next);
        }
        let finals = match receivers {
            Receivers::Logits => match x {
                // [runs * batch, d_model]
                // [runs * batch * k, d_model]
                Some(x) => {
                    let rest = n_runs - joined;
                    let x = x.flatten(0, 1)?;
                    if rest == 0 {
                        x
                    } else {
                        let base = self.corrupt_finals()?;
                        Tensor::cat(&[&x, &base.repeat((rest, 1))?], 0)?
                    }
                }
                None => self.corrupt_finals()?.repeat((n_runs, 1))?,
            },
            Receivers::Heads(_) => {
                let p0 = match rows {
                    Rows::From(p0) => p0,
                    Rows::Read => 0,
                };
                let seq = p.corrupt_tokens.max_len();
                work += ((n_layers - first_receiver)
                    * n_runs
                    * p.corrupt_tokens.batch()
                    * seq.saturating_sub(p0)) as f64;
                self.receivers_run(n_runs, first_receiver, p0, &receiver_layers, &alt)?
            }
        };
        let logits = m.unembed_residual(&finals)?;
        Ok((p.read.per_run(&logits, n_runs, &*p.metric)?, work))
    }

    /// Step 3 for head receivers: the corrupted run from the first receiver layer and from
    /// position `p0` on (attending to the corrupted run's keys and values before it), with the
    /// receivers' inputs read from `alt`; each prompt's final residual `[runs * batch,
    /// d_model]`.
    fn receivers_run(
        &self,
        n_runs: usize,
        first: usize,
        p0: usize,
        receiver_layers: &BTreeMap<usize, Vec<QkvInputs>>,
        alt: &BTreeMap<usize, Tensor>,
    ) -> Result<Tensor> {
        let p = &self.patcher;
        let m = &*p.model;
        let seq = p.corrupt_tokens.max_len();
        if p0 >= seq {
            // no sender changes anything
            return Ok(self.corrupt_finals()?.repeat((n_runs, 1))?);
        }
        let ctx = m.context_for(&p.corrupt_tokens)?;
        let mut x = self
            .corrupt_rows(HookPoint::ResidPre(first), Rows::From(p0))?
            .repeat((n_runs, 1, 1))?;
        for l in first..m.cfg.n_layers {
            let block = m.block(l)?;
            let past = p.past(l, p0, n_runs)?;
            let mut f = Forward::new(&ctx, p0, past.as_ref());
            if let (Some(inputs), Some(alt)) = (receiver_layers.get(&l), alt.get(&l)) {
                f.heads = Heads::Mixed { alt, inputs };
            }
            // (receivers no sender reaches — all senders at or after their layer — run as usual)
            x = block.wire(Stage::Pre, x, &mut f)?;
        }
        p.finals(&x, p0)
    }
}
