//! Mixtures of experts (Mixtral, Qwen 2/3 MoE) on tiny random checkpoints saved by
//! transformers: routing as the hooks show it, the sparse path (only the chosen experts) equal
//! to the dense one the hooks see, rerouting through `hook_expert_weights`, and transformers 5's
//! fused expert layout loading to the same model. (Logits against transformers: tests/tiny.rs.)

mod common;

use std::collections::HashMap;

use candlelens::prelude::*;
use candlelens::Hooks;
use common::*;

fn tiny(family: &str) -> HookedTransformer {
    HookedTransformer::from_pretrained(fixture_path(&format!("tiny/{family}")).to_str().unwrap())
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

const PROMPTS: [&str; 2] = [
    "The pet of this family is",
    "Is Paris the capital of France?",
];

#[test]
fn routing_weights_keep_top_k_experts_and_unrouted_experts_stay_silent() {
    for family in ["mixtral", "qwen2_moe", "qwen3_moe"] {
        let m = tiny(family);
        let moe = m.cfg.moe.clone().expect("a mixture of experts");
        let tokens = m.to_tokens(PROMPTS.as_slice(), None).unwrap();
        let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
        for (hp, _) in HookPoint::all_for(&m.cfg) {
            if !matches!(hp, HookPoint::Result(_)) {
                assert!(
                    cache.contains(hp),
                    "{family}: {hp} is listed but did not fire"
                );
            }
        }
        for l in 0..m.cfg.n_layers {
            let w = cache.at(HookPoint::ExpertWeights(l)).unwrap();
            let post = cache.at(HookPoint::MlpPost(l)).unwrap();
            assert_eq!(w.dims()[2], moe.n_experts);
            assert_eq!(post.dims()[2], m.cfg.d_mlp);
            for (b, len) in tokens.lengths().into_iter().enumerate() {
                for p in 0..len {
                    let wp = to_vec(&w.i((b, p)).unwrap());
                    let postp = to_vec(&post.i((b, p)).unwrap());
                    let routed: Vec<usize> = (0..moe.n_experts).filter(|&e| wp[e] != 0.0).collect();
                    assert_eq!(routed.len(), moe.top_k, "{family} L{l} ({b},{p}): {wp:?}");
                    let sum: f32 = wp.iter().sum();
                    if moe.norm_topk_prob {
                        assert!((sum - 1.0).abs() < 1e-5, "{family}: weights sum to {sum}");
                    } else {
                        assert!(sum < 1.0 && sum > 0.0, "{family}: {sum}");
                    }
                    for e in 0..moe.n_experts {
                        let active = postp[moe.units(e)].iter().any(|&x| x != 0.0);
                        assert_eq!(
                            active,
                            routed.contains(&e),
                            "{family} expert {e} at ({b},{p})"
                        );
                    }
                    if moe.d_shared > 0 {
                        assert!(postp[moe.shared_units()].iter().any(|&x| x != 0.0));
                    }
                }
            }
        }
    }
}

/// Logits of a run with `hooks`, over the real positions of each prompt.
fn logits_with(m: &HookedTransformer, tokens: &Tokens, hooks: &mut Hooks) -> Vec<f32> {
    let logits = m.run_with_hooks(tokens, hooks).unwrap();
    tokens
        .lengths()
        .into_iter()
        .enumerate()
        .flat_map(|(b, len)| to_vec(&logits.i((b, ..len)).unwrap()))
        .collect()
}

#[test]
fn only_the_chosen_experts_run_and_give_what_the_hooked_dense_path_gives() {
    for family in ["mixtral", "qwen2_moe", "qwen3_moe"] {
        let m = tiny(family);
        let tokens = m.to_tokens(PROMPTS.as_slice(), None).unwrap();
        let sparse = logits_with(&m, &tokens, &mut Hooks::new());
        // a reading hook on hook_post makes every MoE layer take the dense path
        let mut dense_hooks = Hooks::new();
        dense_hooks.add_filter(HookFilter::suffix("mlp.hook_post").unwrap(), |_, _| {
            Ok(None)
        });
        let dense = logits_with(&m, &tokens, &mut dense_hooks);
        let d = max_abs(&sparse, &dense);
        assert!(d < 1e-5, "{family}: sparse vs dense logits differ by {d}");
    }
}

#[test]
fn rerouting_through_expert_weights_changes_which_experts_run() {
    let m = tiny("mixtral");
    let moe = m.cfg.moe.clone().unwrap();
    let tokens = m.to_tokens(PROMPTS.as_slice(), None).unwrap();
    // every token to the last expert alone, on both paths
    let reroute = |w: &Tensor, _: &HookPoint| -> candlelens::Result<Option<Tensor>> {
        let (b, p, e) = w.dims3()?;
        let mut v = vec![0f32; b * p * e];
        for t in 0..b * p {
            v[t * e + e - 1] = 1.0;
        }
        Ok(Some(Tensor::from_vec(v, (b, p, e), w.device())?))
    };
    let mut sparse_hooks = Hooks::new();
    sparse_hooks.add_filter(
        HookFilter::suffix("mlp.hook_expert_weights").unwrap(),
        reroute,
    );
    let sparse = logits_with(&m, &tokens, &mut sparse_hooks);
    let mut seen: HashMap<HookPoint, Tensor> = HashMap::new();
    let mut dense_hooks = Hooks::new();
    dense_hooks.add_filter(
        HookFilter::suffix("mlp.hook_expert_weights").unwrap(),
        reroute,
    );
    dense_hooks.add_filter(HookFilter::suffix("mlp.hook_post").unwrap(), |a, hp| {
        seen.insert(*hp, a.clone());
        Ok(None)
    });
    let dense = logits_with(&m, &tokens, &mut dense_hooks);
    drop(dense_hooks);
    assert!(max_abs(&sparse, &dense) < 1e-5);
    let plain = logits_with(&m, &tokens, &mut Hooks::new());
    assert!(max_abs(&plain, &sparse) > 1e-3, "rerouting changed nothing");
    // only the last expert's units are active
    let post = to_vec(&seen[&HookPoint::MlpPost(0)].i((0, 1)).unwrap());
    let last = moe.units(moe.n_experts - 1);
    assert!(post[last.clone()].iter().any(|&x| x != 0.0));
    assert!(post[..last.start].iter().all(|&x| x == 0.0));
}

#[test]
fn the_fused_expert_layout_of_transformers_5_loads_the_same_model() {
    // rewrite the Mixtral fixture with each layer's experts fused the way transformers 5 holds
    // them in memory: mlp.experts.gate_up_proj [E, 2 d_expert, d_model], down_proj [E, d_model,
    // d_expert], the router as mlp.gate
    let src = fixture_path("tiny/mixtral");
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let m = tiny("mixtral");
    let moe = m.cfg.moe.clone().unwrap();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in &tensors {
        if !name.contains("block_sparse_moe") {
            out.insert(name.clone(), t.clone());
        }
    }
    for l in 0..m.cfg.n_layers {
        let p = format!("model.layers.{l}.block_sparse_moe");
        let get = |e: usize, w: &str| tensors[&format!("{p}.experts.{e}.{w}.weight")].clone();
        let gate_up: Vec<Tensor> = (0..moe.n_experts)
            .map(|e| Tensor::cat(&[&get(e, "w1"), &get(e, "w3")], 0).unwrap())
            .collect();
        let down: Vec<Tensor> = (0..moe.n_experts).map(|e| get(e, "w2")).collect();
        let q = format!("model.layers.{l}.mlp");
        out.insert(
            format!("{q}.experts.gate_up_proj"),
            Tensor::stack(&gate_up, 0).unwrap(),
        );
        out.insert(
            format!("{q}.experts.down_proj"),
            Tensor::stack(&down, 0).unwrap(),
        );
        out.insert(
            format!("{q}.gate.weight"),
            tensors[&format!("{p}.gate.weight")].clone(),
        );
    }
    let dir = std::env::temp_dir().join(format!("candlelens-fused-moe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    let fused = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let tokens = m.to_tokens(PROMPTS.as_slice(), None).unwrap();
    let a = logits_with(&m, &tokens, &mut Hooks::new());
    let b = logits_with(&fused, &tokens, &mut Hooks::new());
    std::fs::remove_dir_all(&dir).ok();
    assert!(max_abs(&a, &b) < 1e-6);
}
