//! Runs that would exhaust memory are refused before they allocate, with the estimate, what is
//! available and the fix; the estimate of a run with gradients against the peak RSS measured on
//! SmolLM2-135M. Its own test binary: the memory cap is process-wide.

mod common;

use candlelens::memory::{self, Workload};
use candlelens::prelude::*;
use common::*;

/// `n` prompts of the tiny model's full context.
fn long_batch(m: &HookedTransformer, n: usize, shift: u32) -> Tokens {
    let rows = (0..n)
        .map(|r| {
            (0..m.cfg.n_ctx)
                .map(|j| ((j as u32 * 7 + r as u32 + shift) % 250) + 3)
                .collect()
        })
        .collect();
    Tokens::new(rows, 0).unwrap()
}

#[test]
fn runs_over_the_memory_cap_are_refused_before_they_allocate() {
    let m = tiny("llama");
    let (clean, corrupt) = (long_batch(&m, 16, 0), long_batch(&m, 16, 1));
    let need = memory::estimate(
        &m.cfg,
        16,
        m.cfg.n_ctx,
        false,
        4,
        &Workload::Gradients { split_heads: false },
    );
    assert!(need > 300 << 20, "{need}");
    memory::set_memory_limit(Some(300 << 20));
    let metric = metrics::logit_diff_grad_metric(&[(5, 6)]);
    let err = AttributionPatcher::new(&m, &clean, &corrupt, metric)
        .err()
        .expect("attributed past the cap");
    let text = err.to_string();
    assert!(matches!(err, LensError::TooMuchMemory { .. }), "{err:?}");
    assert!(
        text.contains("16 prompt(s) of 256 tokens") && text.contains("shorten the prompts"),
        "{text}"
    );
    // a cache of every point (patterns are [batch, head, pos, pos]) is refused; the residual
    // stream alone fits
    let big = long_batch(&m, 64, 0);
    let err = m
        .run_with_cache(&big, None)
        .expect_err("cached past the cap");
    assert!(err.to_string().contains("HookFilter"), "{err}");
    let resid = HookFilter::Predicate(Box::new(|hp| hp.suffix() == "hook_resid_pre"));
    assert!(m.run_with_cache(&big, Some(resid)).is_ok());
    memory::set_memory_limit(None);
    // the same attribution runs once the cap is lifted (on any machine with 1 GiB free)
    let short = |t: &Tokens| Tokens::new(t.rows()[..2].to_vec(), 0).unwrap();
    let metric = metrics::logit_diff_grad_metric(&[(5, 6)]);
    assert!(AttributionPatcher::new(&m, &short(&clean), &short(&corrupt), metric).is_ok());
}

/// Peak RSS of `lens attribute` on SmolLM2-135M (f32, one prompt pair of n tokens) minus
/// the RSS of loading it, measured on 2026-12-02 with /usr/bin/time (2 cores, 24 GiB).
const MEASURED_GIB: [(usize, f64); 3] = [(148, 0.72), (295, 1.81), (596, 5.29)];

#[test]
fn the_gradient_estimate_follows_the_measured_peak() {
    let m = model("smollm2-135m");
    for (p, measured) in MEASURED_GIB {
        let est = memory::estimate(
            &m.cfg,
            1,
            p,
            false,
            4,
            &Workload::Gradients { split_heads: false },
        ) as f64
            / (1u64 << 30) as f64;
        assert!(
            (est / measured - 1.0).abs() < 0.2,
            "{p} tokens: estimate {est:.2} GiB, measured {measured:.2} GiB"
        );
    }
}
