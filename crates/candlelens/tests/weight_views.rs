//! TransformerLens's weight views (`W_Q`, `W_O`, `W_in`, ...) against two independent
//! references: the checkpoint's own tensors read with candle's safetensors reader and sliced the
//! way TransformerLens slices them (GPT-2's Conv1D `[in, out]` blocks, Llama's `[out, in]`
//! rows), and the activations the forward pass records (`hook_q = ln1(x) @ W_Q + b_Q`, ...).

mod common;

use std::collections::HashMap;

use candlelens::prelude::*;
use common::*;

fn tiny(family: &str) -> (HookedTransformer, HashMap<String, Tensor>) {
    let dir = fixture_path(&format!("tiny/{family}"));
    let model = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let raw = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect();
    (model, raw)
}

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims());
    let d = max_abs(&to_vec(a), &to_vec(b));
    assert!(d <= tol, "max |a - b| = {d}");
}

#[test]
fn gpt2_views_slice_the_conv1d_blocks() {
    let (m, raw) = tiny("gpt2");
    let (h, dh, d) = (m.cfg.n_heads, m.cfg.d_head, m.cfg.d_model);
    let (wq, wk, wv, wo) = (
        m.W_Q().unwrap(),
        m.W_K().unwrap(),
        m.W_V().unwrap(),
        m.W_O().unwrap(),
    );
    assert_eq!(wq.dims(), &[m.cfg.n_layers, h, d, dh]);
    assert_eq!(wo.dims(), &[m.cfg.n_layers, h, dh, d]);
    for l in 0..m.cfg.n_layers {
        let c_attn = &raw[&format!("transformer.h.{l}.attn.c_attn.weight")]; // [d, 3d]
        let c_attn_b = &raw[&format!("transformer.h.{l}.attn.c_attn.bias")];
        let c_proj = &raw[&format!("transformer.h.{l}.attn.c_proj.weight")]; // [d, d]
        for head in 0..h {
            for (i, view) in [&wq, &wk, &wv].iter().enumerate() {
                let want = c_attn.narrow(1, i * d + head * dh, dh).unwrap();
                close(&view.get(l).unwrap().get(head).unwrap(), &want, 0.0);
            }
            let want_b = c_attn_b.narrow(0, head * dh, dh).unwrap();
            close(
                &m.b_Q().unwrap().get(l).unwrap().get(head).unwrap(),
                &want_b,
                0.0,
            );
            let want_o = c_proj.narrow(0, head * dh, dh).unwrap();
            close(&wo.get(l).unwrap().get(head).unwrap(), &want_o, 0.0);
        }
        let c_fc = &raw[&format!("transformer.h.{l}.mlp.c_fc.weight")]; // [d, d_mlp]
        close(&m.W_in().unwrap().get(l).unwrap(), c_fc, 0.0);
        let c_proj2 = &raw[&format!("transformer.h.{l}.mlp.c_proj.weight")]; // [d_mlp, d]
        close(&m.W_out().unwrap().get(l).unwrap(), c_proj2, 0.0);
    }
    close(&m.W_E(), &raw["transformer.wte.weight"], 0.0);
    close(&m.W_pos().unwrap(), &raw["transformer.wpe.weight"], 0.0);
    // tied: W_U is W_E transposed
    close(
        &m.W_U().unwrap(),
        &raw["transformer.wte.weight"].t().unwrap(),
        0.0,
    );
    assert!(matches!(m.W_gate(), Err(LensError::Unsupported { .. })));
}

#[test]
fn llama_views_slice_the_rows_and_repeat_kv_heads() {
    let (m, raw) = tiny("llama");
    let (h, kv, dh) = (m.cfg.n_heads, m.cfg.n_kv_heads, m.cfg.d_head);
    assert!(kv < h, "the tiny Llama has grouped-query attention");
    let group = h / kv;
    for l in 0..m.cfg.n_layers {
        let q = &raw[&format!("model.layers.{l}.self_attn.q_proj.weight")]; // [h*dh, d]
        let k = &raw[&format!("model.layers.{l}.self_attn.k_proj.weight")]; // [kv*dh, d]
        let o = &raw[&format!("model.layers.{l}.self_attn.o_proj.weight")]; // [d, h*dh]
        for head in 0..h {
            let want_q = q.narrow(0, head * dh, dh).unwrap().t().unwrap();
            close(&m.W_Q_at(l).unwrap().get(head).unwrap(), &want_q, 0.0);
            // TransformerLens's repeat_interleave: query head h reads kv head h / group
            let want_k = k.narrow(0, (head / group) * dh, dh).unwrap().t().unwrap();
            close(&m.W_K_at(l).unwrap().get(head).unwrap(), &want_k, 0.0);
            let want_o = o.narrow(1, head * dh, dh).unwrap().t().unwrap();
            close(&m.W_O_at(l).unwrap().get(head).unwrap(), &want_o, 0.0);
        }
        let gate = &raw[&format!("model.layers.{l}.mlp.gate_proj.weight")];
        close(
            &m.W_gate().unwrap().get(l).unwrap(),
            &gate.t().unwrap(),
            0.0,
        );
        let up = &raw[&format!("model.layers.{l}.mlp.up_proj.weight")];
        close(&m.W_in().unwrap().get(l).unwrap(), &up.t().unwrap(), 0.0);
    }
    close(&m.W_U().unwrap(), &raw["lm_head.weight"].t().unwrap(), 0.0);
    // no biases: zeros in TransformerLens's shapes
    assert_eq!(m.b_K().unwrap().dims(), &[m.cfg.n_layers, h, dh]);
    assert_eq!(
        to_vec(&m.b_O().unwrap())
            .iter()
            .map(|x| x.abs())
            .sum::<f32>(),
        0.0
    );
    assert!(matches!(m.W_pos(), Err(LensError::Unsupported { .. })));
    assert!(matches!(
        m.W_Q_at(9),
        Err(LensError::LayerOutOfRange { .. })
    ));
}

/// The views reproduce the forward's recorded activations.
fn check_against_the_forward(family: &str) {
    let (m, _) = tiny(family);
    let tokens = m.to_tokens("The cat sat on the mat", None).unwrap();
    let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
    let (wq, bq, wv, bv, wo, bo) = (
        m.W_Q().unwrap(),
        m.b_Q().unwrap(),
        m.W_V().unwrap(),
        m.b_V().unwrap(),
        m.W_O().unwrap(),
        m.b_O().unwrap(),
    );
    let group = m.cfg.n_heads / m.cfg.n_kv_heads;
    for l in 0..m.cfg.n_layers {
        let x = cache
            .at(HookPoint::Ln1Normalized(l))
            .unwrap()
            .get(0)
            .unwrap(); // [p, d]
        let q = cache.at(HookPoint::Q(l)).unwrap().get(0).unwrap(); // [p, h, dh]
        let v = cache.at(HookPoint::V(l)).unwrap().get(0).unwrap(); // [p, kv, dh]
        let z = cache.at(HookPoint::Z(l)).unwrap().get(0).unwrap(); // [p, h, dh]
        let mut attn = bo.get(l).unwrap().unsqueeze(0).unwrap();
        for h in 0..m.cfg.n_heads {
            let q_h = x
                .matmul(&wq.get(l).unwrap().get(h).unwrap())
                .unwrap()
                .broadcast_add(&bq.get(l).unwrap().get(h).unwrap())
                .unwrap();
            close(&q_h, &q.narrow(1, h, 1).unwrap().squeeze(1).unwrap(), 1e-4);
            let v_h = x
                .matmul(&wv.get(l).unwrap().get(h).unwrap())
                .unwrap()
                .broadcast_add(&bv.get(l).unwrap().get(h).unwrap())
                .unwrap();
            close(
                &v_h,
                &v.narrow(1, h / group, 1).unwrap().squeeze(1).unwrap(),
                1e-4,
            );
            let z_h = z
                .narrow(1, h, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .contiguous()
                .unwrap();
            attn = attn
                .broadcast_add(&z_h.matmul(&wo.get(l).unwrap().get(h).unwrap()).unwrap())
                .unwrap();
        }
        close(
            &attn,
            &cache.at(HookPoint::AttnOut(l)).unwrap().get(0).unwrap(),
            1e-4,
        );
        // the MLP's first projection
        let x2 = cache
            .at(HookPoint::Ln2Normalized(l))
            .unwrap()
            .get(0)
            .unwrap();
        let (first, hook) = match m.W_gate() {
            Ok(g) => (x2.matmul(&g.get(l).unwrap()).unwrap(), HookPoint::MlpPre(l)),
            Err(_) => (
                x2.matmul(&m.W_in().unwrap().get(l).unwrap())
                    .unwrap()
                    .broadcast_add(&m.b_in().unwrap().get(l).unwrap())
                    .unwrap(),
                HookPoint::MlpPre(l),
            ),
        };
        close(&first, &cache.at(hook).unwrap().get(0).unwrap(), 1e-4);
    }
}

#[test]
fn gpt2_views_reproduce_the_forward() {
    check_against_the_forward("gpt2");
}

#[test]
fn llama_views_reproduce_the_forward() {
    check_against_the_forward("llama");
}

#[test]
fn every_view_has_its_listed_shape() {
    for family in ["gpt2", "llama"] {
        let (m, _) = tiny(family);
        for (name, shape) in m.weight_view_shapes() {
            let t = match name {
                "W_E" => m.W_E(),
                "W_pos" => m.W_pos().unwrap(),
                "W_Q" => m.W_Q().unwrap(),
                "W_K" => m.W_K().unwrap(),
                "W_V" => m.W_V().unwrap(),
                "W_O" => m.W_O().unwrap(),
                "b_Q" => m.b_Q().unwrap(),
                "b_K" => m.b_K().unwrap(),
                "b_V" => m.b_V().unwrap(),
                "b_O" => m.b_O().unwrap(),
                "W_in" => m.W_in().unwrap(),
                "W_gate" => m.W_gate().unwrap(),
                "W_out" => m.W_out().unwrap(),
                "b_in" => m.b_in().unwrap(),
                "b_out" => m.b_out().unwrap(),
                "W_U" => m.W_U().unwrap(),
                "b_U" => m.b_U().unwrap(),
                other => panic!("unlisted view {other}"),
            };
            assert_eq!(t.dims(), shape.as_slice(), "{family} {name}");
        }
    }
}
