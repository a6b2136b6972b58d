//! Shared helpers for the integration tests: the embedded models, loaded once per test binary,
//! and the Hugging Face reference fixtures written by `scripts/make-reference.py`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candlelens::prelude::*;
use serde_json::Value;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn read_fixture(name: &str) -> Value {
    let p = fixture_path(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Loads an embedded model once (shared, as notebooks hold it); fails with the fetch command if
/// it is absent.
pub fn model(alias: &'static str) -> &'static Arc<HookedTransformer> {
    static SMOL: OnceLock<Arc<HookedTransformer>> = OnceLock::new();
    static GEMMA: OnceLock<Arc<HookedTransformer>> = OnceLock::new();
    let cell = match alias {
        "smollm2-135m" => &SMOL,
        "gemma-3-270m" => &GEMMA,
        other => panic!("no test model {other}"),
    };
    cell.get_or_init(|| {
        Arc::new(
            HookedTransformer::from_pretrained(alias)
                .unwrap_or_else(|e| panic!("loading {alias}: {e}")),
        )
    })
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// |a - b| / |b| in L2.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tiny random checkpoint of `family` (`tests/fixtures/tiny/<family>`), shared as the
/// patching and attribution APIs take it.
pub fn tiny(family: &str) -> Arc<HookedTransformer> {
    let dir = fixture_path(&format!("tiny/{family}"));
    Arc::new(HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap())
}

/// The pet and Paris prompts (right-padded) and their corruption at two positions of each,
/// `first(n)` and `n − 3` for a prompt of `n` tokens, as the PyTorch reference scripts make it.
pub fn corrupted_pair(m: &HookedTransformer, first: fn(usize) -> usize) -> (Tokens, Tokens) {
    let clean = m
        .to_tokens(
            ["The pet of this family is", "Is Paris the capital of"].as_slice(),
            None,
        )
        .unwrap();
    let rows: Vec<Vec<u32>> = clean
        .rows()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let n = r.len();
            r[first(n)] = (r[first(n)] + 17) % 250 + 3;
            r[n - 3] = (r[n - 3] + 29) % 250 + 3;
            r
        })
        .collect();
    let corrupt = Tokens::new(rows, clean.pad_id()).unwrap();
    (clean, corrupt)
}

/// An SAE of `tests/fixtures/sae/<name>` (see `scripts/make-sae-reference.py`).
pub fn sae_fixture(name: &str) -> candlelens::sae::Sae {
    candlelens::sae::Sae::load(fixture_path(&format!("sae/{name}"))).unwrap()
}
