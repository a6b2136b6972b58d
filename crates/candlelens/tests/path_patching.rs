//! Path patching equals the hooks-based recipe of the IOI paper (full forwards with every
//! `hook_z` frozen but the senders', then the receivers' `hook_q/k/v` put in) on every kind of
//! block, for logit and head receivers, with MLPs free and frozen; and its typed errors.

mod common;

use std::sync::Arc;

use candlelens::metrics;
use candlelens::patching::{PathPatcher, QkvInputs, Receiver, Receivers};
use candlelens::prelude::*;
use common::*;

/// Two prompts of different lengths (right-padded) and corruptions of two positions each.
fn patcher(m: &Arc<HookedTransformer>) -> PathPatcher {
    let (clean, corrupt) = corrupted_pair(m, |_| 1);
    let pairs = [(5u32, 9u32), (11, 4)];
    let p = PathPatcher::new(m, &clean, &corrupt, metrics::logit_diff_metric(&pairs)).unwrap();
    let pt = p.patcher();
    assert!(
        (pt.clean_metric() - pt.corrupted_metric()).abs() > 1e-3,
        "{}: the corruption does not move the metric",
        m.cfg.name
    );
    p
}

fn tol(p: &PathPatcher) -> f32 {
    let gap = (p.patcher().clean_metric() - p.patcher().corrupted_metric()).abs();
    2e-4 * (1.0f32).max(1.0 / gap)
}

/// Every head as the sender: the fast grid against the hooks recipe, cell by cell.
fn grid_matches(p: &PathPatcher, receivers: &Receivers) {
    let cfg = &p.patcher().model().cfg;
    let fast = p.grid(receivers).unwrap();
    assert_eq!(fast.values.len(), cfg.n_layers);
    let mut worst = 0f32;
    // random tiny models attend almost uniformly: query and key paths move the metric
    // by 1e-5 to 1e-3, value paths by ~0.1
    let mut moved = 0;
    for l in 0..cfg.n_layers {
        for h in 0..cfg.n_heads {
            let naive = p.naive(&[(l, h)], receivers).unwrap();
            worst = worst.max((fast.values[l][h] - naive).abs());
            if naive.abs() > 1e-5 {
                moved += 1;
            }
        }
    }
    assert!(
        worst <= tol(p),
        "{} → {receivers}: fast and hooks recipes differ by {worst}",
        cfg.name
    );
    assert!(
        moved > 0,
        "{} → {receivers}: no path moves the metric",
        cfg.name
    );
    eprintln!(
        "{} → {receivers}: max |fast - hooks| {worst:.2e}, {:.2} forward-equivalents for {} cells",
        cfg.name, fast.forward_equivalents, fast.naive_forwards
    );
}

const FAMILIES: &[&str] = &[
    "gpt2",
    "llama",
    "gemma2",
    "gemma3",
    "neox",
    "gptj",
    "gpt_neo",
    "phi",
    "olmo2",
    "mixtral",
    "qwen3_moe",
];

/// The grids of `scripts/make-path-patching-reference.py`: the recipe run with PyTorch hooks on
/// HF transformers. Compared un-normalised (the tiny models' clean/corrupted gaps are small).
#[test]
fn grids_equal_pytorch_hooks_on_transformers() {
    let fx = read_fixture("reference/path_patching.json");
    for family in ["gpt2", "llama", "gemma2", "neox"] {
        let r = &fx[family];
        let m = tiny(family);
        let ids =
            |k: &str| -> Vec<Vec<u32>> { r[k].as_array().unwrap().iter().map(u32s).collect() };
        let clean = m
            .to_tokens(
                ["The pet of this family is", "Is Paris the capital of"].as_slice(),
                None,
            )
            .unwrap();
        assert_eq!(
            clean.rows(),
            ids("clean_ids").as_slice(),
            "{family}: clean ids"
        );
        let corrupt = Tokens::new(ids("corrupt_ids"), clean.pad_id()).unwrap();
        let a = r["answer"].as_array().unwrap();
        let pair = (a[0].as_u64().unwrap() as u32, a[1].as_u64().unwrap() as u32);
        let mut p = PathPatcher::new(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_metric(&[pair, pair]),
        )
        .unwrap();
        let (rc, rk) = (
            r["clean_metric"].as_f64().unwrap() as f32,
            r["corrupt_metric"].as_f64().unwrap() as f32,
        );
        let pt = p.patcher();
        assert!((pt.clean_metric() - rc).abs() < 1e-5 && (pt.corrupted_metric() - rk).abs() < 1e-5);
        let gap = rc - rk;
        let last = m.cfg.n_layers - 1;
        let all = |inputs: &str| {
            let heads: Vec<(usize, usize)> = (0..m.cfg.n_heads).map(|h| (last, h)).collect();
            Receivers::heads(&heads, inputs).unwrap()
        };
        for (key, receivers, freeze) in [
            ("logits", Receivers::Logits, false),
            ("logits_frozen_mlps", Receivers::Logits, true),
            ("q_last", all("q"), false),
            ("v_last", all("v"), false),
        ] {
            p.freeze_mlps = freeze;
            let ours = p.grid(&receivers).unwrap();
            let mut worst = 0f32;
            for (row, want) in ours.values.iter().zip(r[key].as_array().unwrap()) {
                for (v, w) in row.iter().zip(f32s(want)) {
                    worst = worst.max(((v - w) * gap).abs());
                }
            }
            // f32 rounding: the fused softmax and the vectorised exp reorder reductions, which
            // moves Gemma 2's worst cell (soft-capped, GeGLU) between 1e-6 and 2e-6; a wrong
            // path would be off by orders of magnitude more
            assert!(
                worst < 4e-6,
                "{family} {key}: un-normalised difference {worst}"
            );
            eprintln!("{family} {key}: max |ours - torch| (metric units) {worst:.1e}");
        }
    }
}

#[test]
fn senders_to_logits_equal_the_hooks_recipe() {
    for family in FAMILIES {
        let mut p = patcher(&tiny(family));
        grid_matches(&p, &Receivers::Logits);
        p.freeze_mlps = true;
        grid_matches(&p, &Receivers::Logits);
        // several senders in different layers at once
        let cfg = p.patcher().model().cfg.clone();
        let senders = [(0, 1), (cfg.n_layers - 1, 2), (0, 3)];
        p.freeze_mlps = false;
        let fast = p.patch(&senders, &Receivers::Logits).unwrap();
        let naive = p.naive(&senders, &Receivers::Logits).unwrap();
        assert!(
            (fast - naive).abs() <= tol(&p),
            "{family}: {fast} vs {naive}"
        );
    }
}

/// Receivers whose keys and values the hooks recipe can patch: every query head of the layer
/// (whole kv groups).
fn whole_groups(cfg: &ModelConfig, layer: usize, inputs: &str) -> Receivers {
    let heads: Vec<(usize, usize)> = (0..cfg.n_heads).map(|h| (layer, h)).collect();
    Receivers::heads(&heads, inputs).unwrap()
}

#[test]
fn senders_to_head_inputs_equal_the_hooks_recipe() {
    for family in FAMILIES {
        let mut p = patcher(&tiny(family));
        let cfg = p.patcher().model().cfg.clone();
        let last = cfg.n_layers - 1;
        for inputs in ["q", "k", "v", "qkv"] {
            grid_matches(&p, &whole_groups(&cfg, last, inputs));
        }
        // receivers in two layers, queries of single heads
        if cfg.n_layers >= 3 {
            let r = Receivers::parse(&["1.0:q", "2.3:qv", "2.2:v", "2.1:q"]).unwrap();
            grid_matches(&p, &r);
        }
        p.freeze_mlps = true;
        grid_matches(&p, &whole_groups(&cfg, last, "v"));
    }
}

#[test]
fn one_query_head_of_a_kv_group_keeps_the_others_keys() {
    // SmolLM2-like grouping: the tiny Llama shares each kv head between two query heads
    let m = tiny("llama");
    let p = patcher(&m);
    let one = Receivers::parse(&["1.0:k"]).unwrap();
    let both = Receivers::parse(&["1.0:k", "1.1:k"]).unwrap();
    let other = Receivers::parse(&["1.1:k"]).unwrap();
    // the hooks recipe cannot patch one query head's copy of a shared key
    assert!(matches!(
        p.naive(&[(0, 0)], &one),
        Err(LensError::Unsupported { .. })
    ));
    let s = [(0usize, 2usize)];
    let (a, b, ab) = (
        p.patch(&s, &one).unwrap(),
        p.patch(&s, &other).unwrap(),
        p.patch(&s, &both).unwrap(),
    );
    assert!((ab - p.naive(&s, &both).unwrap()).abs() <= tol(&p));
    // each half moves the metric by its own amount; together they are the whole group
    assert!(
        (a - ab).abs() > 1e-6 && (b - ab).abs() > 1e-6,
        "{a} {b} {ab}"
    );
}

#[test]
fn heads_at_or_after_the_receivers_have_no_path() {
    let m = tiny("gemma2");
    let p = patcher(&m);
    let r = Receivers::parse(&["1.0:qkv"]).unwrap();
    let g = p.grid(&r).unwrap();
    for l in 1..m.cfg.n_layers {
        assert!(
            g.values[l].iter().all(|&v| v == 0.0),
            "layer {l}: {:?}",
            g.values[l]
        );
    }
    assert!(g.values[0].iter().any(|&v| v != 0.0));
}

#[test]
fn bad_senders_and_receivers_are_typed_errors() {
    let m = tiny("gpt2");
    let p = patcher(&m);
    assert!(matches!(
        p.patch(&[(9, 0)], &Receivers::Logits),
        Err(LensError::LayerOutOfRange { layer: 9, .. })
    ));
    assert!(matches!(
        p.patch(&[(0, 7)], &Receivers::Logits),
        Err(LensError::OutOfRange { index: 7, .. })
    ));
    assert!(matches!(
        p.patch(&[], &Receivers::Logits),
        Err(LensError::Unsupported { .. })
    ));
    assert!(matches!(
        p.patch(&[(0, 0)], &Receivers::Heads(vec![])),
        Err(LensError::Unsupported { .. })
    ));
    let far = Receivers::Heads(vec![Receiver {
        layer: 5,
        head: 0,
        inputs: QkvInputs {
            q: true,
            ..Default::default()
        },
    }]);
    assert!(matches!(
        p.grid(&far),
        Err(LensError::LayerOutOfRange { layer: 5, .. })
    ));
    for bad in ["9", "1.2", "1.2:x", "a.b:q", "1.2:"] {
        let e = Receivers::parse(&[bad]).unwrap_err();
        assert!(e.to_string().contains("LAYER.HEAD:q|k|v"), "{bad}: {e}");
    }
    assert_eq!(Receivers::parse(&["final"]).unwrap(), Receivers::Logits);
    let r = Receivers::parse(&["9.6:q", "10.0:kv"]).unwrap();
    assert_eq!(r.to_string(), "9.6:q 10.0:kv");
}

#[test]
fn a_corruption_without_effect_is_refused() {
    let m = tiny("gpt2");
    let t = m.to_tokens("The pet of this family is", None).unwrap();
    let p = PathPatcher::new(&m, &t, &t, metrics::logit_diff_metric(&[(5, 9)])).unwrap();
    assert!(matches!(
        p.grid(&Receivers::Logits),
        Err(LensError::NoEffect { .. })
    ));
}

#[test]
fn lens_path_patch_prints_the_grid_and_one_score() {
    let dir = fixture_path("tiny/llama");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "path-patch",
            "--model",
            dir.to_str().unwrap(),
            "--clean",
            "The pet of this family is",
            "--corrupt",
            "The pat of this family is",
            "--answers",
            " is",
            " of",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = ok(&run(&["--receivers", "1.0:q", "1.1:kv", "--json"]));
    assert_eq!(v["receivers"], "1.0:q 1.1:kv");
    let grid = v["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 2);
    assert_eq!(grid[0].as_array().unwrap().len(), 4);
    for key in [
        "clean_diff",
        "corrupt_diff",
        "seconds",
        "forward_equivalents",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    // one sender set: the same number as the library's
    let v = ok(&run(&[
        "--senders",
        "0.1",
        "1.2",
        "--freeze-mlps",
        "--json",
    ]));
    let m = tiny("llama");
    let clean = m.to_tokens("The pet of this family is", None).unwrap();
    let corrupt = m.to_tokens("The pat of this family is", None).unwrap();
    let pair = m.answer_pairs(&[(" is", " of")]).unwrap();
    let mut p = PathPatcher::new(&m, &clean, &corrupt, metrics::logit_diff_metric(&pair)).unwrap();
    p.freeze_mlps = true;
    let want = p.patch(&[(0, 1), (1, 2)], &Receivers::Logits).unwrap();
    assert!(
        (v["score"].as_f64().unwrap() as f32 - want).abs() < 1e-5,
        "{v}"
    );
    assert_eq!(v["receivers"], "final");
    // bad receivers and senders: a message naming the form, non-zero exit
    for bad in [
        &["--receivers", "1.0"][..],
        &["--senders", "x"][..],
        &["--receivers", "7.0:q"][..],
    ] {
        let out = run(bad);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("LAYER.HEAD") || err.contains("out of range"),
            "{bad:?}: {err}"
        );
    }
}
