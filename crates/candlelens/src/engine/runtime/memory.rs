//! How much memory a run will take, estimated from the model's shapes before anything is
//! allocated, and the check that refuses a run the machine cannot hold — naming the estimate,
//! what is available and what to change — instead of letting the system kill it half-way.
//!
//! The estimates count what a run holds at its peak beyond the weights, in the model's dtype:
//! - a forward: the activations of about one block, the attention mask `[pos, pos]` (one per
//!   prompt when the batch is padded) and the logits (every position, or the last);
//! - a cache: the forward plus every cached activation, each hook point's shape at `[batch,
//!   pos]` (attention patterns are `[batch, head, pos, pos]`: they grow with the square of the
//!   prompt);
//! - gradients (attribution patching, SAE feature attribution, edge attribution): everything
//!   the backward pass reads, per block about 14 values per token for each of `d_model` and
//!   `d_mlp` and 9 per entry of a `[head, pos, pos]` pattern — measured with peak RSS on
//!   SmolLM2-135M (prompts of 150-600 tokens, the fit within 5 %), which puts a 1,200-token
//!   prompt at the 19 GB that such a run was seen to reach.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::config::ModelConfig;
use crate::engine::hooks::{HookAxis, HookPoint};
use crate::error::{LensError, Result};

/// What a run keeps while it computes.
pub enum Workload<'a> {
    /// A forward that keeps nothing: logits at every position (`all_logits`) or at the last.
    Forward {
        /// Logits `[batch, pos, d_vocab]` rather than `[batch, d_vocab]`.
        all_logits: bool,
    },
    /// A forward that caches every hook point `wants` selects.
    Cache {
        /// The hook points the cache keeps.
        wants: &'a dyn Fn(&HookPoint) -> bool,
        /// Logits at every position.
        all_logits: bool,
    },
    /// A forward and a backward pass through every block; `split_heads` when the run keeps
    /// each head's query, key and value inputs apart (edge attribution).
    Gradients {
        /// Per-head `[batch, pos, head, d_model]` inputs and their gradients are kept.
        split_heads: bool,
    },
}

/// A cap on what a run may plan to use, in bytes (0: none).
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Caps the memory any run may plan to use at `bytes` (`None`: only what the machine has
/// available) — for a shared machine where a run should stay within its share. Runs whose
/// estimate exceeds the cap (or the machine's available memory, whichever is less) are refused
/// with [`LensError::TooMuchMemory`] before they allocate.
pub fn set_memory_limit(bytes: Option<u64>) {
    LIMIT.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// The memory a run may use now: the machine's available memory (Linux `MemAvailable`), or the
/// cap of [`set_memory_limit`] where that is less; `None` where neither is known.
pub fn available_memory() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (LIMIT.load(Ordering::Relaxed), machine) {
        (0, m) => m,
        (cap, Some(m)) => Some(cap.min(m)),
        (cap, None) => Some(cap),
    }
}

/// The values an activation with `axes` holds for `batch` prompts of `pos` tokens.
fn values(axes: &[HookAxis], batch: u64, pos: u64) -> u64 {
    axes.iter()
        .map(|a| match a {
            HookAxis::Batch => batch,
            HookAxis::Pos | HookAxis::KeyPos => pos,
            HookAxis::Size(n) => *n as u64,
        })
        .fold(1u64, u64::saturating_mul)
}

/// The bytes a run of `workload` on `batch` prompts of (padded) length `pos` needs at its peak
/// beyond the weights, in `bytes_per_value`-sized values (4 for f32). See the module docs.
pub fn estimate(
    cfg: &ModelConfig,
    batch: usize,
    pos: usize,
    padded: bool,
    bytes_per_value: usize,
    workload: &Workload,
) -> u64 {
    let (b, p) = (batch as u64, pos as u64);
    let (dm, dmlp, h, v, l) = (
        cfg.d_model as u64,
        cfg.d_mlp as u64,
        cfg.n_heads as u64,
        cfg.d_vocab as u64,
        cfg.n_layers as u64,
    );
    let masks = if padded { b } else { 1 } * p * p;
    let block = 8 * b * p * (dm + dmlp);
    let logits = |all: bool| b * if all { p } else { 1 } * v;
    let n = match workload {
        Workload::Forward { all_logits } => masks + block + logits(*all_logits),
        Workload::Cache { wants, all_logits } => {
            let kept: u64 = HookPoint::all_for(cfg)
                .iter()
                .filter(|(hp, _)| wants(hp))
                .filter_map(|(hp, _)| hp.axes(cfg))
                .map(|axes| values(&axes, b, p))
                .fold(0, u64::saturating_add);
            masks + block + logits(*all_logits) + kept
        }
        Workload::Gradients { split_heads } => {
            let heads = if *split_heads { 6 * b * p * h * dm } else { 0 };
            let per_block = 14 * b * p * (dm + dmlp) + 9 * b * h * p * p + heads;
            masks + l.saturating_mul(per_block) + 2 * logits(false)
        }
    };
    n.saturating_mul(bytes_per_value as u64)
}

/// Runs below this are never checked (no read of `/proc/meminfo` on the hot path).
const SMALL: u64 = 256 << 20;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses `estimate` bytes for `what` when more than `available` is free.
///
/// # Errors
/// [`LensError::TooMuchMemory`] with the estimate, what is available and `fix`.
pub(crate) fn check_estimate(
    estimate: u64,
    available: Option<u64>,
    what: &str,
    fix: &str,
) -> Result<()> {
    match available {
        Some(a) if estimate > a => Err(LensError::TooMuchMemory {
            what: what.to_string(),
            need: gib(estimate),
            available: gib(a),
            fix: fix.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Refuses a run whose estimate ([`estimate`]) exceeds the memory available now
/// ([`available_memory`]); runs under 256 MiB are not checked.
///
/// # Errors
/// [`LensError::TooMuchMemory`] naming `what`, the estimate, what is available and the fix for
/// the workload (shorter prompts, fewer per batch, fewer cached points).
pub(crate) fn ensure_fits(
    cfg: &ModelConfig,
    batch: usize,
    pos: usize,
    padded: bool,
    bytes_per_value: usize,
    workload: &Workload,
) -> Result<()> {
    let need = estimate(cfg, batch, pos, padded, bytes_per_value, workload);
    if need < SMALL {
        return Ok(());
    }
    let (what, fix) = match workload {
        Workload::Forward { .. } => (
            format!("a forward of {batch} prompt(s) of {pos} tokens"),
            "run fewer prompts per batch (or shorter ones); read only the logits you need (last_logits, LogitsAt::Last)",
        ),
        Workload::Cache { .. } => (
            format!("caching {batch} prompt(s) of {pos} tokens"),
            "cache only the hook points you need (a HookFilter; attention patterns grow with the square of the prompt), fewer prompts per batch, or shorter prompts",
        ),
        Workload::Gradients { .. } => (
            format!("a run with gradients on {batch} prompt(s) of {pos} tokens"),
            "a backward pass keeps every block's attention pattern, which grows with the square of the prompt: shorten the prompts (half the length needs about a quarter of that), attribute fewer prompts per batch, or use exact patching (Patcher), which keeps no gradients",
        ),
    };
    check_estimate(need, available_memory(), &what, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_shapes_count_their_values() {
        use HookAxis::*;
        assert_eq!(values(&[Batch, Pos, Size(576)], 2, 10), 11_520);
        assert_eq!(values(&[Batch, Size(9), Pos, KeyPos], 1, 100), 90_000);
        assert_eq!(values(&[Batch, Pos, Size(9), Size(576)], 1, 2), 10_368);
    }

    #[test]
    fn an_estimate_over_what_is_available_is_refused_with_both_numbers() {
        let e = check_estimate(20 << 30, Some(8 << 30), "a run", "do less").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("20.0 GiB") && text.contains("8.0 GiB") && text.contains("do less"),
            "{text}"
        );
        assert!(check_estimate(1 << 30, Some(8 << 30), "a run", "").is_ok());
        assert!(check_estimate(1 << 40, None, "a run", "").is_ok());
    }
}
