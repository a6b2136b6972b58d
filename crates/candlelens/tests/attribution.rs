//! Attribution patching: the estimate against PyTorch autograd on the same tiny checkpoints
//! (`scripts/make-attribution-reference.py`), each cell against central finite differences of
//! the metric along (clean − corrupted) on every kind of block, the integrated-gradients
//! variant's completeness, and the self-check against the exact sweep on a real model.

mod common;

use std::sync::Arc;

use candlelens::attribution::AttributionPatcher;
use candlelens::metrics;
use candlelens::patching::{PatchTarget, Patcher};
use candlelens::prelude::*;
use candlelens::tokens::Padding;
use candlelens::Hooks;
use common::*;

const ANSWER: (u32, u32) = (5, 9);

/// The clean prompts and a corruption of two positions (as the PyTorch script makes it).
fn pair(m: &HookedTransformer) -> (Tokens, Tokens) {
    padded_pair(m, Padding::Right)
}

/// The pair padded on `padding`'s side.
fn padded_pair(m: &HookedTransformer, padding: Padding) -> (Tokens, Tokens) {
    let (clean, corrupt) = corrupted_pair(m, |n| n / 2);
    let pad = |t: &Tokens| Tokens::with_padding(t.rows().to_vec(), t.pad_id(), padding).unwrap();
    (pad(&clean), pad(&corrupt))
}

fn attribution(m: &Arc<HookedTransformer>) -> AttributionPatcher {
    attribution_padded(m, Padding::Right)
}

fn attribution_padded(m: &Arc<HookedTransformer>, padding: Padding) -> AttributionPatcher {
    let (clean, corrupt) = padded_pair(m, padding);
    AttributionPatcher::new(
        m,
        &clean,
        &corrupt,
        metrics::logit_diff_grad_metric(&[ANSWER]),
    )
    .unwrap()
}

#[test]
fn the_estimate_equals_pytorch_autograd() {
    let fx = read_fixture("reference/attribution.json");
    for family in ["gpt2", "llama", "gemma2", "mixtral"] {
        let r = &fx[family];
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let ids =
            |k: &str| -> Vec<Vec<u32>> { r[k].as_array().unwrap().iter().map(u32s).collect() };
        assert_eq!(
            clean.rows(),
            ids("clean_ids").as_slice(),
            "{family}: clean ids"
        );
        assert_eq!(
            corrupt.rows(),
            ids("corrupt_ids").as_slice(),
            "{family}: corrupted ids"
        );
        let a = attribution(&m);
        let (c, k) = (a.clean_metric(), a.corrupted_metric());
        let (rc, rk) = (
            r["clean_metric"].as_f64().unwrap() as f32,
            r["corrupt_metric"].as_f64().unwrap() as f32,
        );
        assert!(
            (c - rc).abs() < 1e-4 && (k - rk).abs() < 1e-4,
            "{family}: metrics"
        );
        // compare un-normalised sums (the tiny models' clean/corrupted gaps are small)
        let mut worst = 0f32;
        for (target, key) in [
            (PatchTarget::ResidPre, "resid_pre"),
            (PatchTarget::HeadsAllPos, "heads"),
        ] {
            let grid = a.nodes(target).unwrap();
            for (l, row) in grid.values.iter().enumerate() {
                let want = f32s(&r[key][l]);
                assert_eq!(row.len(), want.len(), "{family} {key} layer {l}");
                for (g, w) in row.iter().zip(&want) {
                    let d = (g * (c - k) - w * (rc - rk)).abs();
                    worst = worst.max(d);
                    assert!(d < 1e-4, "{family} {key} layer {l}: {g} vs torch {w}");
                }
            }
        }
        eprintln!("{family}: attribution vs torch autograd, max |difference| {worst:.1e}");
    }
}

/// The metric with `hp`'s activation moved by `eps · (clean − corrupted)` where `mask` is 1.
fn metric_moved(
    m: &HookedTransformer,
    a: &AttributionPatcher,
    tokens: &Tokens,
    hp: HookPoint,
    mask: &Tensor,
    eps: f64,
) -> f32 {
    let diff = (a.clean_cache().at(hp).unwrap() - a.corrupted_cache().at(hp).unwrap())
        .unwrap()
        .broadcast_mul(mask)
        .unwrap();
    let mut hooks = Hooks::new();
    hooks
        .add(&hp.to_string(), move |act, _| {
            Ok(Some((act + (&diff * eps)?)?))
        })
        .unwrap();
    let logits = m.run_with_hooks(tokens, &mut hooks).unwrap();
    metrics::mean(
        &metrics::logit_diff(&m.gather_last(&logits, tokens).unwrap(), &[ANSWER]).unwrap(),
    )
}

#[test]
fn each_cell_is_the_directional_derivative_of_the_metric() {
    // learned positions, rotary + GQA, parallel blocks (one norm, two norms), post-norms and
    // softcaps, no pre-norms, a mixture of experts with a shared expert
    for family in [
        "gpt2",
        "llama",
        "phi",
        "neox",
        "gemma2",
        "olmo2",
        "qwen2_moe",
    ] {
        directional_derivatives(family, Padding::Right);
    }
}

#[test]
fn left_padded_batches_attribute_by_their_own_positions() {
    for family in ["gpt2", "llama", "gemma2"] {
        directional_derivatives(family, Padding::Left);
    }
}

/// Every kind of cell of `family`'s attribution grids against central finite differences of the
/// metric, on the pair padded on `padding`'s side.
fn directional_derivatives(family: &str, padding: Padding) {
    let m = tiny(family);
    let (_, corrupt) = padded_pair(&m, padding);
    let a = attribution_padded(&m, padding);
    let gap = a.clean_metric() - a.corrupted_metric();
    let seq = corrupt.max_len();
    let dev = m.device().clone();
    let pos_mask = |p: usize, rank: usize| {
        let mut v = vec![0f32; seq];
        v[p] = 1.0;
        let shape: Vec<usize> = [1, seq]
            .into_iter()
            .chain(std::iter::repeat_n(1, rank - 2))
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let eps = 1e-3;
    let mut checked = 0;
    for (target, hp, p) in [
        (PatchTarget::ResidPre, HookPoint::ResidPre(1), seq / 2),
        (PatchTarget::AttnOut, HookPoint::AttnOut(0), 4),
        (PatchTarget::MlpOut, HookPoint::MlpOut(0), seq / 2),
        (PatchTarget::ResidPost, HookPoint::ResidPost(0), 3),
    ] {
        let grid = a.nodes(target).unwrap();
        let l = hp.layer().unwrap();
        let est = grid.values[l][p] * gap;
        let mask = pos_mask(p, 3);
        let up = metric_moved(&m, &a, &corrupt, hp, &mask, eps);
        let down = metric_moved(&m, &a, &corrupt, hp, &mask, -eps);
        let fd = (up - down) / (2.0 * eps as f32);
        assert!(
            (fd - est).abs() <= 2e-3 + 2e-2 * est.abs(),
            "{family} {hp} pos {p}: attribution {est} vs finite differences {fd}"
        );
        checked += 1;
    }
    // one head at every position
    let grid = a.nodes(PatchTarget::HeadsAllPos).unwrap();
    let mut v = vec![0f32; m.cfg.n_heads];
    v[1] = 1.0;
    let mask = Tensor::from_vec(v, (1, 1, m.cfg.n_heads, 1), &dev).unwrap();
    let hp = HookPoint::Z(1);
    let fd = (metric_moved(&m, &a, &corrupt, hp, &mask, eps)
        - metric_moved(&m, &a, &corrupt, hp, &mask, -eps))
        / (2.0 * eps as f32);
    let est = grid.values[1][1] * gap;
    assert!(
        (fd - est).abs() <= 2e-3 + 2e-2 * est.abs(),
        "{family} L1H1: {est} vs {fd}"
    );
    // one head's queries, one kv head's keys and values, one head's pattern
    for (target, hp, head, shape) in [
        (PatchTarget::Q, HookPoint::Q(1), 1, [1, 1, m.cfg.n_heads, 1]),
        (
            PatchTarget::K,
            HookPoint::K(1),
            0,
            [1, 1, m.cfg.n_kv_heads, 1],
        ),
        (
            PatchTarget::V,
            HookPoint::V(0),
            m.cfg.n_kv_heads - 1,
            [1, 1, m.cfg.n_kv_heads, 1],
        ),
        (
            PatchTarget::Pattern,
            HookPoint::Pattern(1),
            2,
            [1, m.cfg.n_heads, 1, 1],
        ),
    ] {
        let grid = a.nodes(target).unwrap();
        let n = shape.iter().product::<usize>();
        let mut v = vec![0f32; n];
        v[head] = 1.0;
        let mask = Tensor::from_vec(v, shape.to_vec(), &dev).unwrap();
        let fd = (metric_moved(&m, &a, &corrupt, hp, &mask, eps)
            - metric_moved(&m, &a, &corrupt, hp, &mask, -eps))
            / (2.0 * eps as f32);
        let est = grid.values[hp.layer().unwrap()][head] * gap;
        assert!(
            (fd - est).abs() <= 2e-3 + 2e-2 * est.abs(),
            "{family} {hp} head {head}: {est} vs {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn integrated_gradients_on_the_embedding_add_up_to_the_whole_effect() {
    // completeness: along the straight path from the corrupted to the clean embedding, the
    // gradient times the embedding difference sums to m(clean) − m(corrupted): the resid_pre
    // row of layer 0 (the embedding itself) adds up to 1 in normalised units
    for family in ["llama", "gpt2", "gemma3"] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let metric = metrics::logit_diff_grad_metric(&[ANSWER]);
        let ig =
            AttributionPatcher::integrated_gradients(&m, &clean, &corrupt, metric, 64).unwrap();
        assert_eq!(ig.ig_steps(), Some(64));
        let total: f32 = ig.nodes(PatchTarget::ResidPre).unwrap().values[0]
            .iter()
            .sum();
        assert!(
            (total - 1.0).abs() < 0.05,
            "{family}: integrated gradients sum to {total}"
        );
    }
    let m = tiny("llama");
    let (clean, corrupt) = pair(&m);
    let metric = metrics::logit_diff_grad_metric(&[ANSWER]);
    assert!(matches!(
        AttributionPatcher::integrated_gradients(&m, &clean, &corrupt, metric, 0),
        Err(LensError::BadParameter { .. })
    ));
}

#[test]
fn bad_metrics_and_corruptions_without_effect_are_typed_errors() {
    let m = tiny("llama");
    let (clean, corrupt) = pair(&m);
    // a metric that does not reduce to one number
    let per_prompt: candlelens::metrics::GradMetric = std::rc::Rc::new(|l: &Tensor| Ok(l.sum(1)?));
    assert!(matches!(
        AttributionPatcher::new(&m, &clean, &corrupt, per_prompt),
        Err(LensError::Mismatch { .. })
    ));
    // clean == corrupted: every normalised score would divide by zero
    let a = AttributionPatcher::new(
        &m,
        &clean,
        &clean,
        metrics::logit_diff_grad_metric(&[ANSWER]),
    )
    .unwrap();
    assert!(matches!(
        a.nodes(PatchTarget::ResidPre),
        Err(LensError::NoEffect { .. })
    ));
    // answers outside the vocabulary
    assert!(matches!(
        AttributionPatcher::new(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_grad_metric(&[(5, 1 << 30)])
        ),
        Err(LensError::TokenOutOfRange { .. })
    ));
    let a = attribution(&m);
    assert!(matches!(
        a.verify(PatchTarget::ResidPre, f32::NAN),
        Err(LensError::BadParameter { .. })
    ));
    let gptj = tiny("gptj");
    let (clean, corrupt) = pair(&gptj);
    let a = AttributionPatcher::new(
        &gptj,
        &clean,
        &corrupt,
        metrics::logit_diff_grad_metric(&[ANSWER]),
    )
    .unwrap();
    assert!(matches!(
        a.nodes(PatchTarget::ResidMid),
        Err(LensError::Unsupported { .. })
    ));
}

#[test]
fn the_self_check_sets_the_estimate_beside_the_exact_sweep_on_a_real_model() {
    let m = model("smollm2-135m");
    // IOI (Wang et al. 2022): the indirect object, with the subject swapped in the corruption
    let clean = m
        .to_tokens(
            "When Mary and John went to the store, John gave a drink to",
            None,
        )
        .unwrap();
    let corrupt = m
        .to_tokens(
            "When Mary and John went to the store, Mary gave a drink to",
            None,
        )
        .unwrap();
    let pairs = m.answer_pairs(&[(" Mary", " John")]).unwrap();
    let a = AttributionPatcher::new(m, &clean, &corrupt, metrics::logit_diff_grad_metric(&pairs))
        .unwrap();
    eprintln!(
        "attribution: {:.2} s, {:.1} forward-equivalents",
        a.seconds, a.forward_equivalents
    );
    let threshold = 0.1;
    let v = a.verify(PatchTarget::ResidPre, threshold).unwrap();
    eprintln!("{v}");
    // the exact grid is the sweep's
    let mut p = Patcher::new(m, &clean, &corrupt, metrics::logit_diff_metric(&pairs)).unwrap();
    p.progress = false;
    let exact = p.sweep(PatchTarget::ResidPre).unwrap();
    assert_eq!(v.exact.values, exact.values);
    assert_eq!(
        v.estimate.values,
        a.nodes(PatchTarget::ResidPre).unwrap().values
    );
    // the flagged cells are exactly those beyond the threshold, worst first
    let beyond = v
        .estimate
        .values
        .iter()
        .flatten()
        .zip(v.exact.values.iter().flatten())
        .filter(|(e, x)| (*e - *x).abs() > threshold)
        .count();
    assert_eq!(v.wrong.len(), beyond);
    for w in v.wrong.windows(2) {
        assert!((w[0].estimate - w[0].exact).abs() >= (w[1].estimate - w[1].exact).abs());
    }
    // on the residual stream of a real model the linear estimate tracks patching
    assert!(v.correlation > 0.5, "correlation {}", v.correlation);
}

#[test]
fn lens_attribute_prints_the_estimate_and_the_exact_grid() {
    let dir = fixture_path("tiny/llama");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "attribute",
            "--model",
            dir.to_str().unwrap(),
            "--clean",
            "The pet of this family is",
            "--corrupt",
            "The pat of this family is",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--answers", " is", " of", "--verify", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n_tokens = v["str_tokens"].as_array().unwrap().len();
    let grid = v["grid"].as_array().unwrap();
    let exact = v["exact"].as_array().unwrap();
    assert_eq!((grid.len(), exact.len()), (2, 2));
    assert_eq!(grid[0].as_array().unwrap().len(), n_tokens);
    for key in [
        "clean_diff",
        "corrupt_diff",
        "seconds",
        "correlation",
        "max_abs_error",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    // the prompts differ at position 5 only: at layer 0 every other cell is exactly 0 in both
    // grids, and the exact one restores the clean run there
    for (p, (e, x)) in grid[0]
        .as_array()
        .unwrap()
        .iter()
        .zip(exact[0].as_array().unwrap())
        .enumerate()
    {
        let (e, x) = (e.as_f64().unwrap(), x.as_f64().unwrap());
        if p != 5 {
            assert!(e.abs() < 1e-6 && x.abs() < 1e-6, "position {p}: {e} {x}");
        } else {
            assert!((x - 1.0).abs() < 1e-4, "{x}");
        }
    }
    // bad input: a typed message and a non-zero exit, never a panic
    for (extra, says) in [
        (&["--answers", " is", " is"][..], "both answers"),
        (
            &["--answers", " is", " of", "--ig-steps", "0"][..],
            "--ig-steps",
        ),
        (
            &["--answers", " is", " of", "--hook", "resid_middle"][..],
            "patch target",
        ),
    ] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says) && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn an_attribution_patchers_hooks_apply_to_every_run() {
    // block 0's MLP halved in every run: the metrics, the gradients (finite differences of the
    // hooked model) and the exact check all see it
    for family in ["gpt2", "llama"] {
        let m = tiny(family);
        let (clean, corrupt) = padded_pair(&m, Padding::Right);
        let halve = |h: &mut Hooks| {
            h.add("blocks.0.hook_mlp_out", |a, _| Ok(Some((a * 0.5)?)))
                .unwrap();
        };
        let mut hooks = Hooks::new();
        halve(&mut hooks);
        let a = AttributionPatcher::with_hooks(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_grad_metric(&[ANSWER]),
            hooks,
            None,
        )
        .unwrap();
        let plain = attribution(&m);
        assert!(
            (a.clean_metric() - plain.clean_metric()).abs() > 1e-4,
            "{family}"
        );
        let mut hooks = Hooks::new();
        halve(&mut hooks);
        let exact = Patcher::with_hooks(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_metric(&[ANSWER]),
            hooks,
        )
        .unwrap();
        assert!((a.clean_metric() - exact.clean_metric()).abs() < 1e-5);
        assert!((a.corrupted_metric() - exact.corrupted_metric()).abs() < 1e-5);
        // a residual cell against central finite differences of the hooked model
        let gap = a.clean_metric() - a.corrupted_metric();
        let (hp, p) = (HookPoint::ResidPre(1), corrupt.max_len() / 2);
        let est = a.nodes(PatchTarget::ResidPre).unwrap().values[1][p] * gap;
        let moved = |eps: f64| {
            let diff = (a.clean_cache().at(hp).unwrap() - a.corrupted_cache().at(hp).unwrap())
                .unwrap()
                .narrow(1, p, 1)
                .unwrap();
            let mut h = Hooks::new();
            halve(&mut h);
            h.add(&hp.to_string(), move |act, _| {
                let (b, _, d) = act.dims3()?;
                let cell = (act.narrow(1, p, 1)? + (&diff * eps)?)?;
                Ok(Some(act.slice_assign(&[0..b, p..p + 1, 0..d], &cell)?))
            })
            .unwrap();
            let logits = m.run_with_hooks(&corrupt, &mut h).unwrap();
            metrics::mean(
                &metrics::logit_diff(&m.gather_last(&logits, &corrupt).unwrap(), &[ANSWER])
                    .unwrap(),
            )
        };
        let eps = 1e-3;
        let fd = (moved(eps) - moved(-eps)) / (2.0 * eps as f32);
        assert!(
            (fd - est).abs() <= 2e-3 + 2e-2 * est.abs(),
            "{family}: attribution {est} vs finite differences {fd}"
        );
        // the self-check's exact side is the hooked patcher's sweep
        let v = a.verify(PatchTarget::ResidPre, 0.1).unwrap();
        let want = exact.sweep(PatchTarget::ResidPre).unwrap();
        for (r, w) in v.exact.values.iter().zip(&want.values) {
            for (x, y) in r.iter().zip(w) {
                assert!(
                    (x - y).abs() < 1e-4 * y.abs().max(1.0),
                    "{family}: {x} vs {y}"
                );
            }
        }
        // edge attribution wires its own runs: a typed error, not dropped hooks
        assert!(matches!(a.edges(), Err(LensError::Unsupported { .. })));
    }
}
