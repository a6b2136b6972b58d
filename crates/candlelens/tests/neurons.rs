//! Neurons and directions as components: `stack_neuron_results` sums (with `b_out`) to the
//! cached `hook_mlp_out` on a LayerNorm, an RMSNorm and a post-norm family, its direct logit
//! attribution is the per-neuron split of the MLP's; neuron and direction views read the store
//! and the unembedding as the definitions say.

mod common;

use candlelens::analysis::Pos;
use candlelens::prelude::*;
use candlelens::sae::views::FeatureView;
use common::*;

#[test]
fn neuron_results_sum_to_the_mlp_output() {
    for family in ["gpt2", "llama", "gemma2"] {
        let m = tiny(family);
        let tokens = m
            .to_tokens(
                ["The pet of this family is", "Is Paris the capital of"].as_slice(),
                None,
            )
            .unwrap();
        let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
        let stack = cache
            .stack_neuron_results(&m, Some(2), Pos::Last, None)
            .unwrap();
        assert_eq!(stack.labels.len(), 2 * m.cfg.d_mlp);
        assert_eq!(stack.labels[m.cfg.d_mlp + 3], "L1N3");
        for l in 0..2 {
            let mut sum = stack
                .stack
                .narrow(0, l * m.cfg.d_mlp, m.cfg.d_mlp)
                .unwrap()
                .sum(0)
                .unwrap();
            if let Some(b) = &m.weights.layers[l].b_out {
                sum = sum.broadcast_add(&b.to_dtype(DType::F32).unwrap()).unwrap();
            }
            let out = cache.get(&format!("blocks.{l}.hook_mlp_out")).unwrap();
            let last: Vec<Tensor> = tokens
                .last_positions()
                .iter()
                .enumerate()
                .map(|(b, &p)| out.get(b).unwrap().get(p).unwrap())
                .collect();
            let want = Tensor::stack(&last, 0).unwrap();
            let d = max_abs(&to_vec(&sum), &to_vec(&want));
            assert!(
                d < 1e-4,
                "{family} layer {l}: neurons + b_out differ from mlp_out by {d}"
            );
        }
        // a subset, and its DLA: one value per neuron
        let some = cache
            .stack_neuron_results(&m, Some(1), Pos::Last, Some(&[0, 5]))
            .unwrap();
        assert_eq!(some.labels, ["L0N0", "L0N5"]);
        let dirs = m.tokens_to_residual_directions(&[5, 5]).unwrap();
        let dla = m.logit_attribution(&cache, &some, &dirs).unwrap();
        assert_eq!(dla.values.len(), 2);
        assert!(cache
            .stack_neuron_results(&m, Some(1), Pos::Last, Some(&[m.cfg.d_mlp]))
            .is_err());
    }
}

#[test]
fn neuron_and_direction_views_read_the_store_and_the_unembedding() {
    let m = tiny("llama");
    let tokens = Tokens::new(
        (0..6)
            .map(|r| (0..12).map(|j| ((j * 5 + r * 3) % 50 + 3) as u32).collect())
            .collect(),
        0,
    )
    .unwrap();
    let hook = HookPoint::parse("blocks.0.mlp.hook_post").unwrap();
    let store = m.collect_activations(&tokens, hook, 4).unwrap();
    let n = 7;
    let view = FeatureView::neuron(&m, &store, n, 3, 2).unwrap();
    let col: Vec<f32> = to_vec(&store.acts.narrow(1, n, 1).unwrap());
    let max = col.iter().copied().fold(f32::MIN, f32::max);
    assert!((view.contexts[0].act - max).abs() < 1e-6);
    // promoted tokens: W_out[n] · W_U, computed here
    let w = m.weights.layers[0].w_out.t().unwrap().get(n).unwrap();
    let logits = to_vec(
        &m.weights
            .w_u
            .matmul(&w.unsqueeze(1).unwrap())
            .unwrap()
            .squeeze(1)
            .unwrap(),
    );
    let best = logits.iter().copied().fold(f32::MIN, f32::max);
    assert!(
        (view.promoted[0].1 - best).abs() < 1e-4,
        "{:?} vs {best}",
        view.promoted[0]
    );
    // the direction e_n at the same store is the same neuron (no unembedding: not the residual)
    let mut e = vec![0f32; m.cfg.d_mlp];
    e[n] = 1.0;
    let dview =
        FeatureView::direction(&m, &store, &Tensor::new(e, &Device::Cpu).unwrap(), 3, 2).unwrap();
    assert_eq!(dview.activations, view.activations);
    assert!(dview.promoted.is_empty());
    // a residual-stream direction promotes through W_U
    let resid = m
        .collect_activations(
            &tokens,
            HookPoint::parse("blocks.1.hook_resid_pre").unwrap(),
            4,
        )
        .unwrap();
    let dir = m
        .W_U()
        .unwrap()
        .narrow(1, 9, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let rview = FeatureView::direction(&m, &resid, &dir, 3, 2).unwrap();
    assert!(!rview.promoted.is_empty() && rview.to_html().unwrap().contains("(a direction)"));
    // bad input
    assert!(FeatureView::neuron(&m, &resid, 0, 3, 2).is_err());
    assert!(FeatureView::neuron(&m, &store, m.cfg.d_mlp, 3, 2).is_err());
    assert!(FeatureView::direction(
        &m,
        &resid,
        &Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        3,
        2
    )
    .is_err());
}
