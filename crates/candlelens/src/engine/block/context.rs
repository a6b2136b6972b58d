//! What one forward shares across its blocks: the rotary tables and the causal masks for its
//! length ([`ForwardCtx`]) — one set for the batch, or one per prompt when the batch is padded
//! on the left — and the keys and values of positions already run ([`PastKv`], the KV cache of
//! generation and of the patching sweeps).

use candle_core::{DType, Device, Tensor};

use crate::engine::config::{AttentionKind, ModelConfig, Positional, RopeScaling};
use crate::engine::ops::rope::{rope_tables, rope_tables_per_prompt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// Per-forward tables: rotary cos/sin per base and additive masks per attention kind, `[seq,
/// d / 2]` and `[seq, seq]` shared by the batch, or `[batch, seq, d / 2]` and `[batch, seq,
/// seq]` when prompts have leading pads (their positions count from their first real token,
/// and no real token reads a pad).
pub struct ForwardCtx {
    pub(crate) seq: usize,
    rope_global: Option<(Tensor, Tensor)>,
    rope_local: Option<(Tensor, Tensor)>,
    masks: Vec<(AttentionKind, Tensor)>,
    /// The batch the per-prompt tables are for (`None`: shared tables).
    batch: Option<usize>,
}

/// Keys (after rotary) and values of the positions seen so far in one layer,
/// `[batch, pos, kv_head, d_head]` each: the KV cache of generation and patching sweeps.
#[derive(Clone, Debug)]
pub struct PastKv {
    /// Keys after rotary (and the k norm), `[batch, pos, kv_head, d_head]`.
    pub k: Tensor,
    /// Values, `[batch, pos, kv_head, d_head]`.
    pub v: Tensor,
}

impl PastKv {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ForwardCtx {
    /// Rotary tables and masks of `cfg` for sequences of up to `seq` positions, shared by every
    /// prompt of a batch.
    ///
    /// # Errors
    /// None beyond allocation failure on `dev`: the masks are `seq × seq` (`seq` is not checked
    /// against `cfg.n_ctx`).
    pub fn new(cfg: &ModelConfig, seq: usize, dt: DType, dev: &Device) -> Result<Self> {
        let (rope_global, rope_local) =
            rope_pair(cfg, |dim, base, s| rope_tables(dim, base, s, seq, dt, dev))?;
        let mut masks: Vec<(AttentionKind, Tensor)> = Vec::new();
        for &kind in &cfg.layer_attention {
            if !masks.iter().any(|(k, _)| *k == kind) {
                masks.push((kind, causal_mask(kind, seq, 0, dt, dev)?));
            }
        }
        Ok(ForwardCtx {
            seq,
            rope_global,
            rope_local,
            masks,
            batch: None,
        })
    }

    /// The tables of a batch whose prompts start after `offsets[b]` leading pads, over `seq`
    /// positions (the prompt and any tokens generated after it): each prompt's positions count
    /// from its first real token, its real tokens read no pad, and each pad reads only itself
    /// (so that its row stays finite). Shared tables where no prompt has leading pads.
    ///
    /// # Errors
    /// None beyond allocation failure on `dev` (`batch × seq × seq` masks).
    pub fn with_offsets(
        cfg: &ModelConfig,
        seq: usize,
        offsets: &[usize],
        dt: DType,
        dev: &Device,
    ) -> Result<Self> {
        if offsets.iter().all(|&o| o == 0) {
            return ForwardCtx::new(cfg, seq, dt, dev);
        }
        let positions: Vec<Vec<usize>> = offsets
            .iter()
            .map(|&o| (0..seq).map(|j| j.saturating_sub(o)).collect())
            .collect();
        let (rope_global, rope_local) = rope_pair(cfg, |dim, base, s| {
            rope_tables_per_prompt(dim, base, s, &positions, dt, dev)
        })?;
        let mut masks: Vec<(AttentionKind, Tensor)> = Vec::new();
        for &kind in &cfg.layer_attention {
            if !masks.iter().any(|(k, _)| *k == kind) {
                let rows = offsets
                    .iter()
                    .map(|&o| causal_mask(kind, seq, o, dt, dev))
                    .collect::<Result<Vec<_>>>()?;
                masks.push((kind, Tensor::stack(&rows, 0)?));
            }
        }
        Ok(ForwardCtx {
            seq,
            rope_global,
            rope_local,
            masks,
            batch: Some(offsets.len()),
        })
    }

    /// The tables for `tokens` ([`Self::with_offsets`] with its leading pads).
    ///
    /// # Errors
    /// As [`Self::with_offsets`].
    pub fn for_tokens(cfg: &ModelConfig, tokens: &Tokens, dt: DType, dev: &Device) -> Result<Self> {
        ForwardCtx::with_offsets(cfg, tokens.max_len(), &tokens.offsets(), dt, dev)
    }

    /// A per-prompt table `[batch, ..]` for a run of `rows` rows: the same when `rows` is the
    /// batch, repeated when the run stacks several copies of the batch (patching sweeps).
    fn for_rows(&self, t: Tensor, rows: usize) -> Result<Tensor> {
        match self.batch {
            Some(b) if rows != b && b > 0 && rows.is_multiple_of(b) => {
                let mut reps = vec![1; t.rank()];
                reps[0] = rows / b;
                Ok(t.repeat(reps)?)
            }
            Some(b) if rows != b => Err(LensError::Internal(format!(
                "a run of {rows} rows under per-prompt tables of a batch of {b}"
            ))),
            _ => Ok(t),
        }
    }

    /// The rotary `(cos, sin)` rows of positions `offset..offset + p` for a layer of attention
    /// `kind` (local layers have their own base where the family has one), for a run of `rows`
    /// rows: `[p, d / 2]`, or `[rows, p, d / 2]` under per-prompt tables.
    pub(crate) fn rope(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
        rows: usize,
    ) -> Result<(Tensor, Tensor)> {
        let tables = match (kind, &self.rope_local) {
            (AttentionKind::Local { .. }, Some(t)) => t,
            _ => self.rope_global.as_ref().ok_or_else(|| {
                LensError::Internal("rotary tables missing from the forward context".into())
            })?,
        };
        let at = |t: &Tensor| -> Result<Tensor> {
            match self.batch {
                None => Ok(t.narrow(0, offset, p)?),
                Some(_) => self.for_rows(t.narrow(1, offset, p)?.contiguous()?, rows),
            }
        };
        Ok((at(&tables.0)?, at(&tables.1)?))
    }

    /// The additive mask of attention `kind` for queries `offset..offset + p` over the first
    /// `t` keys, for a run of `rows` rows: `[p, t]`, or `[rows, 1, p, t]` under per-prompt
    /// masks (either broadcasts over scores `[rows, head, p, t]`).
    pub(crate) fn mask(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
        t: usize,
        rows: usize,
    ) -> Result<Tensor> {
        let mask = self
            .masks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                LensError::Internal("causal mask missing from the forward context".into())
            })?;
        if self.batch.is_some() {
            let m = mask.narrow(1, offset, p)?.narrow(2, 0, t)?.contiguous()?;
            return self.for_rows(m, rows)?.unsqueeze(1).map_err(Into::into);
        }
        Ok(if offset == 0 && p == self.seq && t == self.seq {
            mask.clone()
        } else {
            mask.narrow(0, offset, p)?.narrow(1, 0, t)?
        })
    }
}

/// A pair of rotary tables `(cos, sin)`, where the model has rotary positions.
type TablePair = Option<(Tensor, Tensor)>;

/// The global and local rotary tables of `cfg` from `make(dim, base, scaling)`: none for
/// learned positions; the local pair only where local layers have a base of their own
/// (unscaled).
fn rope_pair(
    cfg: &ModelConfig,
    make: impl Fn(usize, f64, Option<&RopeScaling>) -> Result<(Tensor, Tensor)>,
) -> Result<(TablePair, TablePair)> {
    match &cfg.positional {
        Positional::Learned => Ok((None, None)),
        Positional::Rotary(r) => {
            let global = make(r.dim, r.base, r.scaling.as_ref())?;
            let local = r.local_base.map(|b| make(r.dim, b, None)).transpose()?;
            Ok((Some(global), local))
        }
    }
}

/// The additive causal mask `[seq, seq]` of attention `kind` for a prompt after `offset` leading
/// pads: 0 where query `q` may read key `k` (`offset ≤ k ≤ q`, within the window of a local
/// layer), `-inf` elsewhere; a pad (`q < offset`) reads only itself, so that its row stays
/// finite.
///
/// # Errors
/// None beyond allocation failure on `dev` (a `seq × seq` mask).
pub(crate) fn causal_mask(
    kind: AttentionKind,
    seq: usize,
    offset: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let window = match kind {
        AttentionKind::Global => usize::MAX,
        AttentionKind::Local { window } => window,
    };
    let mask: Vec<f32> = (0..seq)
        .flat_map(|q| {
            (0..seq).map(move |k| {
                let open = if q < offset {
                    k == q
                } else {
                    k >= offset && k <= q && q - k < window
                };
                if open {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, seq), dev)?.to_dtype(dtype)?)
}
