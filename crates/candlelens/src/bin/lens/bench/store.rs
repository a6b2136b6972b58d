//! `lens bench store`: writing an activation dataset against the plain batched forward over the
//! same contexts, interleaved, in tokens per second.

use std::time::Instant;

use candlelens::dataset::{store_activations, StoreOptions};
use candlelens::prelude::*;
use candlelens::util::corpus::Corpus;
use serde::Serialize;

use super::touch;
use crate::common::emit_json;

/// What `lens bench store` prints.
#[derive(Serialize)]
struct StoreBench {
    model: String,
    hook: String,
    tokens: usize,
    runs: usize,
    /// Median tokens per second of `store_activations` (a fresh folder each run).
    store_tokens_per_s: f64,
    /// Median tokens per second of the plain forward (last logits) over the same batches.
    forward_tokens_per_s: f64,
    /// `store / forward`: 1 when writing costs nothing.
    ratio: f64,
    /// Bytes written per run.
    bytes_written: u64,
}

fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        folder_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

pub(super) fn store(
    model: &str,
    hook: Option<&str>,
    max_tokens: usize,
    runs: usize,
    as_json: bool,
) -> candlelens::Result<()> {
    let model = HookedTransformer::from_pretrained(model)?;
    let hook = match hook {
        Some(h) => HookPoint::parse_for(h, &model.cfg)?,
        // the last block's output: the whole model runs in both
        None => HookPoint::ResidPost(model.cfg.n_layers - 1),
    };
    let corpus = Corpus::python_docs()?;
    let opts = StoreOptions {
        context_size: 128,
        batch_size: 16,
        contexts_per_shard: 64,
        max_tokens: Some(max_tokens),
        progress: false,
        ..Default::default()
    };
    let contexts = corpus.contexts(&model, opts.context_size, max_tokens / opts.context_size)?;
    let tokens: usize = contexts.rows().iter().map(Vec::len).sum();
    let scratch =
        std::env::temp_dir().join(format!("candlelens-bench-store-{}", std::process::id()));
    let (mut store_s, mut fwd_s) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for i in 0..=runs.max(1) {
        let dir = scratch.join(i.to_string());
        let t0 = Instant::now();
        store_activations(&model, &corpus, &[hook], &dir, &opts)?;
        let s = t0.elapsed().as_secs_f64();
        bytes = folder_bytes(&dir);
        std::fs::remove_dir_all(&dir).ok();
        let t0 = Instant::now();
        for chunk in contexts.rows().chunks(opts.batch_size) {
            let t = Tokens::new(chunk.to_vec(), contexts.pad_id())?;
            touch(&model.last_logits(&t)?)?;
        }
        let f = t0.elapsed().as_secs_f64();
        if i > 0 {
            store_s.push(s);
            fwd_s.push(f);
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, f) = (med(&mut store_s), med(&mut fwd_s));
    let report = StoreBench {
        model: model.cfg.name.clone(),
        hook: hook.to_string(),
        tokens,
        runs: runs.max(1),
        store_tokens_per_s: tokens as f64 / s,
        forward_tokens_per_s: tokens as f64 / f,
        ratio: f / s,
        bytes_written: bytes,
    };
    emit_json(&report, as_json);
    Ok(())
}
