//! The fast patching sweep equals the naive one-forward-per-cell method on every target and
//! across architectures (learned positions, LayerNorm, parallel blocks, post-norms, sliding
//! windows, GQA), for a batch of prompts.

mod common;

use std::sync::Arc;

use candlelens::metrics;
use candlelens::prelude::*;
use candlelens::tokens::Padding;
use common::*;

/// Clean prompts and corruptions that change two token positions.
fn pair(m: &HookedTransformer) -> (Tokens, Tokens) {
    let (clean, corrupt) = corrupted_pair(m, |n| n / 2);
    assert!(clean.is_rectangular() || clean.lengths()[0] != clean.lengths()[1]);
    (clean, corrupt)
}

fn compare(
    m: &Arc<HookedTransformer>,
    clean: &Tokens,
    corrupt: &Tokens,
    pairs: &[(u32, u32)],
    targets: &[PatchTarget],
) {
    let mut p = Patcher::new(m, clean, corrupt, metrics::logit_diff_metric(pairs)).unwrap();
    p.progress = false;
    let gap = (p.clean_metric() - p.corrupted_metric()).abs();
    assert!(
        gap > 1e-3,
        "{}: clean and corrupted runs are too alike",
        m.cfg.name
    );
    let tol = 1e-4 * (1.0f32).max(1.0 / gap);
    for &t in targets {
        let fast = p.sweep(t).unwrap();
        let naive = p.naive_sweep(t).unwrap();
        assert_eq!(fast.row_labels, naive.row_labels);
        assert_eq!(fast.col_labels, naive.col_labels);
        let mut worst = 0f32;
        for (fr, nr) in fast.values.iter().zip(&naive.values) {
            for (f, n) in fr.iter().zip(nr) {
                worst = worst.max((f - n).abs());
            }
        }
        assert!(
            worst <= tol,
            "{} {:?}: fast vs naive differ by {worst}",
            m.cfg.name,
            t
        );
        assert!(
            fast.forward_equivalents < naive.forward_equivalents,
            "{:?}",
            t
        );
        // the corruption reaches every head's inputs: some cells move
        assert!(
            fast.values.iter().flatten().any(|v| v.abs() > 1e-6),
            "{} {t:?}: an all-zero grid",
            m.cfg.name
        );
        eprintln!(
            "{} {:>12}: max |fast - naive| {worst:.1e}, {:.1} vs {} forward-equivalents",
            m.cfg.name,
            t.name(),
            fast.forward_equivalents,
            naive.naive_forwards
        );
    }
}

const ALL: &[PatchTarget] = &[
    PatchTarget::ResidPre,
    PatchTarget::ResidMid,
    PatchTarget::ResidPost,
    PatchTarget::AttnOut,
    PatchTarget::MlpOut,
    PatchTarget::HeadsAllPos,
    PatchTarget::HeadsByPos,
    PatchTarget::Q,
    PatchTarget::K,
    PatchTarget::V,
    PatchTarget::Pattern,
];

#[test]
fn fast_sweep_equals_naive_on_every_architecture() {
    for family in [
        "gpt2",
        "gpt_neo",
        "llama",
        "mistral",
        "phi3",
        "olmo2",
        "qwen3",
        "gemma2",
        "gemma3",
        "mixtral",
        "qwen2_moe",
    ] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        compare(&m, &clean, &corrupt, &[(5, 9)], ALL);
    }
    // parallel attention + MLP has no resid_mid (GPT-J, Phi-2: one norm; GPT-NeoX: one per
    // branch)
    let no_mid: Vec<PatchTarget> = ALL
        .iter()
        .copied()
        .filter(|t| *t != PatchTarget::ResidMid)
        .collect();
    for family in ["neox", "phi"] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        compare(&m, &clean, &corrupt, &[(5, 9)], &no_mid);
    }
    let m = tiny("gptj");
    let (clean, corrupt) = pair(&m);
    compare(&m, &clean, &corrupt, &[(5, 9)], &no_mid);
    let metric: candlelens::patching::Metric =
        Box::new(|l| Ok(metrics::mean(&metrics::logit_diff(l, &[(5, 9)])?)));
    let p = Patcher::new(&m, &clean, &corrupt, metric).unwrap();
    assert!(p.sweep(PatchTarget::ResidMid).is_err());
}

#[test]
fn left_padded_batches_patch_exactly() {
    // pads first: the sweep's runs share per-prompt masks and positions with the naive runs
    for family in ["gpt2", "llama", "gemma2", "mixtral"] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let left = |t: &Tokens| {
            Tokens::with_padding(t.rows().to_vec(), t.pad_id(), Padding::Left).unwrap()
        };
        let (clean, corrupt) = (left(&clean), left(&corrupt));
        assert!(
            clean.has_leading_pads(),
            "{family}: the prompts must differ in length"
        );
        compare(&m, &clean, &corrupt, &[(5, 9)], ALL);
    }
}

#[test]
fn fast_sweep_equals_naive_on_a_real_model() {
    // SmolLM2-135M, 30 layers: the full naive grid is 720 forwards, so check a sample of cells
    let m = model("smollm2-135m");
    let clean = m
        .to_tokens(
            "Mary is a human. Fido is a dog. Rachel is a human. Tom is a cat. The cat is",
            None,
        )
        .unwrap();
    let corrupt = m
        .to_tokens(
            "Mary is a human. Fido is a dog. Rachel is a cat. Tom is a human. The cat is",
            None,
        )
        .unwrap();
    let pairs = vec![(
        m.to_single_token(" Tom").unwrap(),
        m.to_single_token(" Rachel").unwrap(),
    )];
    let metric: candlelens::patching::Metric =
        Box::new(move |l| Ok(metrics::mean(&metrics::logit_diff(l, &pairs)?)));
    let mut p = Patcher::new(m, &clean, &corrupt, metric).unwrap();
    p.progress = false;
    let gap = (p.clean_metric() - p.corrupted_metric()).abs();
    for t in [PatchTarget::ResidPre, PatchTarget::AttnOut] {
        let fast = p.sweep(t).unwrap();
        assert!(
            fast.forward_equivalents * 20.0 < fast.naive_forwards as f64,
            "{:?}: {} fe",
            t,
            fast.forward_equivalents
        );
        let n = clean.max_len();
        for (l, pos) in [
            (0, 11),
            (0, n - 1),
            (7, 12),
            (15, 13),
            (22, 15),
            (29, n - 1),
            (29, 3),
        ] {
            let naive = p.naive(t, l, pos).unwrap();
            let d = (fast.values[l][pos] - naive).abs() * gap.min(1.0);
            assert!(
                d <= 1e-4,
                "{t:?} ({l}, {pos}): fast {} naive {naive}",
                fast.values[l][pos]
            );
        }
    }
}

#[test]
fn patching_errors_are_typed() {
    let m = tiny("llama");
    let a = m.to_tokens("The pet of this family is", None).unwrap();
    let b = m.to_tokens("The pet is", None).unwrap();
    let metric: candlelens::patching::Metric =
        Box::new(|l| Ok(metrics::mean(&metrics::logit_diff(l, &[(5, 9)])?)));
    let err = Patcher::new(&m, &a, &b, metric).err().unwrap();
    assert!(err.to_string().contains("Alignment::LastK"), "{err}");
    // a corruption or answers that leave the metric unchanged: no grid of NaN or zeros
    let (clean, corrupt) = pair(&m);
    let same = Patcher::new(&m, &clean, &clean, metrics::logit_diff_metric(&[(5, 9)])).unwrap();
    let err = same.sweep(PatchTarget::ResidPre).unwrap_err();
    assert!(matches!(err, LensError::NoEffect { .. }), "{err}");
    let equal_answers =
        Patcher::new(&m, &clean, &corrupt, metrics::logit_diff_metric(&[(5, 5)])).unwrap();
    assert!(matches!(
        equal_answers.sweep(PatchTarget::AttnOut),
        Err(LensError::NoEffect { .. })
    ));
    assert!(equal_answers.naive(PatchTarget::AttnOut, 0, 0).is_err());
    // `lens patch` exits non-zero with the fix instead of panicking or printing NaN
    let dir = fixture_path("tiny/llama");
    for answers in [vec![], vec![" a", " a"]] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lens"));
        cmd.args([
            "patch",
            "--model",
            dir.to_str().unwrap(),
            "--clean",
            "The pet of this family is",
            "--corrupt",
            "The cat of this family is",
        ]);
        if !answers.is_empty() {
            cmd.arg("--answers").args(&answers);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{answers:?}: {stderr}");
        assert!(stderr.contains("--answers"), "{answers:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(PatchTarget::parse("resid_pro").is_err());
    assert_eq!(
        PatchTarget::parse("hook_resid_pre").unwrap(),
        PatchTarget::ResidPre
    );
}

#[test]
fn a_patchers_hooks_apply_to_every_run() {
    // zero-ablate block 0's MLP in every run; each cell = a hand-built run with the ablation
    // and the clean (ablated) activation patched in
    for family in ["gpt2", "llama"] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let ablate = || {
            let mut h = Hooks::new();
            h.add("blocks.0.hook_mlp_out", |a, _| Ok(Some(a.zeros_like()?)))
                .unwrap();
            h
        };
        let mut p = Patcher::with_hooks(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_metric(&[(5, 9)]),
            ablate(),
        )
        .unwrap();
        p.progress = false;
        let plain =
            Patcher::new(&m, &clean, &corrupt, metrics::logit_diff_metric(&[(5, 9)])).unwrap();
        // the ablation changes the metric: the hooks ran
        assert!(
            (p.clean_metric() - plain.clean_metric()).abs() > 1e-4,
            "{family}"
        );
        let metric = metrics::logit_diff_metric(&[(5, 9)]);
        let hooked_metric = |tokens: &Tokens, patch: Option<(usize, usize)>| -> f32 {
            let mut h = ablate();
            if let Some((l, pos)) = patch {
                let name = format!("blocks.{l}.hook_resid_pre");
                let src = p
                    .clean_cache()
                    .get(&name)
                    .unwrap()
                    .narrow(1, pos, 1)
                    .unwrap();
                h.add(&name, move |a, _| {
                    let (b, _, d) = a.dims3()?;
                    Ok(Some(a.slice_assign(&[0..b, pos..pos + 1, 0..d], &src)?))
                })
                .unwrap();
            }
            let logits = m.run_with_hooks(tokens, &mut h).unwrap();
            metric(&m.gather_last(&logits, tokens).unwrap()).unwrap()
        };
        assert!((hooked_metric(&clean, None) - p.clean_metric()).abs() < 1e-5);
        assert!((hooked_metric(&corrupt, None) - p.corrupted_metric()).abs() < 1e-5);
        let grid = p.sweep(PatchTarget::ResidPre).unwrap();
        let (lo, hi) = (p.corrupted_metric(), p.clean_metric());
        for (l, pos) in [(0, 1), (1, clean.max_len() - 1), (1, 2)] {
            let want = (hooked_metric(&corrupt, Some((l, pos))) - lo) / (hi - lo);
            let got = grid.values[l][pos];
            assert!(
                (got - want).abs() < 1e-4,
                "{family} ({l},{pos}): {got} vs {want}"
            );
        }
        // path patching cannot honour a patcher's own hooks: a typed error, not a silent drop
        let path = PathPatcher::from_patcher(p);
        assert!(matches!(
            path.patch(&[(0, 0)], &Receivers::Logits),
            Err(LensError::Unsupported { .. })
        ));
    }
}

#[test]
fn a_dataset_patched_in_batches_is_the_dataset_patched_at_once() {
    for family in ["gpt2", "llama"] {
        let m = tiny(family);
        // four pairs of three lengths: two corruptions of the pet and Paris prompts
        let (c1, k1) = corrupted_pair(&m, |n| n / 2);
        let (c2, k2) = corrupted_pair(&m, |n| n / 3);
        let cat = |a: &Tokens, b: &Tokens| {
            let mut rows = a.rows().to_vec();
            rows.extend(b.rows().iter().cloned());
            Tokens::new(rows, a.pad_id()).unwrap()
        };
        let (clean, corrupt) = (cat(&c1, &c2), cat(&k1, &k2));
        let make = |_: std::ops::Range<usize>| {
            Ok((
                metrics::logit_diff_metric(&[(5, 9)]),
                candlelens::patching::PatchOptions::default(),
            ))
        };
        for target in [PatchTarget::ResidPre, PatchTarget::HeadsAllPos] {
            let all = Patcher::new(&m, &clean, &corrupt, metrics::logit_diff_metric(&[(5, 9)]))
                .unwrap()
                .sweep(target)
                .unwrap();
            for batch_size in [1, 3] {
                let d =
                    Patcher::sweep_dataset(&m, &clean, &corrupt, target, batch_size, make).unwrap();
                assert_eq!(d.mean.values.len(), all.values.len());
                let gap = (all.clean - all.corrupted).abs();
                for (x, y) in d
                    .mean
                    .values
                    .iter()
                    .flatten()
                    .zip(all.values.iter().flatten())
                {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0f32).max(1.0 / gap),
                        "{family} {target:?} by {batch_size}: {x} vs {y}"
                    );
                }
                assert!((d.mean.clean - all.clean).abs() < 1e-5);
                // each batch's grid is its own patcher's
                for (g, r) in d.per_batch.iter().zip(&d.batches) {
                    let slice =
                        |t: &Tokens| Tokens::new(t.rows()[r.clone()].to_vec(), t.pad_id()).unwrap();
                    let own = Patcher::new(
                        &m,
                        &slice(&clean),
                        &slice(&corrupt),
                        metrics::logit_diff_metric(&[(5, 9)]),
                    )
                    .unwrap()
                    .sweep(target)
                    .unwrap();
                    assert_eq!(g.values, own.values, "{family} {target:?} {r:?}");
                }
            }
        }
        assert!(
            Patcher::sweep_dataset(&m, &clean, &corrupt, PatchTarget::ResidPre, 0, make).is_err()
        );
    }
}
