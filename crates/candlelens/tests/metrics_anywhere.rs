//! Patching, path patching and attribution patching with a metric at any positions (or on the
//! loss), and with clean and corrupted prompts of different lengths: the fast sweep equals the
//! one-forward-per-cell method, a cell equals a run built by hand, attribution equals finite
//! differences, and options that cannot apply are typed errors.

mod common;

use std::sync::Arc;

use candlelens::metrics;
use candlelens::prelude::*;
use candlelens::tokens::Padding;
use common::*;

/// Mean over prompts and read positions of `logit[5] − logit[9]`, for logits `[batch, k,
/// d_vocab]`.
fn span_metric() -> metrics::Metric {
    Box::new(|l: &Tensor| {
        assert_eq!(l.rank(), 3, "a span readout gives [batch, k, d_vocab]");
        let d = (l.narrow(2, 5, 1)? - l.narrow(2, 9, 1)?)?;
        Ok(d.mean_all()?.to_scalar::<f32>()?)
    })
}

fn span_grad_metric() -> candlelens::metrics::GradMetric {
    std::rc::Rc::new(|l: &Tensor| Ok((l.narrow(2, 5, 1)? - l.narrow(2, 9, 1)?)?.mean_all()?))
}

fn left(t: &Tokens) -> Tokens {
    Tokens::with_padding(t.rows().to_vec(), t.pad_id(), Padding::Left).unwrap()
}

/// Every target's fast grid against the naive one.
fn fast_equals_naive(p: &Patcher, targets: &[PatchTarget], what: &str) {
    let gap = (p.clean_metric() - p.corrupted_metric()).abs();
    assert!(gap > 1e-3, "{what}: no effect");
    let tol = 1e-4 * (1.0f32).max(1.0 / gap);
    for &t in targets {
        let fast = p.sweep(t).unwrap();
        let naive = p.naive_sweep(t).unwrap();
        let worst = fast
            .values
            .iter()
            .flatten()
            .zip(naive.values.iter().flatten())
            .map(|(f, n)| (f - n).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= tol,
            "{what} {t:?}: fast vs naive differ by {worst}"
        );
        assert!(
            fast.values.iter().flatten().any(|v| v.abs() > 1e-6),
            "{what} {t:?}: an all-zero grid"
        );
    }
}

const TARGETS: &[PatchTarget] = &[
    PatchTarget::ResidPre,
    PatchTarget::AttnOut,
    PatchTarget::MlpOut,
    PatchTarget::HeadsAllPos,
    PatchTarget::HeadsByPos,
    PatchTarget::Q,
    PatchTarget::K,
    PatchTarget::V,
];

#[test]
fn a_metric_on_a_span_or_the_loss_patches_exactly() {
    for family in ["gpt2", "llama", "gemma2"] {
        let m = tiny(family);
        for padding in [Padding::Right, Padding::Left] {
            let (clean, corrupt) = corrupted_pair(&m, |n| n / 2);
            let (clean, corrupt) = match padding {
                Padding::Left => (left(&clean), left(&corrupt)),
                Padding::Right => (clean, corrupt),
            };
            // the last three tokens of each prompt, wherever the padding puts them
            let opts = PatchOptions {
                readout: Readout::Positions(vec![vec![-3, -2, -1]]),
                ..Default::default()
            };
            let p = Patcher::with_options(&m, &clean, &corrupt, span_metric(), opts).unwrap();
            fast_equals_naive(&p, TARGETS, &format!("{family} {padding:?} span"));
            // the span metric by hand on the corrupted run
            let logits = m.forward(&corrupt).unwrap();
            let mut sum = 0f32;
            for b in 0..corrupt.batch() {
                for pos in [-3i64, -2, -1] {
                    let j = corrupt.resolve_pos(b, pos).unwrap();
                    let row = to_vec(&logits.i((b, j)).unwrap());
                    sum += row[5] - row[9];
                }
            }
            let want = sum / (3 * corrupt.batch()) as f32;
            assert!((p.corrupted_metric() - want).abs() < 1e-4, "{family}");
            // the clean text's loss
            let opts = PatchOptions {
                readout: Readout::All,
                ..Default::default()
            };
            let p = Patcher::with_options(&m, &clean, &corrupt, metrics::loss_metric(&clean), opts)
                .unwrap();
            assert!((p.clean_metric() - m.loss(&clean).unwrap()).abs() < 1e-5);
            fast_equals_naive(
                &p,
                &[PatchTarget::ResidPre, PatchTarget::HeadsAllPos],
                &format!("{family} {padding:?} loss"),
            );
        }
    }
}

/// IOI-like pairs whose corruption is longer: one extra token at the start of each prompt.
fn longer_corruption(m: &HookedTransformer) -> (Tokens, Tokens) {
    let (clean, corrupt) = corrupted_pair(m, |n| n / 2);
    let rows: Vec<Vec<u32>> = corrupt
        .rows()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.insert(1, 7);
            r
        })
        .collect();
    (clean, Tokens::new(rows, corrupt.pad_id()).unwrap())
}

#[test]
fn prompts_of_different_lengths_patch_along_an_alignment() {
    for family in ["gpt2", "llama", "mixtral"] {
        let m = tiny(family);
        let (clean, corrupt) = longer_corruption(&m);
        assert_ne!(clean.lengths(), corrupt.lengths());
        let metric = || metrics::logit_diff_metric(&[(5, 9)]);
        // equal positions cannot be assumed: a typed error that names the fix
        let err = Patcher::new(&m, &clean, &corrupt, metric()).err().unwrap();
        assert!(err.to_string().contains("Alignment"), "{err}");
        let k = 4;
        let opts = || PatchOptions {
            alignment: Alignment::LastK(k),
            ..Default::default()
        };
        let p = Patcher::with_options(&m, &clean, &corrupt, metric(), opts()).unwrap();
        fast_equals_naive(&p, TARGETS, &format!("{family} last {k}"));
        let grid = p.sweep(PatchTarget::ResidPre).unwrap();
        // positions without a counterpart are left alone: they score 0
        let first_aligned = corrupt.lengths().iter().map(|n| n - k).min().unwrap();
        for l in 0..m.cfg.n_layers {
            for pos in 0..first_aligned {
                assert_eq!(grid.values[l][pos], 0.0, "{family} ({l}, {pos})");
            }
        }
        // explicit pairs: the same alignment spelled out per prompt
        let pairs: Vec<Vec<(usize, usize)>> = (0..corrupt.batch())
            .map(|b| {
                let (nc, nk) = (corrupt.lengths()[b], clean.lengths()[b]);
                (1..=k).map(|j| (nc - j, nk - j)).collect()
            })
            .collect();
        let explicit = Patcher::with_options(
            &m,
            &clean,
            &corrupt,
            metric(),
            PatchOptions {
                alignment: Alignment::Pairs(pairs),
                ..Default::default()
            },
        )
        .unwrap();
        let g2 = explicit.sweep(PatchTarget::ResidPre).unwrap();
        assert_eq!(g2.values, grid.values, "{family}");
        // a pattern has no one position to move
        assert!(matches!(
            p.sweep(PatchTarget::Pattern),
            Err(LensError::Unsupported { .. })
        ));
    }
}

#[test]
fn a_single_prompt_cell_under_an_alignment_is_the_hand_built_run() {
    let m = tiny("llama");
    let clean = m.tokens_from_ids(vec![1, 5, 9, 17, 33, 2, 40, 8]).unwrap();
    let corrupt = m
        .tokens_from_ids(vec![1, 7, 7, 5, 12, 17, 33, 2, 40, 8])
        .unwrap();
    let metric = || metrics::logit_diff_metric(&[(5, 9)]);
    let pairs = vec![vec![(0, 0), (3, 1), (5, 3), (9, 7), (8, 6)]];
    let p = Patcher::with_options(
        &m,
        &clean,
        &corrupt,
        metric(),
        PatchOptions {
            alignment: Alignment::Pairs(pairs.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, cc) = m.run_with_cache(&clean, None).unwrap();
    let (lo, hi) = (p.corrupted_metric(), p.clean_metric());
    for t in [PatchTarget::ResidPre, PatchTarget::MlpOut] {
        let grid = p.sweep(t).unwrap();
        for l in 0..m.cfg.n_layers {
            for &(co, cl) in &pairs[0] {
                let name = match t {
                    PatchTarget::ResidPre => format!("blocks.{l}.hook_resid_pre"),
                    _ => format!("blocks.{l}.hook_mlp_out"),
                };
                let src = cc.get(&name).unwrap().narrow(1, cl, 1).unwrap();
                let mut hooks = Hooks::new();
                hooks
                    .add(&name, move |a, _| {
                        let d = a.dim(2)?;
                        Ok(Some(a.slice_assign(&[0..1, co..co + 1, 0..d], &src)?))
                    })
                    .unwrap();
                let logits = m.run_with_hooks(&corrupt, &mut hooks).unwrap();
                let v = metric()(&m.gather_last(&logits, &corrupt).unwrap()).unwrap();
                let want = (v - lo) / (hi - lo);
                assert!(
                    (grid.values[l][co] - want).abs() < 1e-4,
                    "{t:?} ({l}, {co}): {} vs {want}",
                    grid.values[l][co]
                );
            }
        }
    }
    // bad alignments are typed errors
    for bad in [
        Alignment::Pairs(vec![vec![(10, 0)]]),
        Alignment::Pairs(vec![vec![(1, 0), (1, 2)]]),
        Alignment::Pairs(vec![vec![], vec![]]),
        Alignment::LastK(0),
    ] {
        let opts = PatchOptions {
            alignment: bad.clone(),
            ..Default::default()
        };
        let err = Patcher::with_options(&m, &clean, &corrupt, metric(), opts).err();
        assert!(
            matches!(
                err,
                Some(LensError::Mismatch { .. } | LensError::BadParameter { .. })
            ),
            "{bad:?}: {err:?}"
        );
    }
    // a readout past a prompt's end
    let opts = PatchOptions {
        readout: Readout::Positions(vec![vec![-20]]),
        ..Default::default()
    };
    assert!(Patcher::with_options(&m, &clean, &clean, metric(), opts).is_err());
}

#[test]
fn path_patching_reads_the_metric_at_any_positions() {
    for family in ["gpt2", "llama"] {
        let m = tiny(family);
        let (clean, corrupt) = corrupted_pair(&m, |n| n / 2);
        let opts = PatchOptions {
            readout: Readout::Positions(vec![vec![-2, -1]]),
            ..Default::default()
        };
        let p = Patcher::with_options(&m, &clean, &corrupt, span_metric(), opts).unwrap();
        let pp = PathPatcher::from_patcher(p);
        let gap = (pp.patcher().clean_metric() - pp.patcher().corrupted_metric()).abs();
        let tol = 1e-4 * (1.0f32).max(1.0 / gap);
        for receivers in [
            Receivers::Logits,
            Receivers::parse(&["1.0:qkv", "1.1:qkv"]).unwrap(),
        ] {
            let grid = pp.grid(&receivers).unwrap();
            for (l, h) in [(0, 0), (0, 1), (0, 3)] {
                let naive = pp.naive(&[(l, h)], &receivers).unwrap();
                assert!(
                    (grid.values[l][h] - naive).abs() <= tol,
                    "{family} L{l}H{h}: {} vs {naive}",
                    grid.values[l][h]
                );
            }
        }
    }
}

#[test]
fn attribution_reads_the_metric_at_any_positions_and_along_an_alignment() {
    for family in ["gpt2", "llama"] {
        let m: Arc<HookedTransformer> = tiny(family);
        let (clean, corrupt) = longer_corruption(&m);
        let opts = || PatchOptions {
            readout: Readout::Positions(vec![vec![-2, -1]]),
            alignment: Alignment::LastK(5),
            ..Default::default()
        };
        let a = AttributionPatcher::with_options(
            &m,
            &clean,
            &corrupt,
            span_grad_metric(),
            opts(),
            None,
        )
        .unwrap();
        let exact = Patcher::with_options(&m, &clean, &corrupt, span_metric(), opts()).unwrap();
        assert!((a.clean_metric() - exact.clean_metric()).abs() < 1e-5);
        assert!((a.corrupted_metric() - exact.corrupted_metric()).abs() < 1e-5);
        // one cell against central finite differences along clean (aligned) − corrupted
        let gap = a.clean_metric() - a.corrupted_metric();
        let hp = HookPoint::ResidPre(1);
        let pos = corrupt.max_len() - 2;
        let est = a.nodes(PatchTarget::ResidPre).unwrap().values[1][pos] * gap;
        let diff = (a.clean_cache().at(hp).unwrap() - a.corrupted_cache().at(hp).unwrap())
            .unwrap()
            .narrow(1, pos, 1)
            .unwrap();
        let moved = |eps: f64| {
            let diff = diff.clone();
            let mut h = Hooks::new();
            h.add(&hp.to_string(), move |act, _| {
                let (b, _, d) = act.dims3()?;
                let cell = (act.narrow(1, pos, 1)? + (&diff * eps)?)?;
                Ok(Some(act.slice_assign(&[0..b, pos..pos + 1, 0..d], &cell)?))
            })
            .unwrap();
            let logits = m.run_with_hooks(&corrupt, &mut h).unwrap();
            let rows: Vec<Tensor> = (0..corrupt.batch())
                .map(|b| {
                    let idx: Vec<u32> = [-2i64, -1]
                        .iter()
                        .map(|&p| corrupt.resolve_pos(b, p).unwrap() as u32)
                        .collect();
                    logits
                        .i(b)
                        .unwrap()
                        .index_select(&Tensor::new(idx, m.device()).unwrap(), 0)
                        .unwrap()
                })
                .collect();
            span_metric()(&Tensor::stack(&rows, 0).unwrap()).unwrap()
        };
        let eps = 1e-3;
        let fd = (moved(eps) - moved(-eps)) / (2.0 * eps as f32);
        assert!(
            (fd - est).abs() <= 2e-3 + 2e-2 * est.abs(),
            "{family}: {est} vs {fd}"
        );
        // the self-check runs the exact sweep with the same options
        let v = a.verify(PatchTarget::ResidPre, 0.1).unwrap();
        let want = exact.sweep(PatchTarget::ResidPre).unwrap();
        for (x, y) in v
            .exact
            .values
            .iter()
            .flatten()
            .zip(want.values.iter().flatten())
        {
            assert!(
                (x - y).abs() < 1e-4 * y.abs().max(1.0),
                "{family}: {x} vs {y}"
            );
        }
        // integrated gradients interpolate the aligned embeddings
        let ig = AttributionPatcher::with_options(
            &m,
            &clean,
            &corrupt,
            span_grad_metric(),
            opts(),
            Some(4),
        )
        .unwrap();
        assert!((ig.clean_metric() - a.clean_metric()).abs() < 1e-5);
        assert!(matches!(a.edges(), Err(LensError::Unsupported { .. })));
    }
}

#[test]
fn lens_patch_aligns_prompts_of_different_lengths() {
    let dir = fixture_path("tiny/llama");
    let m = tiny("llama");
    let lens = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(["patch", "--model", dir.to_str().unwrap()])
            .args(["--clean", "The pet of this family is"])
            .args(["--corrupt", "So the cat of this family is"])
            .args(extra)
            .output()
            .unwrap()
    };
    let answers = ["--answers", " a", " b"];
    let out = lens(&answers);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--align-last"),
        "{stderr}"
    );
    let mut args = answers.to_vec();
    args.extend(["--align-last", "5", "--json"]);
    let out = lens(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // the library's grid, in the corrupted prompt's positions
    let clean = m.to_tokens("The pet of this family is", None).unwrap();
    let corrupt = m.to_tokens("So the cat of this family is", None).unwrap();
    let pairs = m.answer_pairs(&[(" a", " b")]).unwrap();
    let opts = PatchOptions {
        alignment: Alignment::LastK(5),
        ..Default::default()
    };
    let p = Patcher::with_options(
        &m,
        &clean,
        &corrupt,
        metrics::logit_diff_metric(&pairs),
        opts,
    )
    .unwrap();
    let grid = p.sweep(PatchTarget::ResidPre).unwrap();
    let got: Vec<Vec<f32>> = serde_json::from_value(v["grid"].clone()).unwrap();
    assert_eq!(got.len(), grid.values.len());
    for (g, w) in got.iter().flatten().zip(grid.values.iter().flatten()) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}
