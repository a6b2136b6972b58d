//! [`Tokens`]: a batch of prompts as token ids, right-padded, with each prompt's length.
//!
//! Right padding (TransformerLens's default) needs no attention mask beyond the causal one:
//! a real token never attends to a later pad, so every real position computes exactly what it
//! would alone. Readers of "the final position" use [`Tokens::last_positions`].

use candle_core::{Device, Tensor};

use crate::error::{LensError, Result};

/// A batch of token-id sequences, right-padded to one length.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    rows: Vec<Vec<u32>>,
    pad: u32,
}

impl Tokens {
    /// A batch from id sequences; shorter rows are padded with `pad`.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`] if there are no rows or a row is empty.
    pub fn new(rows: Vec<Vec<u32>>, pad: u32) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
            return Err(LensError::EmptyPrompt);
        }
        Ok(Tokens { rows, pad })
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

    /// Each prompt's final real position (`len - 1`).
    pub fn last_positions(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.len() - 1).collect()
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

    /// `[batch, pos]` u32 tensor, right-padded.
    ///
    /// # Errors
    /// None: only candle's allocation failure on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let n = self.max_len();
        let flat: Vec<u32> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(self.pad, n - r.len()))
            })
            .collect();
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

    /// Resolves a possibly negative position (`-1` = last) for prompt `i`.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] when the batch has no prompt `i`,
    /// [`LensError::PositionOutOfRange`] when `pos` is outside it.
    pub fn resolve_pos(&self, i: usize, pos: i64) -> Result<usize> {
        let len = self.row(i)?.len();
        let p = if pos < 0 { len as i64 + pos } else { pos };
        if p < 0 || p >= len as i64 {
            return Err(LensError::PositionOutOfRange { pos, len });
        }
        Ok(p as usize)
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
