//! `lens`: Candlelens from the command line (headless runs, inspection, benchmarks).

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, IndexOp};
use candlelens::load::registry::{Source, REGISTRY};
use candlelens::prelude::*;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "lens",
    version,
    about = "Candlelens: mechanistic interpretability in Rust"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a prompt: top-k next-token logits and the residual stream per layer.
    Run(RunArgs),
    /// Architecture summary and every hook name with its shape.
    Inspect {
        /// Alias, local folder, .gguf path, or hub repo id.
        #[arg(long)]
        model: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Activation patching: corrupted run, clean activations put in, layer x position grid.
    Patch(PatchArgs),
    /// Linear relational embedding: fit on 60% of a relation, faithfulness on the rest.
    Lre(LreArgs),
    /// List the registered model aliases.
    Models,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Args)]
struct Input {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// Prompt text.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Comma-separated token ids (used as given; no BOS added).
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Prepend BOS (default: the model's tokenizer default).
    #[arg(long, conflicts_with = "no_bos")]
    bos: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
    /// Device: cpu (default), cuda, cuda:N, metal (GPU builds: --features cuda / metal).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    input: Input,
    /// How many top logits to show.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PatchArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// The clean prompt.
    #[arg(long)]
    clean: String,
    /// The corrupted prompt (same number of tokens).
    #[arg(long)]
    corrupt: String,
    /// Correct and incorrect answer (each one token, e.g. " Peb" " Rachel").
    #[arg(long, num_args = 2, value_names = ["CORRECT", "INCORRECT"])]
    answers: Vec<String>,
    /// What to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, heads_by_pos.
    #[arg(long, default_value = "resid_pre")]
    hook: String,
    /// Prepend BOS (default: the model's tokenizer default).
    #[arg(long, conflicts_with = "no_bos")]
    bos: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LreArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// Relation file: a [{subject, object}] list (data/data_sample.json) or the LRE paper's format.
    #[arg(long, default_value = "data/data_sample.json")]
    data: String,
    /// Prompt template with one {} for the subject (default: the relation's first template).
    #[arg(long)]
    template: Option<String>,
    /// Layer whose hook_resid_post at the subject's last token is h (default: every layer,
    /// regression only).
    #[arg(long)]
    layer: Option<usize>,
    /// regression (the source's least-norm fit) or jacobian (Hernandez et al. 2023).
    #[arg(long, default_value = "regression")]
    method: String,
    /// β for the Jacobian estimator.
    #[arg(long, default_value_t = 2.25)]
    beta: f32,
    /// Training subjects the Jacobian is averaged over (the paper: 8).
    #[arg(long, default_value_t = 8)]
    n_jacobian: usize,
    /// Seed of the split (Python's random.seed; the source: 42).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run the causality test with a pseudo-inverse of this rank.
    #[arg(long)]
    causality_rank: Option<usize>,
    /// Device: cpu (default), cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
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

impl Input {
    fn load(&self) -> candlelens::Result<HookedTransformer> {
        let opts = LoadOptions::parse(&self.device, &self.dtype)?;
        HookedTransformer::from_pretrained_with(&self.model, &opts)
    }

    fn prepend_bos(&self) -> Option<bool> {
        if self.bos {
            Some(true)
        } else if self.no_bos {
            Some(false)
        } else {
            None
        }
    }

    fn tokens(&self, model: &HookedTransformer) -> candlelens::Result<Tokens> {
        match (&self.prompt, &self.tokens) {
            (_, Some(ids)) => model.tokens_from_ids(ids.clone()),
            (Some(p), None) => model.to_tokens(p.as_str(), self.prepend_bos()),
            (None, None) => Err(LensError::EmptyPrompt),
        }
    }
}

/// Appends one formatted line to an output buffer.
macro_rules! p {
    ($o:expr, $($t:tt)*) => {{
        $o.push_str(&format!($($t)*));
        $o.push('\n');
    }};
}

/// Writes the buffer to stdout; a closed pipe (`lens ... | head`) is not an error.
fn emit(o: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(o.as_bytes());
}

/// Prints a JSON result: one line with `--json`, indented otherwise.
fn emit_json(out: &serde_json::Value, as_json: bool) {
    let text = if as_json {
        out.to_string()
    } else {
        serde_json::to_string_pretty(out).unwrap_or_default()
    };
    emit(&format!("{text}\n"));
}

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run(args: &RunArgs) -> candlelens::Result<()> {
    let mut o = String::new();
    let model = args.input.load()?;
    let tokens = args.input.tokens(&model)?;
    let filter = HookFilter::suffix("hook_resid_pre")?;
    let (logits, cache) = model.run_with_cache(&tokens, Some(filter))?;
    let last = tokens.max_len() - 1;
    let row: Vec<f32> = logits.i((0, last))?.to_dtype(DType::F32)?.to_vec1()?;
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    let ids = tokens.row(0).to_vec();
    let str_tokens = model.ids_to_str_tokens(&ids)?;
    let mut top = Vec::new();
    for &i in order.iter().take(args.top_k) {
        top.push((
            i as u32,
            model.ids_to_str_tokens(&[i as u32])?.remove(0),
            row[i],
        ));
    }
    let mut resid = Vec::new();
    for l in 0..model.cfg.n_layers {
        let v: Vec<f32> = cache
            .at(HookPoint::ResidPre(l))?
            .i((0, last))?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let l2 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        resid.push((l, l2, v[..16.min(v.len())].to_vec()));
    }
    if args.json {
        let out = json!({
            "model": model.cfg.name,
            "token_ids": ids,
            "str_tokens": str_tokens,
            "top_k": top.iter().map(|(id, t, lg)| json!({"id": id, "token": t, "logit": lg})).collect::<Vec<_>>(),
            "resid_pre_last": resid.iter().map(|(l, n, f)| json!({"layer": l, "l2": n, "first16": f})).collect::<Vec<_>>(),
        });
        p!(o, "{out}");
    } else {
        p!(o, "model: {}", model.cfg.name);
        p!(o, "tokens ({}): {:?}", ids.len(), str_tokens);
        p!(o, "\n{:>4}  {:>8}  {:>10}  token", "rank", "id", "logit");
        for (r, (id, t, lg)) in top.iter().enumerate() {
            p!(o, "{:>4}  {:>8}  {:>10.4}  {:?}", r, id, lg, t);
        }
        p!(o, "\nresidual stream entering each block, last position:");
        p!(o, "{:>5}  {:>10}  first dims", "layer", "L2");
        for (l, n, f) in &resid {
            let head: Vec<String> = f.iter().take(4).map(|x| format!("{x:.4}")).collect();
            p!(o, "{:>5}  {:>10.4}  [{}, ...]", l, n, head.join(", "));
        }
    }
    emit(&o);
    Ok(())
}

fn inspect(model_name: &str, as_json: bool) -> candlelens::Result<()> {
    let mut o = String::new();
    let model = HookedTransformer::from_pretrained(model_name)?;
    let cfg = &model.cfg;
    let hooks = HookPoint::all_for(cfg);
    if as_json {
        let out = json!({
            "config": cfg,
            "n_params": cfg.n_params(),
            "hooks": hooks.iter().map(|(h, s)| json!({"name": h.to_string(), "shape": s})).collect::<Vec<_>>(),
        });
        p!(o, "{out}");
        emit(&o);
        return Ok(());
    }
    p!(
        o,
        "{}  ({} architecture, {:.1}M parameters)",
        cfg.name,
        cfg.architecture,
        cfg.n_params() as f64 / 1e6
    );
    p!(o, "  n_layers {}  d_model {}  n_heads {}  n_kv_heads {}  d_head {}  d_mlp {}  d_vocab {}  n_ctx {}",
        cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx);
    p!(
        o,
        "  norm {:?} (eps {:e})  act {:?}  gated_mlp {}  qk_norm {}  post_norms {}",
        cfg.norm,
        cfg.norm_eps,
        cfg.act,
        cfg.gated_mlp,
        cfg.qk_norm,
        cfg.post_norms
    );
    p!(o, "  positional {:?}", cfg.positional);
    p!(
        o,
        "  attn_scale {:.6}  attn_softcap {:?}  final_softcap {:?}  embed_scale {:?}  tied {}",
        cfg.attn_scale,
        cfg.attn_softcap,
        cfg.final_softcap,
        cfg.embed_scale,
        cfg.tied_embeddings
    );
    let kinds: Vec<String> = cfg
        .layer_attention
        .iter()
        .map(|k| match k {
            candlelens::config::AttentionKind::Global => "G".to_string(),
            candlelens::config::AttentionKind::Local { window } => format!("L{window}"),
        })
        .collect();
    p!(o, "  layer attention {}", kinds.join(" "));
    p!(
        o,
        "  BOS {:?} (prepended by default: {})  EOS {:?}  pad {}",
        cfg.bos_token_id,
        cfg.default_prepend_bos,
        cfg.eos_token_id,
        cfg.pad_token_id
    );
    p!(o, "\nhook points ({}):", hooks.len());
    for (h, s) in hooks
        .iter()
        .filter(|(h, _)| h.layer().is_none_or(|l| l == 0))
    {
        p!(o, "  {:<40} {}", h.to_string(), s);
    }
    p!(
        o,
        "  ... and the same block hooks for blocks 1..{}",
        cfg.n_layers - 1
    );
    emit(&o);
    Ok(())
}

fn bench_forward(input: &Input, runs: usize, as_json: bool) -> candlelens::Result<()> {
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
    let median = ms[ms.len() / 2];
    let out = json!({
        "model": model.cfg.name,
        "n_tokens": tokens.max_len(),
        "runs": ms.len(),
        "median_ms": median,
        "min_ms": ms[0],
        "load_s": load_s,
        "rss_mb": rss_mb("VmRSS:"),
        "peak_rss_mb": rss_mb("VmHWM:"),
        "threads": candle_core::utils::get_num_threads(),
    });
    emit_json(&out, as_json);
    Ok(())
}

fn bench_load(model: &str, dtype: &str, as_json: bool) -> candlelens::Result<()> {
    let opts = LoadOptions::parse("cpu", dtype)?;
    let before = rss_mb("VmRSS:");
    let t0 = Instant::now();
    let m = HookedTransformer::from_pretrained_with(model, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let weight_mb = m.weights.n_bytes(&m.cfg) as f64 / (1024.0 * 1024.0);
    let peak = rss_mb("VmHWM:");
    let out = json!({
        "model": m.cfg.name,
        "dtype": dtype,
        "load_s": load_s,
        "weight_mb": weight_mb,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "rss_mb": rss_mb("VmRSS:"),
        "peak_over_weights": peak / weight_mb,
    });
    emit_json(&out, as_json);
    Ok(())
}

fn bos_flag(bos: bool, no_bos: bool) -> Option<bool> {
    if bos {
        Some(true)
    } else if no_bos {
        Some(false)
    } else {
        None
    }
}

fn answer_metric<'a>(
    model: &HookedTransformer,
    answers: &[String],
) -> candlelens::Result<candlelens::patching::Metric<'a>> {
    let pair = (
        model.to_single_token(&answers[0])?,
        model.to_single_token(&answers[1])?,
    );
    Ok(Box::new(move |l| {
        Ok(candlelens::metrics::mean(&candlelens::metrics::logit_diff(
            l,
            &[pair],
        )?))
    }))
}

fn lre(a: &LreArgs) -> candlelens::Result<()> {
    use candlelens::lre::{self, Candidates, LreOperator, LreStates, Relation};
    let opts = LoadOptions::parse(&a.device, &a.dtype)?;
    let model = HookedTransformer::from_pretrained_with(&a.model, &opts)?;
    let rel = Relation::from_file(&a.data)?;
    let template = rel.template(a.template.as_deref())?;
    let (train, test) = rel.split_like_source(a.seed, 0.6);
    let cands = Candidates::new(&model, &rel.objects(), &template)?;
    let t0 = Instant::now();
    let train = LreStates::collect(&model, &train, &template, &cands)?;
    let test = LreStates::collect(&model, &test, &template, &cands)?;
    let collect_s = t0.elapsed().as_secs_f64();
    let op = match (a.method.as_str(), a.layer) {
        ("regression", None) => {
            let sweep = lre::layer_sweep(&model, &train, &test, 0..model.cfg.n_layers)?;
            if a.json {
                let layers: Vec<_> = sweep.iter().map(|e| e.to_json()).collect();
                emit_json(
                    &json!({"model": model.cfg.name, "template": template,
                    "seconds_collect": collect_s, "layers": layers}),
                    true,
                );
            } else {
                let mut o = String::new();
                p!(
                    o,
                    "{} on {:?}: {} train / {} test subjects",
                    model.cfg.name,
                    template,
                    train.len(),
                    test.len()
                );
                for e in &sweep {
                    let (k, n) = e.correct();
                    p!(
                        o,
                        "layer {:>2}: faithfulness {k}/{n} ({:.1}%), faithful to the model {:.1}%",
                        e.layer,
                        100.0 * e.accuracy(),
                        100.0 * e.faithfulness()
                    );
                }
                emit(&o);
            }
            return Ok(());
        }
        ("regression", Some(l)) => LreOperator::fit_regression(&model, &train, l)?,
        ("jacobian", Some(l)) => {
            let n = a.n_jacobian.clamp(1, train.len());
            LreOperator::fit_jacobian(&model, &train.items[..n], l, a.beta)?
        }
        ("jacobian", None) => {
            return Err(LensError::InvalidArgument(
                "--method jacobian needs --layer (one Jacobian per training subject is costly)"
                    .into(),
            ))
        }
        (m, _) => {
            return Err(LensError::InvalidArgument(format!(
                "unknown --method {m:?}; use regression or jacobian"
            )))
        }
    };
    let eval = lre::evaluate(&model, &op, &test)?;
    let caus = a
        .causality_rank
        .map(|r| lre::causality(&model, &op, &train, &test, r))
        .transpose()?;
    if a.json {
        let mut out = eval.to_json();
        out["model"] = json!(model.cfg.name);
        out["template"] = json!(template);
        out["seconds"] = json!(t0.elapsed().as_secs_f64());
        if let Some(c) = &caus {
            out["causality"] = json!({"rank": c.rank, "efficacy": c.efficacy(),
                "random_efficacy": c.random_efficacy(), "edits": c.edits});
        }
        emit_json(&out, true);
    } else {
        let mut o = eval.table();
        if let Some(c) = &caus {
            o += &c.table();
        }
        emit(&o);
    }
    Ok(())
}

fn patch(a: &PatchArgs) -> candlelens::Result<()> {
    let mut o = String::new();
    let model = HookedTransformer::from_pretrained(&a.model)?;
    let bos = bos_flag(a.bos, a.no_bos);
    let clean = model.to_tokens(a.clean.as_str(), bos)?;
    let corrupt = model.to_tokens(a.corrupt.as_str(), bos)?;
    let target = candlelens::patching::PatchTarget::parse(&a.hook)?;
    let mut p = Patcher::new(&model, &clean, &corrupt, answer_metric(&model, &a.answers)?)?;
    p.progress = !a.json;
    let grid = p.sweep(target)?;
    let str_tokens = model.ids_to_str_tokens(clean.row(0))?;
    if a.json {
        let out = json!({
            "model": model.cfg.name,
            "hook": target.name(),
            "str_tokens": str_tokens,
            "clean_diff": grid.clean,
            "corrupt_diff": grid.corrupted,
            "grid": grid.values,
            "row_labels": grid.row_labels,
            "col_labels": grid.col_labels,
            "seconds": grid.seconds,
            "forward_equivalents": grid.forward_equivalents,
            "naive_forwards": grid.naive_forwards,
        });
        p!(o, "{out}");
    } else {
        p!(
            o,
            "model {}  patching {}  clean diff {:.4}  corrupted diff {:.4}",
            model.cfg.name,
            target.name(),
            grid.clean,
            grid.corrupted
        );
        p!(o, "tokens: {:?}", str_tokens);
        p!(
            o,
            "normalised (patched - corrupted) / (clean - corrupted); rows {}, columns {}",
            if target == candlelens::patching::PatchTarget::HeadsByPos {
                "heads"
            } else {
                "layers"
            },
            if target == candlelens::patching::PatchTarget::HeadsAllPos {
                "heads"
            } else {
                "positions"
            }
        );
        for (label, row) in grid.row_labels.iter().zip(&grid.values) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:6.2}")).collect();
            p!(o, "{label:>6} {}", cells.join(" "));
        }
        p!(
            o,
            "sweep {:.2} s, {:.1} forward-equivalents (naive: {} forwards)",
            grid.seconds,
            grid.forward_equivalents,
            grid.naive_forwards
        );
    }
    emit(&o);
    Ok(())
}

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
const PET_SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";

fn bench_patch(
    model: &str,
    answers: &[String],
    sample: Option<usize>,
    as_json: bool,
) -> candlelens::Result<()> {
    use candlelens::patching::PatchTarget;
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
    let out = json!({
        "model": model.cfg.name,
        "n_tokens": clean.max_len(),
        "cells": fast.naive_forwards,
        "fast_s": fast.seconds,
        "naive_s": naive_s,
        "naive_estimated_from_sample": estimated,
        "speedup": naive_s / fast.seconds,
        "fast_forward_equivalents": fast.forward_equivalents,
        "naive_forwards": fast.naive_forwards,
        "forward_ratio": fast.naive_forwards as f64 / fast.forward_equivalents,
        "max_abs_diff": max_diff,
        "clean_diff": fast.clean,
        "corrupt_diff": fast.corrupted,
    });
    emit_json(&out, as_json);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Inspect { model, json } => inspect(model, *json),
        Cmd::Models => {
            let mut o = String::new();
            for e in REGISTRY {
                let src = match e.source {
                    Source::Embedded { .. } => "embedded".to_string(),
                    Source::Hub { repo } => format!("hub: {repo}"),
                };
                p!(o, "{:<18} {:<40} {}", e.alias, src, e.about);
            }
            emit(&o);
            Ok(())
        }
        Cmd::Bench(BenchCmd::Forward { input, runs, json }) => bench_forward(input, *runs, *json),
        Cmd::Bench(BenchCmd::Load { model, dtype, json }) => bench_load(model, dtype, *json),
        Cmd::Bench(BenchCmd::Patch {
            model,
            answers,
            sample,
            json,
        }) => bench_patch(model, answers, *sample, *json),
        Cmd::Patch(a) => patch(a),
        Cmd::Lre(a) => lre(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
