//! Rotary position tables and causal masks, computed once per forward for its length.

use candle_core::{DType, Device, Tensor};

use crate::engine::config::{AttentionKind, RopeScaling};
use crate::error::Result;

/// Inverse frequencies of rotary dimension pairs, as HF computes them (f32).
pub(crate) fn inv_freq(dim: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = base as f32;
    let mut f: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for x in f.iter_mut() {
                *x /= *factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let (factor, low, high, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *old as f32,
            );
            let low_wl = old / low;
            let high_wl = old / high;
            for x in f.iter_mut() {
                let wl = 2.0 * std::f32::consts::PI / *x;
                let scaled = if wl > low_wl { *x / factor } else { *x };
                let medium = wl >= high_wl && wl <= low_wl;
                *x = if medium {
                    let s = (old / wl - low) / (high - low);
                    (1.0 - s) * scaled / factor + s * scaled
                } else {
                    scaled
                };
            }
        }
    }
    f
}

pub(crate) fn rope_tables(
    dim: usize,
    base: f64,
    scaling: Option<&RopeScaling>,
    seq: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let f = inv_freq(dim, base, scaling);
    let mut cos = Vec::with_capacity(seq * f.len());
    let mut sin = Vec::with_capacity(seq * f.len());
    for p in 0..seq {
        for &w in &f {
            let a = p as f32 * w;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (seq, f.len());
    Ok((
        Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    ))
}

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
