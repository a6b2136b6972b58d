//! `lens bench`: load time and memory, forward time, and the fast patching sweep against the
//! naive loop — each a ratio or a figure measured in one run.

use std::time::Instant;

use candle_core::{DType, IndexOp};
use candlelens::patching::PatchTarget;
use candlelens::prelude::*;
use clap::Subcommand;
use serde::Serialize;

use crate::common::{answer_metric, emit_json, rss_mb, Input};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Load time and peak memory against the bytes of the loaded weights.
    Load {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// Compute dtype: f32 (default), bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Median forward time over N runs after a warm-up.
    Forward {
        #[command(flatten)]
        input: Input,
        /// Timed runs.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The fast patching sweep against the naive one-forward-per-cell loop, on the pet prompts.
    Patch {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// Correct and incorrect answer.
        #[arg(long, num_args = 2, default_values = [" Peb", " Rachel"])]
        answers: Vec<String>,
        /// Time only this many naive cells and extrapolate (the output says so).
        #[arg(long)]
        sample: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn bench(cmd: &BenchCmd) -> candlelens::Result<()> {
    match cmd {
        BenchCmd::Forward { input, runs, json } => forward(input, *runs, *json),
        BenchCmd::Load { model, dtype, json } => load(model, dtype, *json),
        BenchCmd::Patch {
            model,
            answers,
            sample,
            json,
        } => patch(model, answers, *sample, *json),
    }
}

/// What `lens bench forward` prints.
#[derive(Serialize)]
struct ForwardBench {
    model: String,
    n_tokens: usize,
    runs: usize,
    median_ms: f64,
    min_ms: f64,
    load_s: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
    threads: usize,
}

fn forward(input: &Input, runs: usize, as_json: bool) -> candlelens::Result<()> {
    let t0 = Instant::now();
    let model = input.load()?;
    let load_s = t0.elapsed().as_secs_f64();
    let tokens = input.tokens(&model)?;
    model.forward(&tokens)?; // warm-up
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let logits = model.forward(&tokens)?;
        logits
            .i((0, 0, 0))?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let report = ForwardBench {
        model: model.cfg.name.clone(),
        n_tokens: tokens.max_len(),
        runs: ms.len(),
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        load_s,
        rss_mb: rss_mb("VmRSS:"),
        peak_rss_mb: rss_mb("VmHWM:"),
        threads: candle_core::utils::get_num_threads(),
    };
    emit_json(&report, as_json);
    Ok(())
}

/// What `lens bench load` prints.
#[derive(Serialize)]
struct LoadBench {
    model: String,
    dtype: String,
    load_s: f64,
    weight_mb: f64,
    rss_before_mb: f64,
    peak_rss_mb: f64,
    rss_mb: f64,
    peak_over_weights: f64,
}

fn load(model: &str, dtype: &str, as_json: bool) -> candlelens::Result<()> {
    let opts = LoadOptions::parse("cpu", dtype)?;
    let before = rss_mb("VmRSS:");
    let t0 = Instant::now();
    let m = HookedTransformer::from_pretrained_with(model, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let weight_mb = m.weights.n_bytes(&m.cfg) as f64 / (1024.0 * 1024.0);
    let peak = rss_mb("VmHWM:");
    let report = LoadBench {
        model: m.cfg.name.clone(),
        dtype: dtype.to_string(),
        load_s,
        weight_mb,
        rss_before_mb: before,
        peak_rss_mb: peak,
        rss_mb: rss_mb("VmRSS:"),
        peak_over_weights: peak / weight_mb,
    };
    emit_json(&report, as_json);
    Ok(())
}

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
const PET_SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";

/// What `lens bench patch` prints.
#[derive(Serialize)]
struct PatchBench {
    model: String,
    n_tokens: usize,
    cells: usize,
    fast_s: f64,
    naive_s: f64,
    naive_estimated_from_sample: bool,
    speedup: f64,
    fast_forward_equivalents: f64,
    naive_forwards: usize,
    forward_ratio: f64,
    max_abs_diff: Option<f32>,
    clean_diff: f32,
    corrupt_diff: f32,
}

fn patch(
    model: &str,
    answers: &[String],
    sample: Option<usize>,
    as_json: bool,
) -> candlelens::Result<()> {
    let model = HookedTransformer::from_pretrained(model)?;
    let clean = model.to_tokens(PET, None)?;
    let corrupt = model.to_tokens(PET_SWAPPED, None)?;
    let mut p = Patcher::new(&model, &clean, &corrupt, answer_metric(&model, answers)?)?;
    p.progress = !as_json;
    let fast = p.sweep(PatchTarget::ResidPre)?;
    let (naive_s, estimated, max_diff) = match sample {
        None => {
            let naive = p.naive_sweep(PatchTarget::ResidPre)?;
            let d = fast
                .values
                .iter()
                .flatten()
                .zip(naive.values.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            (naive.seconds, false, Some(d))
        }
        Some(k) => {
            let n_pos = clean.max_len();
            let t0 = Instant::now();
            let cells = k.max(1).min(fast.naive_forwards);
            for i in 0..cells {
                let cell = i * fast.naive_forwards / cells;
                p.naive(PatchTarget::ResidPre, cell / n_pos, cell % n_pos)?;
            }
            let per = t0.elapsed().as_secs_f64() / cells as f64;
            (per * fast.naive_forwards as f64, true, None)
        }
    };
    let report = PatchBench {
        model: model.cfg.name.clone(),
        n_tokens: clean.max_len(),
        cells: fast.naive_forwards,
        fast_s: fast.seconds,
        naive_s,
        naive_estimated_from_sample: estimated,
        speedup: naive_s / fast.seconds,
        fast_forward_equivalents: fast.forward_equivalents,
        naive_forwards: fast.naive_forwards,
        forward_ratio: fast.naive_forwards as f64 / fast.forward_equivalents,
        max_abs_diff: max_diff,
        clean_diff: fast.clean,
        corrupt_diff: fast.corrupted,
    };
    emit_json(&report, as_json);
    Ok(())
}
