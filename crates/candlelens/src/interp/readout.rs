//! Where a patching or attribution metric reads the logits ([`Readout`]), and how the positions
//! of a clean prompt and its corruption correspond when their lengths differ ([`Alignment`]).

use candle_core::{IndexOp, Tensor};

use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::HookPoint;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// Which logits a metric reads, in each prompt's own positions (whatever the padding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Readout {
    /// Each prompt's last real token: the metric sees `[batch, d_vocab]` (the default, and
    /// what the sources' metrics read).
    #[default]
    Last,
    /// `k` positions of every prompt (one list per prompt, or one list for all), counted in the
    /// prompt's own tokens — negative from its end, so `-1` is its last token and `[-3, -2, -1]`
    /// a final span: the metric sees `[batch, k, d_vocab]`, in the order given.
    Positions(Vec<Vec<i64>>),
    /// Every position: the metric sees `[batch, pos, d_vocab]`, padded as the batch is (see
    /// [`crate::interp::metrics::loss_metric`], which masks the pads).
    All,
}

/// A [`Readout`] resolved on one batch: the padded index of every row the metric reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadRows {
    /// Per prompt, `k` padded positions.
    pub idx: Vec<Vec<usize>>,
    /// `[batch, d_vocab]` rather than `[batch, k, d_vocab]` (the `Last` readout).
    pub squeeze: bool,
}

impl Readout {
    /// The padded positions this readout reads in `tokens`.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for neither one position list nor one per prompt, lists of
    /// different lengths, or an empty list; [`LensError::PositionOutOfRange`] for a position
    /// past a prompt's end.
    pub(crate) fn rows(&self, tokens: &Tokens) -> Result<ReadRows> {
        let b = tokens.batch();
        match self {
            Readout::Last => Ok(ReadRows {
                idx: tokens
                    .last_positions()
                    .into_iter()
                    .map(|p| vec![p])
                    .collect(),
                squeeze: true,
            }),
            Readout::All => Ok(ReadRows {
                idx: vec![(0..tokens.max_len()).collect(); b],
                squeeze: false,
            }),
            Readout::Positions(lists) => {
                if lists.len() != 1 && lists.len() != b {
                    return Err(LensError::mismatch(
                        "readout positions",
                        format!(
                            "{} position lists for {b} prompts; give one list for all prompts or one per prompt",
                            lists.len()
                        ),
                    ));
                }
                let k = lists[0].len();
                if k == 0 || lists.iter().any(|l| l.len() != k) {
                    return Err(LensError::mismatch(
                        "readout positions",
                        "every prompt reads the same number of positions, at least one (the metric sees [batch, k, d_vocab])",
                    ));
                }
                let idx = (0..b)
                    .map(|i| {
                        let list = &lists[if lists.len() == 1 { 0 } else { i }];
                        list.iter().map(|&p| tokens.resolve_pos(i, p)).collect()
                    })
                    .collect::<Result<Vec<Vec<usize>>>>()?;
                Ok(ReadRows {
                    idx,
                    squeeze: false,
                })
            }
        }
    }
}

impl ReadRows {
    /// Positions read per prompt.
    pub fn k(&self) -> usize {
        self.idx.first().map_or(0, Vec::len)
    }

    /// The rows of `x [batch, seq, ...]` the readout reads, flat: `[batch · k, ...]`.
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s) = (x.dim(0)?, x.dim(1)?);
        if !self.squeeze && self.idx.iter().all(|ps| ps.iter().copied().eq(0..s)) {
            // every position: the whole tensor
            let mut dims = x.dims()[1..].to_vec();
            dims[0] = b * s;
            return Ok(x.reshape(dims)?);
        }
        let rows = self
            .idx
            .iter()
            .enumerate()
            .flat_map(|(b, ps)| ps.iter().map(move |&p| x.i((b, p))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// The rows of `x [batch, seq, ...]` the readout reads, per prompt: `[batch, k, ...]`.
    pub fn gather_rows(&self, x: &Tensor) -> Result<Tensor> {
        let flat = self.gather(x)?;
        let mut dims = flat.dims().to_vec();
        dims[0] = self.k();
        dims.insert(0, self.idx.len());
        Ok(flat.reshape(dims)?)
    }

    /// The metric of each of `n_runs` runs whose logits lie flat in `logits [n_runs · batch ·
    /// k, d_vocab]`, run after run.
    pub fn per_run(
        &self,
        logits: &Tensor,
        n_runs: usize,
        metric: &dyn Fn(&Tensor) -> Result<f32>,
    ) -> Result<Vec<f32>> {
        let n = self.idx.len() * self.k();
        (0..n_runs)
            .map(|r| {
                let v = metric(&self.shape(&logits.narrow(0, r * n, n)?)?)?;
                crate::interp::metrics::check_metric_value(v, "a patched run")?;
                Ok(v)
            })
            .collect()
    }

    /// Logits of the flat rows `[batch · k, d_vocab]` as the metric sees them: `[batch,
    /// d_vocab]` for the last-token readout, `[batch, k, d_vocab]` otherwise.
    pub fn shape(&self, logits: &Tensor) -> Result<Tensor> {
        let (n, v) = logits.dims2()?;
        let b = self.idx.len();
        if self.squeeze {
            return Ok(logits.clone());
        }
        Ok(logits.reshape((b, n / b.max(1), v))?)
    }
}

/// Which position of the clean prompt each position of its corruption corresponds to: what a
/// patch at a corrupted position puts in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Alignment {
    /// Position `i` is position `i` (prompts of equal token counts; the default).
    #[default]
    Same,
    /// The last `k` tokens of each clean prompt correspond to the last `k` of its corruption
    /// (e.g. IOI templates whose names differ in token length, aligned from the end).
    LastK(usize),
    /// Explicit `(corrupted position, clean position)` pairs per prompt (one list per prompt,
    /// or one for all), each in its prompt's own tokens — e.g. from
    /// [`crate::HookedTransformer::get_token_position`] on both prompts.
    Pairs(Vec<Vec<(usize, usize)>>),
}

impl Alignment {
    /// For each prompt, the padded clean position of every padded corrupted position (`None`
    /// where it has no counterpart).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for `Same` on prompts of different token counts, more pairs
    /// lists than prompts, a position listed twice or past its prompt's end;
    /// [`LensError::BadParameter`] for `LastK(0)`.
    pub(crate) fn map(&self, clean: &Tokens, corrupt: &Tokens) -> Result<Vec<Vec<Option<usize>>>> {
        let b = corrupt.batch();
        let seq = corrupt.max_len();
        let mut out = vec![vec![None; seq]; b];
        let (co_off, cl_off) = (corrupt.offsets(), clean.offsets());
        let (co_len, cl_len) = (corrupt.lengths(), clean.lengths());
        match self {
            Alignment::Same => {
                if co_len != cl_len {
                    return Err(LensError::mismatch(
                        "clean and corrupted prompts",
                        format!(
                            "token counts {cl_len:?} and {co_len:?} differ; patch them along an alignment (Alignment::LastK or Alignment::Pairs; lens: --align-last K) or make the corruption the same length"
                        ),
                    ));
                }
                for (i, row) in out.iter_mut().enumerate() {
                    for j in 0..co_len[i] {
                        row[co_off[i] + j] = Some(cl_off[i] + j);
                    }
                }
            }
            Alignment::LastK(k) => {
                if *k == 0 {
                    return Err(LensError::bad_parameter(
                        "LastK",
                        "0",
                        "align at least the last token",
                    ));
                }
                for (i, row) in out.iter_mut().enumerate() {
                    let n = (*k).min(co_len[i]).min(cl_len[i]);
                    for j in 1..=n {
                        row[co_off[i] + co_len[i] - j] = Some(cl_off[i] + cl_len[i] - j);
                    }
                }
            }
            Alignment::Pairs(lists) => {
                if lists.len() != 1 && lists.len() != b {
                    return Err(LensError::mismatch(
                        "alignment pairs",
                        format!(
                            "{} lists for {b} prompts; give one list for all prompts or one per prompt",
                            lists.len()
                        ),
                    ));
                }
                for (i, row) in out.iter_mut().enumerate() {
                    for &(co, cl) in &lists[if lists.len() == 1 { 0 } else { i }] {
                        for (p, len, which) in
                            [(co, co_len[i], "corrupted"), (cl, cl_len[i], "clean")]
                        {
                            if p >= len {
                                return Err(LensError::mismatch(
                                    "alignment pairs",
                                    format!("position {p} is past the end of {which} prompt {i} ({len} tokens); count positions in each prompt's own tokens"),
                                ));
                            }
                        }
                        let slot = &mut row[co_off[i] + co];
                        if slot.is_some() {
                            return Err(LensError::mismatch(
                                "alignment pairs",
                                format!("corrupted position {co} of prompt {i} is listed twice; give each position one clean counterpart"),
                            ));
                        }
                        *slot = Some(cl_off[i] + cl);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The clean run's cache in the corrupted run's positions: at every corrupted position
    /// with a counterpart, the clean activation there; elsewhere the corrupted activation (a
    /// patch there changes nothing). Attention patterns (`[batch, head, q, k]`) are left out:
    /// a pattern has no single position to move.
    pub(crate) fn aligned_cache(
        map: &[Vec<Option<usize>>],
        clean: &ActivationCache,
        corrupt: &ActivationCache,
        corrupt_tokens: &Tokens,
        cfg: &crate::engine::config::ModelConfig,
    ) -> Result<ActivationCache> {
        let mut out = ActivationCache::recorder(crate::engine::hooks::HookFilter::All);
        for &hp in corrupt.keys() {
            if matches!(hp, HookPoint::Pattern(_) | HookPoint::AttnScores(_)) {
                continue;
            }
            let (c, k) = (clean.at(hp)?, corrupt.at(hp)?);
            let mut rows = Vec::with_capacity(map.len());
            for (b, m) in map.iter().enumerate() {
                let pos = m
                    .iter()
                    .enumerate()
                    .map(|(j, src)| match src {
                        Some(p) => c.i((b, *p)),
                        None => k.i((b, j)),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                rows.push(Tensor::stack(&pos, 0)?);
            }
            out.insert(hp, Tensor::stack(&rows, 0)?);
        }
        Ok(out.finish(corrupt_tokens.clone(), cfg))
    }
}
