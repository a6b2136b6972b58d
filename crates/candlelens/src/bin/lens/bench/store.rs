//! `lens bench store`: writing an activation dataset against the plain batched forward over the
//! same contexts, interleaved, in tokens per second; and with `--rss` the peak memory of a
//! `lens store` process storing 10 times as many tokens against one storing the benchmark's.

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
    /// With `--rss`: the peak memory of `lens store` over `tokens` and over 10 × `tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss: Option<RssBench>,
}

/// Peak resident memory of `lens store` storing 1× and 10× the tokens, each in a process of
/// its own (the whole command: load, corpus, forward, writes).
#[derive(Serialize)]
struct RssBench {
    /// Peak resident memory of `lens store --max-tokens tokens`, MB.
    peak_mb_1x: f64,
    /// Tokens of the second store.
    tokens_10x: usize,
    /// Peak resident memory of `lens store --max-tokens tokens_10x`, MB.
    peak_mb_10x: f64,
    /// `peak_mb_10x / peak_mb_1x`: 1 when memory is bounded by a shard, not by the dataset.
    ratio: f64,
}

/// The peak RSS (MB) `lens store --json` reports for storing `max_tokens` of python-docs at
/// `hook` into `dir`, run as a child process.
fn peak_of_store(
    model: &str,
    hook: &str,
    max_tokens: usize,
    dir: &std::path::Path,
) -> candlelens::Result<f64> {
    let exe =
        std::env::current_exe().map_err(|e| LensError::Custom(format!("lens itself: {e}")))?;
    let out = std::process::Command::new(exe)
        .args([
            "store",
            "--model",
            model,
            "--corpus",
            "python-docs",
            "--hook",
            hook,
        ])
        .args([
            "--context",
            "128",
            "--batch",
            "16",
            "--contexts-per-shard",
            "64",
        ])
        .arg("--max-tokens")
        .arg(max_tokens.to_string())
        .arg("--out")
        .arg(dir)
        .arg("--json")
        .output()
        .map_err(|e| LensError::Custom(format!("running lens store: {e}")))?;
    std::fs::remove_dir_all(dir).ok();
    if !out.status.success() {
        return Err(LensError::Custom(format!(
            "lens store failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| LensError::Custom(format!("lens store's JSON: {e}")))?;
    if v["tokens_run"].as_u64() != Some(max_tokens as u64) {
        return Err(LensError::too_few(
            "tokens in the python-docs corpus for --rss",
            max_tokens,
            v["tokens_run"].as_u64().unwrap_or(0) as usize,
            "use a smaller --max-tokens",
        ));
    }
    v["peak_rss_mb"]
        .as_f64()
        .filter(|&mb| mb > 0.0)
        .ok_or_else(|| LensError::Unsupported {
            what: "--rss".into(),
            fix: "this system reports no peak memory (/proc/self/status VmHWM); run without --rss"
                .into(),
        })
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
    model_arg: &str,
    hook: Option<&str>,
    max_tokens: usize,
    runs: usize,
    rss: bool,
    as_json: bool,
) -> candlelens::Result<()> {
    let model = HookedTransformer::from_pretrained(model_arg)?;
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
    let rss = if rss {
        let hook = hook.to_string();
        let peak_mb_1x = peak_of_store(model_arg, &hook, tokens, &scratch.join("1x"))?;
        let tokens_10x = 10 * tokens;
        let peak_mb_10x = peak_of_store(model_arg, &hook, tokens_10x, &scratch.join("10x"))?;
        Some(RssBench {
            peak_mb_1x,
            tokens_10x,
            peak_mb_10x,
            ratio: peak_mb_10x / peak_mb_1x,
        })
    } else {
        None
    };
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
        rss,
    };
    emit_json(&report, as_json);
    Ok(())
}
