//! `lens bench`: load time and memory, forward time, and the fast patching sweep against the
//! naive loop — each a ratio or a figure measured in one run.

use std::time::Instant;

use candle_core::{DType, IndexOp};
use candlelens::prelude::*;
use clap::Subcommand;
use serde::Serialize;

use crate::common::{emit_json, rss_mb, Input};

mod batch;
mod patch;
mod probe;
mod store;
use batch::{cache, padding};

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
    /// Median forward time over N runs after a warm-up (one prompt, or a batch from --prompts).
    Forward {
        #[command(flatten)]
        input: Input,
        /// Compute only each prompt's last-position logits.
        #[arg(long)]
        last: bool,
        /// Also time the forward's matrix products alone (the same shapes and count, on
        /// random inputs): the floor a forward on this gemm cannot beat.
        #[arg(long)]
        floor: bool,
        /// Timed runs.
        #[arg(long, default_value_t = 10, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// run_with_cache with every hook against the plain forward doing the same logits work,
    /// medians over N runs each, interleaved, in one process.
    Cache {
        #[command(flatten)]
        input: Input,
        /// Compute only each prompt's last-position logits (both sides).
        #[arg(long)]
        last: bool,
        /// Timed runs.
        #[arg(long, default_value_t = 10, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What padding costs: the --prompts batch left-padded (per-prompt masks and positions)
    /// and right-padded, against a batch of the same shape with no padding (the longest prompt
    /// in every row), each prompt's last logits, medians over N runs each, interleaved.
    Padding {
        #[command(flatten)]
        input: Input,
        /// Timed runs.
        #[arg(long, default_value_t = 10, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The LRE Jacobian estimator: seconds per training subject on the gender relation
    /// (data/data_sample.json, the source's template and split).
    Jacobian {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// The layer h is read at.
        #[arg(long)]
        layer: usize,
        /// Training subjects to average over.
        #[arg(long, default_value_t = 2)]
        subjects: usize,
        /// The relation file.
        #[arg(long, default_value = "data/data_sample.json")]
        data: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attribution patching (every node gradient: one clean run, one corrupted run with
    /// gradients, one backward) against the plain forward of the same batch, medians over N
    /// runs each, interleaved: the cost in forward-equivalents. The batch is the pet source's
    /// eight IOI prompts with their name-swap corruptions.
    Attribution {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// Timed runs.
        #[arg(long, default_value_t = 5, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// Also time the edge attribution pass (one split-input forward and backward).
        #[arg(long)]
        edges: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writing an activation dataset (lens store) against the plain batched forward over the
    /// same contexts of the embedded python-docs corpus, interleaved: tokens per second and
    /// their ratio.
    Store {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// The hook stored (default: the last block's hook_resid_post, so both run every block).
        #[arg(long)]
        hook: Option<String>,
        /// Tokens of contexts (128 per context).
        #[arg(long, default_value_t = 8192)]
        max_tokens: usize,
        /// Timed runs of each.
        #[arg(long, default_value_t = 3, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// Also the peak memory: the peak RSS of a `lens store` process storing --max-tokens
        /// against one storing 10 times as many (Linux).
        #[arg(long)]
        rss: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Training a logistic probe per layer (blocks.L.hook_resid_post at each text's last
    /// token, Python's seed-42 split, 25 % held out): median milliseconds per layer. With
    /// --features-out it writes the features, labels and split, which
    /// `scripts/bench_hf.py probe` fits with scikit-learn for the ratio.
    Probe {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// A JSONL file: {"text": ..., "label": 0 or 1} per line.
        #[arg(long)]
        data: std::path::PathBuf,
        /// Comma-separated layers (default: every layer).
        #[arg(long, value_delimiter = ',')]
        layers: Vec<usize>,
        /// scikit-learn's C.
        #[arg(long, default_value_t = 1.0)]
        c: f64,
        /// Timed fits per layer.
        #[arg(long, default_value_t = 5, value_parser = crate::common::runs_arg)]
        runs: usize,
        /// A folder to write layer-L.npy and meta.json into.
        #[arg(long)]
        features_out: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The fast patching sweep against the naive one-forward-per-cell loop, on the pet prompts.
    Patch {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// Correct and incorrect answer (default: the first token of " Pebbles" and of
        /// " Rachel" on the model's tokenizer — " Peb" and " Rachel" on GPT-2 and Gemma, as the
        /// source reads them).
        #[arg(long, num_args = 2)]
        answers: Option<Vec<String>>,
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
        BenchCmd::Forward {
            input,
            last,
            floor,
            runs,
            json,
        } => forward(input, *last, *floor, *runs, *json),
        BenchCmd::Cache {
            input,
            last,
            runs,
            json,
        } => cache(input, *last, *runs, *json),
        BenchCmd::Padding { input, runs, json } => padding(input, *runs, *json),
        BenchCmd::Jacobian {
            model,
            layer,
            subjects,
            data,
            json,
        } => jacobian(model, *layer, *subjects, data, *json),
        BenchCmd::Load { model, dtype, json } => load(model, dtype, *json),
        BenchCmd::Attribution {
            model,
            runs,
            edges,
            json,
        } => attribution(model, *runs, *edges, *json),
        BenchCmd::Patch {
            model,
            answers,
            sample,
            json,
        } => patch::patch(model, answers.as_deref(), *sample, *json),
        BenchCmd::Probe {
            model,
            data,
            layers,
            c,
            runs,
            features_out,
            json,
        } => probe::probe(
            model,
            data,
            layers,
            *c,
            *runs,
            features_out.as_deref(),
            *json,
        ),
        BenchCmd::Store {
            model,
            hook,
            max_tokens,
            runs,
            rss,
            json,
        } => store::store(model, hook.as_deref(), *max_tokens, *runs, *rss, *json),
    }
}

/// What `lens bench forward` prints.
#[derive(Serialize)]
struct ForwardBench {
    model: String,
    batch: usize,
    last: bool,
    n_tokens: usize,
    runs: usize,
    median_ms: f64,
    min_ms: f64,
    load_s: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
    threads: usize,
    /// With `--floor`: the forward's matrix products alone, timed the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    gemm_floor_ms: Option<f64>,
}

/// The median and the minimum of `runs` timings (ms) of `f`, after one warm-up call.
pub(super) fn time_ms(
    runs: usize,
    mut f: impl FnMut() -> candlelens::Result<()>,
) -> candlelens::Result<Vec<f64>> {
    f()?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// Reads one logit back, so that lazy back-ends have finished the work.
pub(super) fn touch(logits: &Tensor) -> candlelens::Result<()> {
    logits
        .flatten_all()?
        .i(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(())
}

/// The forward's matrix products alone, on random inputs of the same shapes: every linear map
/// of a block at `batch * pos` rows (times `n_layers`), the attention products per head, and
/// the unembedding at the rows the logits are computed for. Medians of `runs`, in ms.
fn gemm_floor_ms(
    model: &HookedTransformer,
    tokens: &Tokens,
    last: bool,
    runs: usize,
) -> candlelens::Result<f64> {
    use candlelens::engine::ops::linear;
    let cfg = &model.cfg;
    let (b, p) = (tokens.batch(), tokens.max_len());
    let dev = model.device();
    let dt = model.dtype();
    let median = |ms: Vec<f64>| ms[ms.len() / 2];
    let w = &model.weights.layers[0];
    let mut mats = vec![&w.w_q, &w.w_k, &w.w_v, &w.w_o, &w.w_in, &w.w_out];
    mats.extend(w.w_gate.as_ref());
    let mut per_layer = 0.0;
    for m in mats {
        let x = Tensor::randn(0f32, 1f32, (b * p, m.dim(1)?), dev)?.to_dtype(dt)?;
        per_layer += median(time_ms(runs, || touch(&linear(&x, m, None)?))?);
    }
    // attention's two products per (batch, head), run as the forward's kernel runs them
    let q = Tensor::randn(0f32, 1f32, (b, p, cfg.n_heads, cfg.d_head), dev)?.to_dtype(dt)?;
    let k = Tensor::randn(0f32, 1f32, (b, p, cfg.n_kv_heads, cfg.d_head), dev)?.to_dtype(dt)?;
    let v = Tensor::randn(0f32, 1f32, (b, p, cfg.n_kv_heads, cfg.d_head), dev)?.to_dtype(dt)?;
    per_layer += median(time_ms(runs, || {
        touch(&candlelens::engine::ops::attention_products(&q, &k, &v)?)
    })?);
    let rows = if last { b } else { b * p };
    let x = Tensor::randn(0f32, 1f32, (rows, cfg.d_model), dev)?.to_dtype(dt)?;
    let unembed = median(time_ms(runs, || {
        touch(&linear(&x, &model.weights.w_u, None)?)
    })?);
    Ok(per_layer * cfg.n_layers as f64 + unembed)
}

fn forward(
    input: &Input,
    last: bool,
    floor: bool,
    runs: usize,
    as_json: bool,
) -> candlelens::Result<()> {
    let t0 = Instant::now();
    let model = input.load()?;
    let load_s = t0.elapsed().as_secs_f64();
    let tokens = input.tokens(&model)?;
    let at = if last { LogitsAt::Last } else { LogitsAt::All };
    let ms = time_ms(runs, || {
        touch(&model.forward_with(&tokens, at, &mut candlelens::hooks::NoHooks)?)
    })?;
    let report = ForwardBench {
        model: model.cfg.name.clone(),
        batch: tokens.batch(),
        last,
        n_tokens: tokens.max_len(),
        runs: ms.len(),
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        load_s,
        rss_mb: rss_mb("VmRSS:"),
        peak_rss_mb: rss_mb("VmHWM:"),
        threads: candle_core::utils::get_num_threads(),
        gemm_floor_ms: floor
            .then(|| gemm_floor_ms(&model, &tokens, last, runs))
            .transpose()?,
    };
    emit_json(&report, as_json);
    Ok(())
}

/// What `lens bench attribution` prints.
#[derive(Serialize)]
struct AttributionBench {
    model: String,
    batch: usize,
    n_tokens: usize,
    runs: usize,
    /// The plain forward of the clean batch (each prompt's last-position logits, as the
    /// metric reads them), median.
    forward_ms: f64,
    /// `Attribution::new`: clean run, corrupted run with gradients, backward, median.
    attribution_ms: f64,
    /// `attribution_ms / forward_ms`.
    forward_equivalents: f64,
    /// `Attribution::edges` (with --edges), median, and in forwards.
    edges_ms: Option<f64>,
    edges_forward_equivalents: Option<f64>,
}

/// The pet source's IOI batch: four templates, both name orders, corrupted by the swap.
fn ioi_batch() -> (Vec<String>, Vec<String>, Vec<(&'static str, &'static str)>) {
    let formats = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ];
    let names = [
        (" Mary", " John"),
        (" Tom", " James"),
        (" Dan", " Sid"),
        (" Martin", " Amy"),
    ];
    let (mut clean, mut answers) = (Vec::new(), Vec::new());
    for (f, (a, b)) in formats.iter().zip(names) {
        for (c, i) in [(a, b), (b, a)] {
            answers.push((c, i));
            clean.push(f.replace("{}", i));
        }
    }
    let corrupt = clean
        .chunks(2)
        .flat_map(|p| [p[1].clone(), p[0].clone()])
        .collect();
    (clean, corrupt, answers)
}

fn attribution(model: &str, runs: usize, edges: bool, as_json: bool) -> candlelens::Result<()> {
    use candlelens::attribution::AttributionPatcher;
    let model = std::sync::Arc::new(HookedTransformer::from_pretrained(model)?);
    let (clean, corrupt, answers) = ioi_batch();
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let clean = model.to_tokens(strs(&clean).as_slice(), Some(true))?;
    let corrupt = model.to_tokens(strs(&corrupt).as_slice(), Some(true))?;
    let metric = candlelens::metrics::logit_diff_grad_metric(&model.answer_pairs(&answers)?);
    let (mut f_ms, mut a_ms, mut e_ms) = (Vec::new(), Vec::new(), Vec::new());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for i in 0..=runs.max(1) {
        let t = Instant::now();
        touch(&model.last_logits(&clean)?)?;
        let f = ms(t);
        let t = Instant::now();
        let attr = AttributionPatcher::new(&model, &clean, &corrupt, metric.clone())?;
        let a = ms(t);
        let e = if edges {
            let t = Instant::now();
            let g = attr.edges()?;
            std::hint::black_box(g.edges.len());
            Some(ms(t))
        } else {
            None
        };
        if i > 0 {
            f_ms.push(f);
            a_ms.push(a);
            e_ms.extend(e);
        }
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let runs = f_ms.len();
    let forward_ms = median(f_ms).unwrap_or(f64::NAN);
    let attribution_ms = median(a_ms).unwrap_or(f64::NAN);
    let edges_ms = median(e_ms);
    let report = AttributionBench {
        model: model.cfg.name.clone(),
        batch: clean.batch(),
        n_tokens: clean.max_len(),
        runs,
        forward_ms,
        attribution_ms,
        forward_equivalents: attribution_ms / forward_ms,
        edges_ms,
        edges_forward_equivalents: edges_ms.map(|e| e / forward_ms),
    };
    emit_json(&report, as_json);
    Ok(())
}

/// What `lens bench jacobian` prints.
#[derive(Serialize)]
struct JacobianBench {
    model: String,
    layer: usize,
    subjects: usize,
    d_model: usize,
    seconds_per_subject: f64,
}

fn jacobian(
    model: &str,
    layer: usize,
    subjects: usize,
    data: &str,
    as_json: bool,
) -> candlelens::Result<()> {
    use candlelens::lre::{Candidates, LreOperator, LreStates, Relation};
    let model = HookedTransformer::from_pretrained(model)?;
    let rel = Relation::from_file(data)?;
    let template = rel.template(Some("{} students are typically"))?;
    let (train, _) = rel.split_like_source(42, 0.6);
    let cands = Candidates::new(&model, &rel.objects(), &template)?;
    let n = subjects.clamp(1, train.len());
    let states = LreStates::collect(&model, &train[..n], &template, &cands)?;
    let t = Instant::now();
    LreOperator::fit_jacobian(&model, &states.items, layer, 1.0)?;
    let report = JacobianBench {
        model: model.cfg.name.clone(),
        layer,
        subjects: n,
        d_model: model.cfg.d_model,
        seconds_per_subject: t.elapsed().as_secs_f64() / n as f64,
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
