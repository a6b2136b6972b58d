//! What one forward shares across its blocks: the rotary tables and the causal masks for its
//! length ([`ForwardCtx`]), and the keys and values of positions already run ([`PastKv`], the
//! KV cache of generation and of the patching sweeps).

use candle_core::{DType, Device, Tensor};

use crate::engine::config::{AttentionKind, ModelConfig, Positional};
use crate::engine::ops::rope::rope_tables;
use crate::error::{LensError, Result};

/// Per-forward tables: rotary cos/sin per base and causal masks per attention kind.
pub struct ForwardCtx {
    pub(crate) seq: usize,
    rope_global: Option<(Tensor, Tensor)>,
    rope_local: Option<(Tensor, Tensor)>,
    masks: Vec<(AttentionKind, Tensor)>,
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
    /// Rotary tables and masks of `cfg` for sequences of up to `seq` positions.
    ///
    /// # Errors
    /// None beyond allocation failure on `dev`: the masks are `seq × seq` (`seq` is not checked
    /// against `cfg.n_ctx`).
    pub fn new(cfg: &ModelConfig, seq: usize, dt: DType, dev: &Device) -> Result<Self> {
        let (rope_global, rope_local) = match &cfg.positional {
            Positional::Learned => (None, None),
            Positional::Rotary(r) => {
                let g = rope_tables(r.dim, r.base, r.scaling.as_ref(), seq, dt, dev)?;
                let l = match r.local_base {
                    Some(b) => Some(rope_tables(r.dim, b, None, seq, dt, dev)?),
                    None => None,
                };
                (Some(g), l)
            }
        };
        let mut masks: Vec<(AttentionKind, Tensor)> = Vec::new();
        for &kind in &cfg.layer_attention {
            if !masks.iter().any(|(k, _)| *k == kind) {
                masks.push((kind, causal_mask(kind, seq, dt, dev)?));
            }
        }
        Ok(ForwardCtx {
            seq,
            rope_global,
            rope_local,
            masks,
        })
    }

    /// The rotary `(cos, sin)` rows of positions `offset..offset + p` for a layer of attention
    /// `kind` (local layers have their own base where the family has one).
    pub(crate) fn rope(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
    ) -> Result<(Tensor, Tensor)> {
        let tables = match (kind, &self.rope_local) {
            (AttentionKind::Local { .. }, Some(t)) => t,
            _ => self.rope_global.as_ref().ok_or_else(|| {
                LensError::Internal("rotary tables missing from the forward context".into())
            })?,
        };
        Ok((
            tables.0.narrow(0, offset, p)?,
            tables.1.narrow(0, offset, p)?,
        ))
    }

    /// The additive causal mask of attention `kind` for queries `offset..offset + p` over the
    /// first `t` keys, `[p, t]`.
    pub(crate) fn mask(
        &self,
        kind: AttentionKind,
        offset: usize,
        p: usize,
        t: usize,
    ) -> Result<Tensor> {
        let mask = self
            .masks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                LensError::Internal("causal mask missing from the forward context".into())
            })?;
        Ok(if offset == 0 && p == self.seq && t == self.seq {
            mask.clone()
        } else {
            mask.narrow(0, offset, p)?.narrow(1, 0, t)?
        })
    }
}

/// The additive causal mask `[seq, seq]` of attention `kind`: 0 where query `q` may read key
/// `k` (`k ≤ q`, within the window of a local layer), `-inf` elsewhere.
///
/// # Errors
/// None beyond allocation failure on `dev` (a `seq × seq` mask).
pub(crate) fn causal_mask(
    kind: AttentionKind,
    seq: usize,
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
                if k > q || q - k >= window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, seq), dev)?.to_dtype(dtype)?)
}
