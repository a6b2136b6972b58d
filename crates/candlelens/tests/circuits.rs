//! The per-head OV and QK circuits (`HookedTransformer::OV` / `QK`, factored) against numpy's
//! SVD and general eigensolver on the full `d_model × d_model` products, built from the tiny
//! GPT-2 and Llama checkpoints by `scripts/make-circuits-reference.py`.

mod common;

use candlelens::factored::{Eigenvalue, FactoredMatrix};
use candlelens::prelude::*;
use common::*;
use serde_json::Value;

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check(ours: &FactoredMatrix, want: &Value, what: &str) {
    let s = ours.singular_values().unwrap();
    let ws = f64s(&want["singular_values"]);
    assert_eq!(s.len(), ws.len(), "{what}");
    for (a, b) in s.iter().zip(&ws) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{what}: σ {a} vs {b}"
        );
    }
    let e: Vec<Eigenvalue> = ours.eigenvalues().unwrap();
    let we: Vec<(f64, f64)> = want["eigenvalues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(e.len(), we.len(), "{what}");
    // as multisets: every reference eigenvalue has one of ours next to it
    for (re, im) in &we {
        let nearest = e
            .iter()
            .map(|l| (l.re - re).hypot(l.im - im))
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest <= 1e-5 * (1.0 + re.hypot(*im)),
            "{what}: λ {re}+{im}i unmatched ({nearest})"
        );
    }
}

fn check_family(family: &str) {
    let model = HookedTransformer::from_pretrained(
        fixture_path(&format!("tiny/{family}")).to_str().unwrap(),
    )
    .unwrap();
    let fx = read_fixture("reference/circuits.json");
    let rows = fx[family].as_array().unwrap();
    assert_eq!(rows.len(), model.cfg.n_layers * model.cfg.n_heads);
    for row in rows {
        let (l, h) = (
            row["layer"].as_u64().unwrap() as usize,
            row["head"].as_u64().unwrap() as usize,
        );
        let ov = model.OV(l, h).unwrap();
        assert_eq!(ov.shape(), (model.cfg.d_model, model.cfg.d_model));
        check(&ov, &row["OV"], &format!("{family} L{l}H{h} OV"));
        check(
            &model.QK(l, h).unwrap(),
            &row["QK"],
            &format!("{family} L{l}H{h} QK"),
        );
    }
}

#[test]
fn gpt2_circuits_match_numpy() {
    check_family("gpt2");
}

#[test]
fn llama_circuits_match_numpy_with_shared_kv_heads() {
    check_family("llama");
}

#[test]
fn the_factors_multiply_to_the_full_circuit_and_bad_heads_are_named() {
    let model =
        HookedTransformer::from_pretrained(fixture_path("tiny/gpt2").to_str().unwrap()).unwrap();
    let ov = model.OV(1, 2).unwrap();
    let full = model
        .W_V()
        .unwrap()
        .get(1)
        .unwrap()
        .get(2)
        .unwrap()
        .matmul(&model.W_O().unwrap().get(1).unwrap().get(2).unwrap())
        .unwrap();
    assert!(max_abs(&to_vec(&ov.full().unwrap()), &to_vec(&full)) < 1e-6);
    // the Frobenius norm from the singular values equals the full matrix's
    let frob = to_vec(&full)
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((ov.norm().unwrap() - frob).abs() < 1e-5 * frob);
    assert!(matches!(
        model.OV(7, 0),
        Err(LensError::LayerOutOfRange { .. })
    ));
    assert!(matches!(model.QK(0, 4), Err(LensError::OutOfRange { .. })));
}
