//! [`Tokens`]: a batch of prompts as token ids, padded to one length on the right
//! (TransformerLens's default) or on the left (what generation and most batched tooling use),
//! with each prompt's length.
//!
//! Right padding needs no attention mask beyond the causal one: a real token never attends to a
//! later pad. Left padding puts the pads first, so the forward masks them as keys and counts
//! each prompt's positions from its first real token ([`Tokens::position_ids`]); either way
//! every real position computes what it would alone. Positions handed out by [`Tokens`]
//! ([`Tokens::last_positions`], [`Tokens::resolve_pos`]) are indices into the padded batch.

use candle_core::{Device, Tensor};

use crate::error::{LensError, Result};

/// Which side of a batch shorter prompts are padded on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// Pads after each prompt (TransformerLens's default).
    #[default]
    Right,
    /// Pads before each prompt, so that every prompt ends at the last position (what
    /// generation and most batched tooling use).
    Left,
}

impl Padding {
    /// Parses `left` or `right`.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for anything else.
    pub fn parse(s: &str) -> Result<Padding> {
        match s {
            "right" => Ok(Padding::Right),
            "left" => Ok(Padding::Left),
            other => Err(LensError::UnknownChoice {
                what: "padding side".into(),
                given: other.to_string(),
                choices: "left or right".into(),
            }),
        }
    }
}

/// A batch of token-id sequences, padded to one length on one side.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    rows: Vec<Vec<u32>>,
    pad: u32,
    padding: Padding,
}

impl Tokens {
    /// A batch from id sequences; shorter rows are padded with `pad` on the right.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`] if there are no rows or a row is empty.
    pub fn new(rows: Vec<Vec<u32>>, pad: u32) -> Result<Self> {
        Tokens::with_padding(rows, pad, Padding::Right)
    }

    /// A batch from id sequences; shorter rows are padded with `pad` on the `padding` side.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`] if there are no rows or a row is empty.
    pub fn with_padding(rows: Vec<Vec<u32>>, pad: u32, padding: Padding) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
            return Err(LensError::EmptyPrompt);
        }
        Ok(Tokens { rows, pad, padding })
    }

    /// The side shorter prompts are padded on.
    pub fn padding(&self) -> Padding {
        self.padding
    }

    /// Each prompt's number of leading pads: its first real token's index (0 with right
    /// padding).
    pub fn offsets(&self) -> Vec<usize> {
        let n = self.max_len();
        match self.padding {
            Padding::Right => vec![0; self.rows.len()],
            Padding::Left => self.rows.iter().map(|r| n - r.len()).collect(),
        }
    }

    /// Whether some prompt has pads before its tokens, so that the forward needs a mask on
    /// its keys and positions of its own (left padding with prompts of different lengths).
    pub fn has_leading_pads(&self) -> bool {
        self.padding == Padding::Left && !self.is_rectangular()
    }

    /// Each prompt's position ids over the padded length: `j − offset` at its real tokens, 0 at
    /// its pads (as HF computes them from the attention mask).
    pub fn position_ids(&self) -> Vec<Vec<usize>> {
        let n = self.max_len();
        self.offsets()
            .iter()
            .map(|&o| (0..n).map(|j| j.saturating_sub(o)).collect())
            .collect()
    }

    /// The attention mask `[batch, pos]`: `true` at real tokens, `false` at pads
    /// (TransformerLens's `attention_mask`).
    pub fn attention_mask(&self) -> Vec<Vec<bool>> {
        let n = self.max_len();
        self.offsets()
            .iter()
            .zip(&self.rows)
            .map(|(&o, r)| (0..n).map(|j| j >= o && j < o + r.len()).collect())
            .collect()
    }

    /// The padded positions of prompt `i`'s real tokens.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] when the batch has no prompt `i`.
    pub fn real_positions(&self, i: usize) -> Result<std::ops::Range<usize>> {
        let len = self.row(i)?.len();
        let o = self.offsets()[i];
        Ok(o..o + len)
    }

    /// One prompt.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`] if `ids` is empty.
    pub fn single(ids: Vec<u32>) -> Result<Self> {
        Tokens::new(vec![ids], 0)
    }

    /// Number of prompts.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// The padded length (longest prompt).
    pub fn max_len(&self) -> usize {
        self.rows.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Each prompt's own length.
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(Vec::len).collect()
    }

    /// Each prompt's final real position in the padded batch (`offset + len − 1`).
    pub fn last_positions(&self) -> Vec<usize> {
        self.offsets()
            .iter()
            .zip(&self.rows)
            .map(|(o, r)| o + r.len() - 1)
            .collect()
    }

    /// The ids of prompt `i` (unpadded).
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] when the batch has no prompt `i`.
    pub fn row(&self, i: usize) -> Result<&[u32]> {
        self.rows
            .get(i)
            .map(Vec::as_slice)
            .ok_or_else(|| LensError::OutOfRange {
                what: "prompt".into(),
                index: i,
                len: self.rows.len(),
            })
    }

    /// All rows, unpadded.
    pub fn rows(&self) -> &[Vec<u32>] {
        &self.rows
    }

    /// The pad id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Whether all prompts have the same length (no padding).
    pub fn is_rectangular(&self) -> bool {
        self.rows.iter().all(|r| r.len() == self.max_len())
    }

    /// The `[batch, pos]` u32 tensor, padded on this batch's side.
    ///
    /// # Errors
    /// None: only candle's allocation failure on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let n = self.max_len();
        let mut flat: Vec<u32> = Vec::with_capacity(self.batch() * n);
        for r in &self.rows {
            let pads = std::iter::repeat_n(self.pad, n - r.len());
            match self.padding {
                Padding::Right => flat.extend(r.iter().copied().chain(pads)),
                Padding::Left => flat.extend(pads.chain(r.iter().copied())),
            }
        }
        Ok(Tensor::from_vec(flat, (self.batch(), n), device)?)
    }

    /// Picks each prompt's final real position from `x [batch, pos, ...]` -> `[batch, ...]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] when `x` has fewer than [`Self::batch`] rows or fewer positions
    /// than the longest prompt.
    pub fn gather_last(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::IndexOp;
        let rows = self
            .last_positions()
            .iter()
            .enumerate()
            .map(|(b, &p)| x.i((b, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// The padded index of prompt `i`'s token `pos`, counted in its own tokens from its start
    /// (`-1` = its last real token, `0` = its first).
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] when the batch has no prompt `i`,
    /// [`LensError::PositionOutOfRange`] when `pos` is outside the prompt.
    pub fn resolve_pos(&self, i: usize, pos: i64) -> Result<usize> {
        let real = self.real_positions(i)?;
        let len = real.len();
        let p = if pos < 0 {
            (len as i64).checked_add(pos)
        } else {
            Some(pos)
        };
        match p {
            Some(p) if p >= 0 && p < len as i64 => Ok(real.start + p as usize),
            _ => Err(LensError::PositionOutOfRange { pos, len }),
        }
    }
}

/// One prompt or several: what `to_tokens` accepts.
pub trait Prompts {
    /// The prompts as string slices.
    fn prompts(&self) -> Vec<&str>;
}

impl Prompts for &str {
    fn prompts(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Prompts for String {
    fn prompts(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Prompts for &String {
    fn prompts(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Prompts for &[&str] {
    fn prompts(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl<const N: usize> Prompts for [&str; N] {
    fn prompts(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl Prompts for Vec<&str> {
    fn prompts(&self) -> Vec<&str> {
        self.clone()
    }
}

impl Prompts for &[String] {
    fn prompts(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

impl Prompts for Vec<String> {
    fn prompts(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_and_tracks_lengths() {
        let t = Tokens::new(vec![vec![1, 2, 3], vec![4]], 0).unwrap();
        assert_eq!(t.max_len(), 3);
        assert_eq!(t.last_positions(), vec![2, 0]);
        let ids: Vec<Vec<u32>> = t.to_tensor(&Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(ids, vec![vec![1, 2, 3], vec![4, 0, 0]]);
        assert_eq!(t.resolve_pos(0, -1).unwrap(), 2);
        assert_eq!(t.row(1).unwrap(), &[4]);
        let e = t.row(2).unwrap_err().to_string();
        assert!(e.contains("prompt") && e.contains('2'), "{e}");
        assert!(matches!(
            t.resolve_pos(5, 0),
            Err(LensError::OutOfRange {
                index: 5,
                len: 2,
                ..
            })
        ));
        assert!(matches!(
            t.resolve_pos(1, -2),
            Err(LensError::PositionOutOfRange { pos: -2, len: 1 })
        ));
        assert!(matches!(
            t.resolve_pos(0, i64::MIN),
            Err(LensError::PositionOutOfRange { .. })
        ));
        assert!(matches!(
            t.resolve_pos(1, 1),
            Err(LensError::PositionOutOfRange { pos: 1, len: 1 })
        ));
    }

    #[test]
    fn pads_left_with_positions_and_mask() {
        let t = Tokens::with_padding(vec![vec![1, 2, 3], vec![4]], 9, Padding::Left).unwrap();
        let ids: Vec<Vec<u32>> = t.to_tensor(&Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(ids, vec![vec![1, 2, 3], vec![9, 9, 4]]);
        assert_eq!(t.offsets(), vec![0, 2]);
        assert_eq!(t.last_positions(), vec![2, 2]);
        assert_eq!(t.position_ids(), vec![vec![0, 1, 2], vec![0, 0, 0]]);
        assert_eq!(
            t.attention_mask(),
            vec![vec![true, true, true], vec![false, false, true]]
        );
        assert_eq!(t.resolve_pos(1, 0).unwrap(), 2);
        assert_eq!(t.resolve_pos(1, -1).unwrap(), 2);
        assert_eq!(t.real_positions(1).unwrap(), 2..3);
        assert!(t.has_leading_pads());
        assert!(Padding::parse("middle").is_err());
    }

    #[test]
    fn empty_is_an_error() {
        assert!(matches!(
            Tokens::single(vec![]),
            Err(LensError::EmptyPrompt)
        ));
        assert!(matches!(
            Tokens::new(vec![], 0),
            Err(LensError::EmptyPrompt)
        ));
    }
}
