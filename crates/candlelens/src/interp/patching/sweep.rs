//! The fast exact sweep: every cell of a target as an injection into the corrupted run's
//! residual stream, grouped by the position it starts at, each group run as one growing batch
//! from the first layer it touches (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::block::{Forward, Heads, PastKv, QkvInputs, Stage};
use crate::engine::config::Positional;
use crate::engine::hooks::{HookPoint, HookSink};
use crate::error::{LensError, Result};

use super::{CellMetric, PatchGrid, PatchTarget, Patcher};

/// One patched run: the residual stream from `start` on, `[batch, seq - start, d_model]`,
/// entering block `layer` at `stage` (`layer == n_layers`: straight to the unembedding).
struct Injection {
    layer: usize,
    stage: Stage,
    start: usize,
    rows: Tensor,
    cell: (usize, usize),
}

impl Patcher {
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
        let (joins, layer, stage) = self.model.block(l)?.kind().attn_joins(l);
        let base = self.corrupt.at(joins)?;
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
                target.check(cfg)?;
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
                        let Some(start) = first_difference(cz, kz, h)? else {
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
            PatchTarget::Q | PatchTarget::K | PatchTarget::V => {
                let ctx = self.model.context_for(&self.corrupt_tokens)?;
                let cols = if target == PatchTarget::Q {
                    cfg.n_heads
                } else {
                    cfg.n_kv_heads
                };
                let group = cfg.n_heads / cfg.n_kv_heads;
                for l in 0..n_layers {
                    let hp = match target {
                        PatchTarget::Q => HookPoint::Q(l),
                        PatchTarget::K => HookPoint::K(l),
                        _ => HookPoint::V(l),
                    };
                    let block = self.model.block(l)?;
                    // a head's clean q, k or v is what it computes from the clean residual
                    let corrupt_pre = self.corrupt.at(HookPoint::ResidPre(l))?;
                    let clean_pre = self.clean.at(HookPoint::ResidPre(l))?;
                    for col in 0..cols {
                        let Some(start) =
                            first_difference(self.clean.at(hp)?, self.corrupt.at(hp)?, col)?
                        else {
                            continue;
                        };
                        let mut inputs = vec![QkvInputs::default(); cfg.n_heads];
                        match target {
                            PatchTarget::Q => inputs[col].q = true,
                            PatchTarget::K => {
                                for i in &mut inputs[col * group..(col + 1) * group] {
                                    i.k = true;
                                }
                            }
                            _ => {
                                for i in &mut inputs[col * group..(col + 1) * group] {
                                    i.v = true;
                                }
                            }
                        }
                        let mut f = Forward::new(&ctx, 0, None);
                        f.heads = Heads::Mixed {
                            alt: clean_pre,
                            inputs: &inputs,
                        };
                        let new = block.attn_out(corrupt_pre, &mut f)?;
                        let new = new.narrow(1, start, seq - start)?;
                        out.push(self.attn_injection(l, start, &new, (l, col))?);
                    }
                }
                Ok((out, n_layers, cols))
            }
            PatchTarget::Pattern => {
                let group = cfg.n_heads / cfg.n_kv_heads;
                for l in 0..n_layers {
                    // [batch, head, q, k] -> per head [batch, q, head=1, k]
                    let cp = self.clean.at(HookPoint::Pattern(l))?;
                    let kp = self.corrupt.at(HookPoint::Pattern(l))?;
                    let kz = self.corrupt.at(HookPoint::Z(l))?;
                    let v = self.corrupt.at(HookPoint::V(l))?;
                    for h in 0..cfg.n_heads {
                        let Some(start) =
                            first_difference(&cp.transpose(1, 2)?, &kp.transpose(1, 2)?, h)?
                        else {
                            continue;
                        };
                        // z of head h from the clean pattern and the corrupted values
                        let vh = v.narrow(2, h / group, 1)?.squeeze(2)?.contiguous()?;
                        let pattern = cp.narrow(1, h, 1)?.squeeze(1)?.contiguous()?;
                        let zh = pattern.matmul(&vh)?.unsqueeze(2)?;
                        let dims = kz.dims().to_vec();
                        let z =
                            kz.slice_assign(&[0..dims[0], 0..dims[1], h..h + 1, 0..dims[3]], &zh)?;
                        let z = z.narrow(1, start, seq - start)?;
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

    /// Keys and values of the corrupted run at layer `l` for positions `..start`, repeated for
    /// `runs` runs of the batch.
    ///
    /// (See [`first_difference`] for where a head's patch starts.)
    pub(super) fn past(&self, l: usize, start: usize, runs: usize) -> Result<Option<PastKv>> {
        if start == 0 {
            return Ok(None);
        }
        let k = match self.model.cfg.positional {
            Positional::Rotary(_) => self.corrupt.at(HookPoint::RotK(l))?,
            Positional::Learned => self.corrupt.at(HookPoint::K(l))?,
        };
        let v = self.corrupt.at(HookPoint::V(l))?;
        Ok(Some(PastKv {
            k: k.narrow(1, 0, start)?
                .repeat((runs, 1, 1, 1))?
                .contiguous()?,
            v: v.narrow(1, 0, start)?
                .repeat((runs, 1, 1, 1))?
                .contiguous()?,
        }))
    }

    /// Each run's final residual at the rows the metric reads, `[runs · batch · k, d_model]`,
    /// from `x [runs · batch, seq − start, d_model]`, the residual after the last block from
    /// position `start` on (suffix coordinates); rows before `start` keep the corrupted final
    /// residual.
    pub(super) fn finals(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let b = self.corrupt_tokens.batch();
        let runs = x.dim(0)? / b;
        let final_corrupt = self
            .corrupt
            .at(HookPoint::ResidPost(self.model.cfg.n_layers - 1))?;
        let mut finals = Vec::with_capacity(runs * b * self.read.k());
        for r in 0..runs {
            for (i, rows) in self.read.idx.iter().enumerate() {
                for &p in rows {
                    finals.push(if p >= start {
                        x.i((r * b + i, p - start))?
                    } else {
                        final_corrupt.i((i, p))?
                    });
                }
            }
        }
        Ok(Tensor::stack(&finals, 0)?)
    }

    /// Runs every injection starting at `start` in one growing batch; returns each cell's
    /// metric and the block evaluations spent (in position-rows).
    fn run_group(&self, start: usize, mut injs: Vec<Injection>) -> Result<(Vec<CellMetric>, f64)> {
        let m = &*self.model;
        let n_layers = m.cfg.n_layers;
        let b = self.corrupt_tokens.batch();
        let seq = self.corrupt_tokens.max_len();
        let s = seq - start;
        let ctx = m.context_for(&self.corrupt_tokens)?;
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
            // runs entering at resid_mid join the batch between the block's halves
            let mut mids = None;
            while let Some(inj) = pending.next_if(|i| i.layer == l && i.stage == Stage::Mid) {
                cells.push(inj.cell);
                mids = Some(join(mids, inj.rows)?);
            }
            let block = m.block(l)?;
            x = match (x.take(), mids) {
                (None, None) => continue,
                (None, Some(mids)) => {
                    Some(block.wire(Stage::Mid, mids, &mut Forward::new(&ctx, start, None))?)
                }
                (Some(xc), mids) => {
                    let runs = xc.dim(0)? / b;
                    let past = self.past(l, start, runs)?;
                    work += (runs * b * s) as f64;
                    let mut append = AppendAt {
                        point: HookPoint::ResidMid(l),
                        rows: mids,
                    };
                    let mut f = Forward::new(&ctx, start, past.as_ref()).with_sink(&mut append);
                    let out = block.wire(Stage::Pre, xc, &mut f)?;
                    if append.rows.is_some() {
                        return Err(LensError::Internal(format!(
                            "runs injected at blocks.{l}.hook_resid_mid, which this block does not have"
                        )));
                    }
                    Some(out)
                }
            };
        }
        let Some(x) = x else {
            return Ok((Vec::new(), work));
        };
        let runs = x.dim(0)? / b;
        let logits = m.unembed_residual(&self.finals(&x, start)?)?;
        let values = self.read.per_run(&logits, runs, &*self.metric)?;
        Ok((cells.into_iter().zip(values).collect(), work))
    }

    /// The fast sweep over every layer and position (or head) of `target`.
    ///
    /// # Errors
    /// [`LensError::NoEffect`] if the corruption does not move the metric (every normalised
    /// score would be `x / 0`); tensor errors, metric errors.
    pub fn sweep(&self, target: PatchTarget) -> Result<PatchGrid> {
        if self.hooks.is_some() {
            // every hook must fire where it would in a run of its own: one forward per cell
            return self.naive_sweep(target);
        }
        self.check_effect()?;
        self.check_aligned_target(target)?;
        let t0 = Instant::now();
        let (injs, rows, cols) = self.injections(target)?;
        let mut groups: BTreeMap<usize, Vec<Injection>> = BTreeMap::new();
        for inj in injs {
            groups.entry(inj.start).or_default().push(inj);
        }
        let mut values = vec![vec![0f32; cols]; rows];
        let mut work = 0f64;
        let bar = crate::util::progress::Progress::new(
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
}

/// A sink that appends `rows` to the batch at `point` (the runs that enter there).
struct AppendAt {
    point: HookPoint,
    rows: Option<Tensor>,
}

impl HookSink for AppendAt {
    fn wants(&self, point: &HookPoint) -> bool {
        *point == self.point && self.rows.is_some()
    }

    fn visit(&mut self, _point: &HookPoint, act: Tensor) -> Result<Tensor> {
        match self.rows.take() {
            Some(rows) => Ok(Tensor::cat(&[&act, &rows], 0)?),
            None => Ok(act),
        }
    }
}

/// The first position at which head `h` of `a` and `b` (`[batch, pos, head, ·]`) differ, if
/// any: positions before it are untouched by patching that head.
pub(super) fn first_difference(a: &Tensor, b: &Tensor, h: usize) -> Result<Option<usize>> {
    let diff = (a.narrow(2, h, 1)? - b.narrow(2, h, 1)?)?
        .abs()?
        .flatten_from(2)?
        .max(2)?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    Ok(diff.iter().position(|&d| d > 0.0))
}
