//! Attention on the CPU without copies: each `(batch, head)` pair is two strided matrix
//! products straight off the `[batch, pos, head, d_head]` layout the projections produce,
//! with the scale, soft-cap, mask and softmax applied to the scores in between while they sit
//! in cache, and `z` written in place. The composed path (`Block::attend`)
//! first copies the queries to `[batch, head, pos, d_head]` and the keys and values once per
//! query head (grouped-query attention), multiplies 450 small matrices one after the other,
//! each split over the cores, then runs the scale, the mask and the softmax as three passes
//! over the scores and copies `z` back — about 240 ms of a 2.1 s batched SmolLM2 forward
//! (50 prompts, timed between hook points).
//!
//! Used for contiguous-able f32 tensors on the CPU that autograd does not track; the functions
//! return `None` elsewhere and the caller composes candle's ops (the same function).

use candle_core::{DType, Layout, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::fastmath;
use super::softmax::softmax_rows;
use crate::error::{LensError, Result};

/// The inputs of one block's attention: queries `q [batch, pos, head, d_head]`, keys and
/// values `[batch, t, kv_head, d_head]` (after rotary and the q/k norm), the additive mask
/// `[pos, t]` (or `[batch, 1, pos, t]`, one per prompt), the score scale and Gemma 2's
/// soft-cap.
pub(crate) struct AttnInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub mask: &'a Tensor,
    pub scale: f64,
    pub softcap: Option<f64>,
}

/// A raw pointer the units of a parallel loop write disjoint parts through.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every unit writes a region no other unit touches (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so that closures capture the whole `Out`, which is `Sync`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Contiguous f32 data of `t` on the CPU, untracked, as an owned copy-free handle: `None`
/// where the fast path does not apply.
fn f32_cpu(t: &Tensor) -> Result<Option<Tensor>> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() || t.track_op() {
        return Ok(None);
    }
    Ok(Some(t.contiguous()?))
}

/// The f32 data of a contiguous CPU tensor's storage.
fn slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    fastmath::cpu_f32(storage, layout)?.ok_or_else(|| {
        LensError::Internal("attention kernel: expected a contiguous CPU tensor".into())
    })
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    p: usize,
    t: usize,
    h: usize,
    kv: usize,
    dh: usize,
}

impl Dims {
    /// The shapes of queries `q [batch, pos, head, d_head]` and keys `k [batch, t, kv_head,
    /// d_head]`, checked before any unit reads through raw offsets.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] unless both are 4-D with one batch and one `d_head`, and the
    /// heads a non-zero multiple of the kv heads (a hook that returned `hook_q` or `hook_k` in
    /// another shape, a caller's own tensors).
    fn of(q: &Tensor, k: &Tensor) -> Result<Self> {
        let (b, p, h, dh) = q.dims4()?;
        let (kb, t, kv, kdh) = k.dims4()?;
        if kb != b || kdh != dh || kv == 0 || h % kv != 0 {
            return Err(LensError::mismatch(
                "attention's queries and keys",
                format!(
                    "queries {:?} and keys {:?}: attention needs [batch, pos, heads, d_head] and \
                     [batch, t, kv_heads, d_head] with one batch and d_head, and heads a multiple \
                     of kv_heads; a hook on hook_q or hook_k must return its input's shape",
                    q.dims(),
                    k.dims()
                ),
            ));
        }
        Ok(Dims { b, p, t, h, kv, dh })
    }

    /// Unit `u`'s rows of the additive mask: the one `[p, t]` mask, or its prompt's of a
    /// per-prompt mask `[batch, 1, p, t]`.
    fn mask_of<'m>(&self, mask: &'m [f32], u: usize) -> &'m [f32] {
        let pt = self.p * self.t;
        if mask.len() == pt {
            mask
        } else {
            &mask[(u / self.h) * pt..(u / self.h + 1) * pt]
        }
    }

    /// Offsets of unit `u = batch · h + head`: its queries (and `z`) and its kv head's keys
    /// (and values).
    fn offsets(&self, u: usize) -> (usize, usize) {
        let (bb, hh) = (u / self.h, u % self.h);
        let g = hh / (self.h / self.kv);
        (
            (bb * self.p * self.h + hh) * self.dh,
            (bb * self.t * self.kv + g) * self.dh,
        )
    }
}

/// Below this many multiply-adds (`batch · head · pos · t · d_head`, a short prompt's
/// attention) the units run on the calling thread: waking the pool costs more than it saves.
const SERIAL_WORK: usize = 2 << 20;

/// `f(u, scratch)` for every unit `u = batch · h + head`, on every core or (for little work)
/// on the calling thread, with a `[pos, t]` scratch buffer per thread.
fn for_units(d: Dims, f: impl Fn(usize, &mut Vec<f32>) + Sync) {
    let units = d.b * d.h;
    if units * d.p * d.t * d.dh < SERIAL_WORK {
        let mut s = vec![0f32; d.p * d.t];
        (0..units).for_each(|u| f(u, &mut s));
    } else {
        (0..units)
            .into_par_iter()
            .for_each_init(|| vec![0f32; d.p * d.t], |s, u| f(u, s));
    }
}

/// `scores [p, t] = scale · q_bh k_bgᵀ` into `s`: one unit's first product.
///
/// # Safety
/// `q` and `k` point at the unit's queries and keys in buffers of the shapes `d` describes,
/// `s` at `p × t` writable (possibly uninitialised) entries.
unsafe fn unit_qk(d: Dims, q: *const f32, k: *const f32, scale: f32, s: *mut f32) {
    gemm(
        d.p,
        d.t,
        d.dh,
        s,
        1,
        d.t as isize,
        false,
        q,
        1,
        (d.h * d.dh) as isize,
        k,
        (d.kv * d.dh) as isize,
        1,
        0.0,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// [`unit_qk`], then the soft-cap and the mask: one unit's masked scores into `s`.
///
/// # Safety
/// As [`unit_qk`].
unsafe fn unit_scores(
    d: Dims,
    q: *const f32,
    k: *const f32,
    mask: &[f32],
    inp: (f32, Option<f32>),
    s: *mut f32,
) {
    let (scale, cap) = inp;
    unit_qk(d, q, k, scale, s);
    // gemm wrote all p × t entries
    let s = std::slice::from_raw_parts_mut(s, d.p * d.t);
    match cap {
        Some(c) => {
            for (x, &m) in s.iter_mut().zip(mask) {
                *x = (*x / c).tanh() * c + m;
            }
        }
        None => {
            for (x, &m) in s.iter_mut().zip(mask) {
                *x += m;
            }
        }
    }
}

/// `z_bh [p, dh] = pattern_bh [p, t] · v_bg [t, dh]`, written into `z`'s strided rows.
///
/// # Safety
/// `v` and `z` point at the unit's values and `z` rows in buffers of the shapes `d` describes.
unsafe fn unit_values(d: Dims, pattern: &[f32], v: *const f32, z: *mut f32) {
    gemm(
        d.p,
        d.dh,
        d.t,
        z,
        1,
        (d.h * d.dh) as isize,
        false,
        pattern.as_ptr(),
        1,
        d.t as isize,
        v,
        1,
        (d.kv * d.dh) as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// The tensors of `inp` as contiguous f32 CPU tensors, or `None` where the kernel does not
/// apply (another dtype or device, a tracked tensor, a mask of the wrong shape).
fn prepare(inp: &AttnInputs) -> Result<Option<(Dims, [Tensor; 4])>> {
    let (Some(q), Some(k), Some(v), Some(mask)) = (
        f32_cpu(inp.q)?,
        f32_cpu(inp.k)?,
        f32_cpu(inp.v)?,
        f32_cpu(inp.mask)?,
    ) else {
        return Ok(None);
    };
    let d = Dims::of(&q, &k)?;
    let shared = mask.dims() == [d.p, d.t];
    if v.dims() != k.dims() || !(shared || mask.dims() == [d.b, 1, d.p, d.t]) {
        return Ok(None);
    }
    Ok(Some((d, [q, k, v, mask])))
}

/// Attention `z [batch, pos, head, d_head]` of `inp` in one pass per `(batch, head)` on every
/// core (see the module docs), or `None` where the kernel does not apply.
///
/// # Errors
/// A raw [`LensError::Candle`] when `q` or `k` is not 4-D (f32 CPU inputs; others give `Ok(None)`).
/// [`LensError::Mismatch`] when `k` does not have `q`'s batch and `d_head` or the heads are not
/// a multiple of its kv heads.
pub(crate) fn attention_z(inp: &AttnInputs) -> Result<Option<Tensor>> {
    let Some((d, [q, k, v, mask])) = prepare(inp)? else {
        return Ok(None);
    };
    let knobs = (inp.scale as f32, inp.softcap.map(|c| c as f32));
    let n = d.b * d.p * d.h * d.dh;
    let mut z: Vec<f32> = Vec::with_capacity(n);
    let zp = Out(z.as_mut_ptr());
    let (gq, gk, gv, gm) = (
        q.storage_and_layout(),
        k.storage_and_layout(),
        v.storage_and_layout(),
        mask.storage_and_layout(),
    );
    let (qs, ks, vs, ms) = (
        slice(&gq.0, gq.1)?,
        slice(&gk.0, gk.1)?,
        slice(&gv.0, gv.1)?,
        slice(&gm.0, gm.1)?,
    );
    for_units(d, |u, s| {
        let (qo, ko) = d.offsets(u);
        // SAFETY: the offsets stay inside q, k, v and z (their shapes are d's); unit u writes
        // only the z rows of its (batch, head).
        unsafe {
            unit_scores(
                d,
                qs.as_ptr().add(qo),
                ks.as_ptr().add(ko),
                d.mask_of(ms, u),
                knobs,
                s.as_mut_ptr(),
            );
            softmax_rows(s, d.t);
            unit_values(d, s, vs.as_ptr().add(ko), zp.ptr().add(qo));
        }
    });
    drop((gq, gk, gv, gm));
    // SAFETY: the units cover every (batch, head) and each wrote all p × dh of its z entries.
    unsafe { z.set_len(n) };
    Ok(Some(Tensor::from_vec(
        z,
        (d.b, d.p, d.h, d.dh),
        q.device(),
    )?))
}

/// The masked, scaled scores `[batch, head, pos, t]` of `inp` (what `hook_attn_scores` sees),
/// or `None` where the kernel does not apply.
///
/// # Errors
/// A raw [`LensError::Candle`] when `q` or `k` is not 4-D (f32 CPU inputs; others give `Ok(None)`).
/// [`LensError::Mismatch`] when `k` does not have `q`'s batch and `d_head` or the heads are not
/// a multiple of its kv heads.
pub(crate) fn scores(inp: &AttnInputs) -> Result<Option<Tensor>> {
    let Some((d, [q, k, _, mask])) = prepare(inp)? else {
        return Ok(None);
    };
    let knobs = (inp.scale as f32, inp.softcap.map(|c| c as f32));
    let n = d.b * d.h * d.p * d.t;
    // every entry is written by its unit's gemm: no zero fill first
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let (gq, gk, gm) = (
        q.storage_and_layout(),
        k.storage_and_layout(),
        mask.storage_and_layout(),
    );
    let (qs, ks, ms) = (
        slice(&gq.0, gq.1)?,
        slice(&gk.0, gk.1)?,
        slice(&gm.0, gm.1)?,
    );
    let op = Out(out.as_mut_ptr());
    let pt = d.p * d.t;
    for_units(d, |u, _| {
        let (qo, ko) = d.offsets(u);
        // SAFETY: the offsets stay inside q and k (their shapes are d's); unit u writes only
        // its own [p, t] block of `out`.
        unsafe {
            let s = op.ptr().add(u * pt);
            unit_scores(
                d,
                qs.as_ptr().add(qo),
                ks.as_ptr().add(ko),
                d.mask_of(ms, u),
                knobs,
                s,
            )
        }
    });
    drop((gq, gk, gm));
    // SAFETY: the units cover every (batch, head) block and each wrote all p × t entries.
    unsafe { out.set_len(n) };
    Ok(Some(Tensor::from_vec(
        out,
        (d.b, d.h, d.p, d.t),
        q.device(),
    )?))
}

/// `z [batch, pos, head, d_head]` from `pattern [batch, head, pos, t]` and the values
/// `v [batch, t, kv_head, d_head]`, or `None` where the kernel does not apply.
///
/// # Errors
/// A raw [`LensError::Candle`] when `pattern` or `v` is not 4-D (f32 CPU inputs; others give
/// `Ok(None)`); a batch, `t` or head count that does not match gives `Ok(None)`.
pub(crate) fn weighted_values(pattern: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    let (Some(pat), Some(v)) = (f32_cpu(pattern)?, f32_cpu(v)?) else {
        return Ok(None);
    };
    let (b, h, p, t) = pat.dims4()?;
    let (vb, vt, kv, dh) = v.dims4()?;
    if vb != b || vt != t || kv == 0 || h % kv != 0 {
        return Ok(None);
    }
    let d = Dims { b, p, t, h, kv, dh };
    let n = b * p * h * dh;
    let mut z: Vec<f32> = Vec::with_capacity(n);
    let zp = Out(z.as_mut_ptr());
    let (gp, gv) = (pat.storage_and_layout(), v.storage_and_layout());
    let (ps, vs) = (slice(&gp.0, gp.1)?, slice(&gv.0, gv.1)?);
    for_units(d, |u, _| {
        let (qo, ko) = d.offsets(u);
        // SAFETY: as in attention_z.
        unsafe {
            unit_values(
                d,
                &ps[u * p * t..(u + 1) * p * t],
                vs.as_ptr().add(ko),
                zp.ptr().add(qo),
            )
        }
    });
    drop((gp, gv));
    // SAFETY: every (batch, head) unit wrote its p × dh entries.
    unsafe { z.set_len(n) };
    Ok(Some(Tensor::from_vec(z, (b, p, h, dh), pat.device())?))
}

/// The two matrix products of attention alone, `(q kᵀ) v` per `(batch, head)` with no mask
/// or softmax between them, the way [`attention_z`] runs them: `[batch, pos, head, d_head]`
/// for `q [batch, pos, head, d_head]` and `k`, `v [batch, t, kv_head, d_head]`. The matmul
/// floor of attention (`lens bench forward --floor`), not attention itself. `None` where the
/// kernel does not apply.
///
/// # Errors
/// A raw [`LensError::Candle`] when `q` or `k` is not 4-D (f32 CPU inputs; others give `Ok(None)`).
/// [`LensError::Mismatch`] when `k` does not have `q`'s batch and `d_head` or the heads are not
/// a multiple of its kv heads.
pub(crate) fn products_only(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    let (Some(q), Some(k), Some(v)) = (f32_cpu(q)?, f32_cpu(k)?, f32_cpu(v)?) else {
        return Ok(None);
    };
    let d = Dims::of(&q, &k)?;
    if v.dims() != k.dims() {
        return Ok(None);
    }
    let n = d.b * d.p * d.h * d.dh;
    let mut z: Vec<f32> = Vec::with_capacity(n);
    let zp = Out(z.as_mut_ptr());
    let (gq, gk, gv) = (
        q.storage_and_layout(),
        k.storage_and_layout(),
        v.storage_and_layout(),
    );
    let (qs, ks, vs) = (
        slice(&gq.0, gq.1)?,
        slice(&gk.0, gk.1)?,
        slice(&gv.0, gv.1)?,
    );
    for_units(d, |u, s| {
        let (qo, ko) = d.offsets(u);
        // SAFETY: as in attention_z.
        unsafe {
            unit_qk(
                d,
                qs.as_ptr().add(qo),
                ks.as_ptr().add(ko),
                1.0,
                s.as_mut_ptr(),
            );
            unit_values(d, s, vs.as_ptr().add(ko), zp.ptr().add(qo));
        }
    });
    drop((gq, gk, gv));
    // SAFETY: every (batch, head) unit wrote its p × dh entries.
    unsafe { z.set_len(n) };
    Ok(Some(Tensor::from_vec(
        z,
        (d.b, d.p, d.h, d.dh),
        q.device(),
    )?))
}

/// The matrix products of attention alone — `(q kᵀ) v` per `(batch, head)`, no scale, mask
/// or softmax — run the way the forward's attention kernel runs them, for `q [batch, pos,
/// head, d_head]` and `k`, `v [batch, t, kv_head, d_head]` (f32 on the CPU; candle's batched
/// products elsewhere). What `lens bench forward --floor` times as attention's share of the
/// matmul floor.
///
/// # Errors
/// A raw [`LensError::Candle`] when a tensor is not 4-D or (off the f32 CPU path) the shapes do not
/// line up; [`LensError::Mismatch`] on the f32 CPU path when `k` does not have `q`'s batch and
/// `d_head`.
pub(crate) fn attention_products(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if let Some(z) = products_only(q, k, v)? {
        return Ok(z);
    }
    let (h, kv) = (q.dim(2)?, k.dim(2)?);
    let per_head = |x: &Tensor| -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        let (b, _, t, dh) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .expand((b, kv, h / kv.max(1), t, dh))?
            .reshape((b, h, t, dh))?)
    };
    let qt = q.transpose(1, 2)?.contiguous()?;
    let s = qt.matmul(&per_head(k)?.t()?)?;
    Ok(s.matmul(&per_head(v)?)?.transpose(1, 2)?.contiguous()?)
}

#[cfg(test)]
mod tests;
