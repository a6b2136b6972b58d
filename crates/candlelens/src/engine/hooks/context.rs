//! Where a run is when a hook fires: [`HookContext`].

use crate::error::{LensError, Result};

/// Where a run is when a hook fires: the prompts of its batch (each row of an activation is one
/// prompt), where each prompt's real tokens are, and which positions the activation's
/// position axis covers. [`Hooks::add_with_context`](super::Hooks::add_with_context) passes it to a hook, so that per-prompt or
/// per-position edits need no tensors built by hand.
///
/// Positions are counted in each prompt's own tokens (0 = its first real token), whatever side
/// the batch is padded on; a generation step's activation covers only the new position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookContext {
    offsets: Vec<usize>,
    lengths: Vec<usize>,
    start: usize,
}

impl HookContext {
    /// The context of a run over positions `start..` of prompts with `offsets[b]` leading pads
    /// and `lengths[b]` real tokens so far (the prompt and what has been generated).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] unless there is one length per offset.
    pub fn new(offsets: Vec<usize>, lengths: Vec<usize>, start: usize) -> Result<Self> {
        if offsets.len() != lengths.len() {
            return Err(LensError::mismatch(
                "hook context",
                format!(
                    "{} offsets for {} lengths; give one of each per prompt",
                    offsets.len(),
                    lengths.len()
                ),
            ));
        }
        Ok(HookContext {
            offsets,
            lengths,
            start,
        })
    }

    /// The context of a whole run of `tokens`.
    pub fn of(tokens: &crate::engine::text::tokens::Tokens) -> Self {
        HookContext {
            offsets: tokens.offsets(),
            lengths: tokens.lengths(),
            start: 0,
        }
    }

    /// Rows of the batch: one per prompt.
    pub fn batch(&self) -> usize {
        self.offsets.len()
    }

    /// The padded position of the activation's first row on its position axis (0 for a whole
    /// run; the number of positions already cached for a generation step).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Prompt `row`'s leading pads and length so far.
    fn prompt(&self, row: usize) -> Result<(usize, usize)> {
        match (self.offsets.get(row), self.lengths.get(row)) {
            (Some(&o), Some(&len)) => Ok((o, len)),
            _ => Err(LensError::mismatch(
                "hook context",
                format!(
                    "prompt {row} asked for in a batch of {}; rows go 0..{}",
                    self.batch(),
                    self.batch()
                ),
            )),
        }
    }

    /// The position within prompt `row`'s own tokens of index `j` of the activation's position
    /// axis, or `None` at a pad.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for a row past the batch.
    pub fn position(&self, row: usize, j: usize) -> Result<Option<usize>> {
        let (o, len) = self.prompt(row)?;
        let padded = self.start + j;
        Ok((padded >= o && padded < o + len).then(|| padded - o))
    }

    /// The index on the activation's position axis of prompt `row`'s token `pos` (counted in
    /// its own tokens, `-1` = its last), or `None` when the activation does not cover it (an
    /// earlier position during generation).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for a row past the batch; [`LensError::PositionOutOfRange`]
    /// for a position past the prompt's end (or before its start).
    pub fn index_of(&self, row: usize, pos: i64) -> Result<Option<usize>> {
        let (o, len) = self.prompt(row)?;
        let p = if pos < 0 { len as i64 + pos } else { pos };
        if p < 0 || p >= len as i64 {
            return Err(LensError::PositionOutOfRange { pos, len });
        }
        Ok((o + p as usize).checked_sub(self.start))
    }
}
