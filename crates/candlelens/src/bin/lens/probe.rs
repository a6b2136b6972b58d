//! `lens probe`: a logistic probe per layer for a binary label of each text, at its last token,
//! on Python's seeded split, with the shuffled-label control.

use candlelens::prelude::*;
use candlelens::probes::{probe_layers, read_labelled, ProbeOptions};
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, BosArgs, ProcessingArgs};

#[derive(Args)]
pub struct ProbeArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// A JSONL file: {"text": ..., "label": 0 or 1} per line.
    #[arg(long)]
    data: std::path::PathBuf,
    /// The block hook point probed: resid_pre, resid_mid, resid_post, attn_out, mlp_out, ...
    #[arg(long, default_value = "resid_post")]
    hook: String,
    /// The layers: all, or a comma-separated list.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Where each text is read: its last token.
    #[arg(long, default_value = "last", value_parser = ["last"])]
    position: String,
    /// The held-out share.
    #[arg(long, default_value_t = 0.25)]
    test_fraction: f64,
    /// The split's seed (Python's random.seed; the control shuffles with seed + 1).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// scikit-learn's C: the inverse L2 strength.
    #[arg(long, default_value_t = 1.0)]
    l2: f64,
    /// Texts per forward.
    #[arg(long, default_value_t = 32, value_parser = crate::common::batch_arg)]
    batch_size: usize,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    processing: ProcessingArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LayerScore {
    layer: usize,
    train_acc: f64,
    test_acc: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    hook: String,
    n: usize,
    n_train: usize,
    n_test: usize,
    layers: Vec<LayerScore>,
    control: Vec<LayerScore>,
}

fn parse_layers(spec: &str, n_layers: usize) -> candlelens::Result<Vec<usize>> {
    if spec == "all" {
        return Ok((0..n_layers).collect());
    }
    spec.split(',')
        .map(|s| {
            s.trim().parse::<usize>().map_err(|_| {
                LensError::bad_parameter(
                    "--layers",
                    spec,
                    "give all or comma-separated layer numbers, e.g. 0,4,8",
                )
            })
        })
        .collect()
}

pub fn probe(args: &ProbeArgs) -> candlelens::Result<()> {
    if !(args.l2.is_finite() && args.l2 > 0.0) {
        return Err(LensError::bad_parameter(
            "--l2",
            args.l2,
            "give C > 0 (scikit-learn's default is 1.0)",
        ));
    }
    let (texts, labels) = read_labelled(&args.data)?;
    let model = args.processing.load(&args.model)?;
    let layers = parse_layers(&args.layers, model.cfg.n_layers)?;
    let tokens = model.to_tokens(texts, args.bos.flag())?;
    let opts = ProbeOptions {
        test_fraction: args.test_fraction,
        seed: args.seed,
        c: args.l2,
        batch_size: args.batch_size,
    };
    let p = probe_layers(&model, &tokens, &labels, &args.hook, &layers, &opts)?;
    let report = Report {
        model: model.cfg.name.clone(),
        hook: p.hook.clone(),
        n: labels.len(),
        n_train: p.split.train.len(),
        n_test: p.split.test.len(),
        layers: p
            .layers
            .iter()
            .map(|l| LayerScore {
                layer: l.layer,
                train_acc: l.train_acc,
                test_acc: l.test_acc,
            })
            .collect(),
        control: p
            .layers
            .iter()
            .map(|l| LayerScore {
                layer: l.layer,
                train_acc: l.control_train_acc,
                test_acc: l.control_test_acc,
            })
            .collect(),
    };
    if args.json {
        emit_json(&report, true);
    } else {
        let mut o = format!(
            "{} probes at {} ({} train / {} test):\nlayer  train  test   control test\n",
            report.model, report.hook, report.n_train, report.n_test
        );
        for (l, c) in report.layers.iter().zip(&report.control) {
            o.push_str(&format!(
                "{:>5}  {:.3}  {:.3}  {:.3}\n",
                l.layer, l.train_acc, l.test_acc, c.test_acc
            ));
        }
        emit(&o);
    }
    Ok(())
}
