//! Edge attribution patching: each head-input edge equals the central finite difference of the
//! metric when the upstream node's change is added to that one head's copy of its input, on
//! every kind of block (GQA keys and values per query head, q/k norms per head and over all
//! heads, post-norms, parallel blocks, experts); the split forward computes the same function
//! as the model's; the MLP and logit edges add up to the node gradients (held equal to
//! PyTorch autograd by tests/attribution.rs); and the self-check against path patching.

mod common;

use candlelens::attribution::{AttributionPatcher, Downstream, Input, Upstream};
use candlelens::engine::block::split::SplitTaps;
use candlelens::engine::block::{Forward, Heads, Stage};
use candlelens::engine::hooks::NoHooks;
use candlelens::metrics;
use candlelens::prelude::*;
use common::*;

const ANSWER: (u32, u32) = (5, 9);

fn pair(m: &HookedTransformer) -> (Tokens, Tokens) {
    corrupted_pair(m, |_| 1)
}

/// The metric of a forward in which layer `layer`'s attention reads through `taps`.
fn tapped_metric(m: &HookedTransformer, tokens: &Tokens, layer: usize, taps: &SplitTaps) -> f32 {
    let ctx = m.context(tokens.max_len()).unwrap();
    let mut x = m.embed(tokens, &mut NoHooks).unwrap();
    for l in 0..m.cfg.n_layers {
        let block = m.block(l).unwrap();
        if l != layer {
            x = block.forward(x, &ctx, 0, None, &mut NoHooks).unwrap().0;
            continue;
        }
        let mut f = Forward::new(&ctx, 0, None);
        f.heads = Heads::Split(taps);
        x = block.wire(Stage::Pre, x, &mut f).unwrap();
    }
    let logits = m.unembed(&x, tokens, LogitsAt::Last, &mut NoHooks).unwrap();
    metrics::mean(&metrics::logit_diff(&logits, &[ANSWER]).unwrap())
}

/// What an upstream node changes in the residual stream (as the module docs define it).
fn delta(m: &HookedTransformer, a: &AttributionPatcher, u: Upstream) -> Tensor {
    let (c, k) = (a.clean_cache(), a.corrupted_cache());
    match u {
        Upstream::Embed => {
            (c.at(HookPoint::ResidPre(0)).unwrap() - k.at(HookPoint::ResidPre(0)).unwrap()).unwrap()
        }
        Upstream::Mlp(l) => {
            (c.at(HookPoint::MlpOut(l)).unwrap() - k.at(HookPoint::MlpOut(l)).unwrap()).unwrap()
        }
        Upstream::Head(l, h) => {
            let kz = k.at(HookPoint::Z(l)).unwrap();
            let d = kz.dims().to_vec();
            let z = kz
                .slice_assign(
                    &[0..d[0], 0..d[1], h..h + 1, 0..d[3]],
                    &c.at(HookPoint::Z(l)).unwrap().narrow(2, h, 1).unwrap(),
                )
                .unwrap();
            let out = m.block(l).unwrap().attn_out_from_z(&z).unwrap();
            (out - k.at(HookPoint::AttnOut(l)).unwrap()).unwrap()
        }
    }
}

#[test]
fn head_input_edges_are_directional_derivatives() {
    for family in [
        "gpt2", "llama", "gemma2", "gemma3", "qwen3", "olmo2", "neox", "gptj", "phi", "mixtral",
    ] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let a = AttributionPatcher::new(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_grad_metric(&[ANSWER]),
        )
        .unwrap();
        let gap = a.clean_metric() - a.corrupted_metric();
        let graph = a.edges().unwrap();
        let cfg = &m.cfg;
        let (b, p, h, d) = (corrupt.batch(), corrupt.max_len(), cfg.n_heads, cfg.d_model);
        let zeros = Tensor::zeros((b, p, h, d), DType::F32, m.device()).unwrap();
        // with zero taps the split forward is the model's forward
        let plain = metrics::mean(
            &metrics::logit_diff(&m.last_logits(&corrupt).unwrap(), &[ANSWER]).unwrap(),
        );
        let zero_taps = SplitTaps {
            q: &zeros,
            k: &zeros,
            v: &zeros,
        };
        let tapped = tapped_metric(&m, &corrupt, 1, &zero_taps);
        assert!(
            (tapped - plain).abs() < 1e-5,
            "{family}: {tapped} vs {plain}"
        );
        let last = cfg.n_layers - 1;
        for (u, to) in [
            (Upstream::Embed, Downstream::Head(last, 0, Input::Q)),
            (Upstream::Embed, Downstream::Head(last, 1, Input::K)),
            (Upstream::Head(0, 2), Downstream::Head(last, 3, Input::V)),
            (Upstream::Mlp(0), Downstream::Head(last, 1, Input::Q)),
            (Upstream::Head(0, 1), Downstream::Head(last, 2, Input::K)),
        ] {
            let Downstream::Head(l, hh, input) = to else {
                unreachable!()
            };
            let est = graph.score(u, to).unwrap() * gap;
            let du = delta(&m, &a, u);
            let eps = 1e-3;
            let moved = |s: f64| -> f32 {
                let mut v = vec![Tensor::zeros((b, p, 1, d), DType::F32, m.device()).unwrap(); h];
                v[hh] = (&du * s).unwrap().unsqueeze(2).unwrap();
                let tap = Tensor::cat(&v, 2).unwrap();
                let taps = match input {
                    Input::Q => SplitTaps {
                        q: &tap,
                        k: &zeros,
                        v: &zeros,
                    },
                    Input::K => SplitTaps {
                        q: &zeros,
                        k: &tap,
                        v: &zeros,
                    },
                    Input::V => SplitTaps {
                        q: &zeros,
                        k: &zeros,
                        v: &tap,
                    },
                };
                tapped_metric(&m, &corrupt, l, &taps)
            };
            let fd = (moved(eps) - moved(-eps)) / (2.0 * eps as f32);
            assert!(
                (fd - est).abs() <= 1e-3 + 2e-2 * est.abs(),
                "{family} {u} -> {to}: edge {est} vs finite differences {fd}"
            );
        }
    }
}

#[test]
fn edges_into_a_node_add_up_to_its_gradient() {
    // Σ over the q/k/v inputs of a layer's heads (and its MLP, for parallel blocks) of the
    // embedding's edges = Δembed · (∂m/∂resid_pre − ∂m/∂resid_mid); into an MLP = Δembed ·
    // (∂m/∂resid_mid − ∂m/∂resid_post); into the logits = Δembed · ∂m/∂resid_post(last)
    for family in ["gpt2", "llama", "gemma2", "olmo2", "neox", "qwen2_moe"] {
        let m = tiny(family);
        let (clean, corrupt) = pair(&m);
        let a = AttributionPatcher::new(
            &m,
            &clean,
            &corrupt,
            metrics::logit_diff_grad_metric(&[ANSWER]),
        )
        .unwrap();
        let gap = a.clean_metric() - a.corrupted_metric();
        let g = a.edges().unwrap();
        let grads = a.gradients();
        let de = delta(&m, &a, Upstream::Embed);
        let dot = |t: &Tensor| -> f32 {
            (&de * t)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let gr = |hp: HookPoint| grads.at(hp).unwrap().clone();
        let cfg = &m.cfg;
        for l in 0..cfg.n_layers {
            let mut heads = 0f32;
            for h in 0..cfg.n_heads {
                for i in [Input::Q, Input::K, Input::V] {
                    heads += g.score(Upstream::Embed, Downstream::Head(l, h, i)).unwrap() * gap;
                }
            }
            let mlp = g.score(Upstream::Embed, Downstream::Mlp(l)).unwrap() * gap;
            let after = gr(HookPoint::ResidPost(l));
            let (want_heads, want_mlp) = if cfg.parallel_attn_mlp {
                (dot(&(gr(HookPoint::ResidPre(l)) - &after).unwrap()), None)
            } else {
                let mid = gr(HookPoint::ResidMid(l));
                (
                    dot(&(gr(HookPoint::ResidPre(l)) - &mid).unwrap()),
                    Some(dot(&(mid - after).unwrap())),
                )
            };
            let got = if want_mlp.is_none() {
                heads + mlp
            } else {
                heads
            };
            assert!(
                (got - want_heads).abs() <= 1e-4 + 1e-3 * want_heads.abs(),
                "{family} layer {l}: heads {got} vs {want_heads}"
            );
            if let Some(w) = want_mlp {
                assert!(
                    (mlp - w).abs() <= 1e-4 + 1e-3 * w.abs(),
                    "{family} MLP{l}: {mlp} vs {w}"
                );
            }
        }
        let logits = g.score(Upstream::Embed, Downstream::Logits).unwrap() * gap;
        let want = dot(&gr(HookPoint::ResidPost(cfg.n_layers - 1)));
        assert!(
            (logits - want).abs() <= 1e-4 + 1e-3 * want.abs(),
            "{family}: {logits} vs {want}"
        );
        // the graph: every upstream node feeds every later reader, heads their own layer's MLP
        let (l, h) = (cfg.n_layers, cfg.n_heads);
        let ups = 1 + l * (h + 1);
        let per_layer_reads = 3 * h + 1;
        let mut want_edges = per_layer_reads * l + 1; // from the embedding
        for layer in 0..l {
            let before = layer * (h + 1); // heads and MLPs of earlier layers
            want_edges += before * per_layer_reads;
            if !cfg.parallel_attn_mlp {
                want_edges += h; // this layer's heads into its MLP
            }
        }
        want_edges += ups - 1; // into the logits
        assert_eq!(g.edges.len(), want_edges, "{family}");
        assert!(g
            .edges
            .windows(2)
            .all(|w| w[0].score.abs() >= w[1].score.abs()));
    }
}

#[test]
fn the_self_check_sets_path_patching_beside_the_strongest_edges() {
    let m = tiny("llama");
    let (clean, corrupt) = pair(&m);
    let a = AttributionPatcher::new(
        &m,
        &clean,
        &corrupt,
        metrics::logit_diff_grad_metric(&[ANSWER]),
    )
    .unwrap();
    let g = a.edges().unwrap();
    let check = a.verify_edges(&g, 6, 0.1).unwrap();
    assert_eq!(check.edges.len(), 6);
    for c in &check.edges {
        assert!(c.from.starts_with('L'), "{c:?}");
        assert!(c.estimate.is_finite() && c.exact.is_finite());
    }
    // the tiny model is close to linear: the estimate tracks the exact edge patching
    assert!(check.correlation > 0.9, "{check}");
    let text = check.to_string();
    assert!(text.contains("correlation"), "{text}");
    // table and figure
    let html = g.table(5).to_html();
    let first = &g.edges[0];
    assert!(
        html.contains(&first.from.to_string()) && html.contains(&first.to.to_string()),
        "{html}"
    );
    let svg = g.figure(8, "top edges").to_svg().unwrap();
    assert!(svg.contains("<svg") && svg.contains(&first.from.to_string()));
    if let Ok(dir) = std::env::var("CANDLELENS_TEST_OUT") {
        g.figure(12, "top edges (tiny llama)")
            .save(format!("{dir}/edges.png"))
            .unwrap();
    }
    assert!(matches!(
        a.verify_edges(&g, 3, f32::NAN),
        Err(LensError::BadParameter { .. })
    ));
}

#[test]
fn lens_attribute_edges_prints_the_strongest_edges_and_their_check() {
    let dir = fixture_path("tiny/llama");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "attribute",
            "--model",
            dir.to_str().unwrap(),
            "--clean",
            "The pet of this family is",
            "--corrupt",
            "The pat of this family is",
            "--answers",
            " is",
            " of",
            "--edges",
            "--top",
            "7",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edges = v["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 7);
    for e in edges {
        assert!(
            e["from"].is_string() && e["to"].is_string() && e["score"].is_number(),
            "{e}"
        );
    }
    assert!(v["n_edges"].as_u64().unwrap() > 7);
    let check = &v["edge_check"];
    assert!(check["correlation"].is_number(), "{v}");
    assert!(!check["edges"].as_array().unwrap().is_empty());
}
