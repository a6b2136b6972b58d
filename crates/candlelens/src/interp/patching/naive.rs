//! The one-forward-per-cell reference: a full forward of the corrupted prompt with a hook that
//! puts in one clean activation — what TransformerLens's patching functions run, and what the
//! tests hold the fast sweep equal to.

use std::time::Instant;

use crate::engine::hooks::{Chain, HookPoint, Hooks};
use crate::engine::model::LogitsAt;
use crate::error::Result;

use super::{PatchGrid, PatchTarget, Patcher};

impl Patcher {
    /// One cell the naive way: a full forward of the corrupted prompt with a hook that puts in
    /// the clean activation. `row`/`col` index the grid as [`Self::sweep`] lays it out.
    /// Returns the normalised score.
    ///
    /// # Errors
    /// Hook and tensor errors.
    pub fn naive(&self, target: PatchTarget, row: usize, col: usize) -> Result<f32> {
        self.check_effect()?;
        self.check_aligned_target(target)?;
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
            PatchTarget::Q => (HookPoint::Q(row), None, Some(col)),
            PatchTarget::K => (HookPoint::K(row), None, Some(col)),
            PatchTarget::V => (HookPoint::V(row), None, Some(col)),
            PatchTarget::Pattern => (HookPoint::Pattern(row), None, Some(col)),
        };
        // the head axis: [batch, pos, head, ·], or [batch, head, q, k] for the pattern
        let head_axis = if target == PatchTarget::Pattern { 1 } else { 2 };
        let clean = self.clean.at(hp)?.clone();
        let mut hooks = Hooks::new();
        hooks.add_filter(hp.into(), move |act, _| {
            let dims = act.dims().to_vec();
            let mut ranges: Vec<std::ops::Range<usize>> = dims.iter().map(|&d| 0..d).collect();
            if let Some(p) = pos {
                ranges[1] = p..p + 1;
            }
            if let Some(h) = head {
                ranges[head_axis] = h..h + 1;
            }
            let mut src = clean.clone();
            for (axis, r) in ranges.iter().enumerate() {
                src = src.narrow(axis, r.start, r.end - r.start)?;
            }
            Ok(Some(act.slice_assign(&ranges, &src)?))
        });
        let logits = match &self.hooks {
            // the patcher's hooks first, then the patch (the clean value, hooked already)
            Some(extra) => {
                let mut extra = extra.borrow_mut();
                let mut both = Chain(&mut *extra, &mut hooks);
                self.model
                    .forward_with(&self.corrupt_tokens, LogitsAt::All, &mut both)?
            }
            None => self
                .model
                .run_with_hooks(&self.corrupt_tokens, &mut hooks)?,
        };
        Ok(self.score(self.metric_of(&logits)?))
    }

    /// The whole grid the naive way (one full forward per cell).
    ///
    /// # Errors
    /// As [`Self::naive`].
    pub fn naive_sweep(&self, target: PatchTarget) -> Result<PatchGrid> {
        self.check_effect()?;
        let t0 = Instant::now();
        let cfg = &self.model.cfg;
        let seq = self.corrupt_tokens.max_len();
        let (rows, cols) = match target {
            PatchTarget::HeadsAllPos | PatchTarget::Q | PatchTarget::Pattern => {
                (cfg.n_layers, cfg.n_heads)
            }
            PatchTarget::K | PatchTarget::V => (cfg.n_layers, cfg.n_kv_heads),
            PatchTarget::HeadsByPos => (cfg.n_layers * cfg.n_heads, seq),
            _ => (cfg.n_layers, seq),
        };
        let bar = crate::util::progress::Progress::new(
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
}
