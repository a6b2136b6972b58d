//! `lens probe`: a probe per layer — logistic for a binary label of each text, linear (ridge)
//! for a real value — at its last token, on Python's seeded split, with the shuffled control.

use candlelens::prelude::*;
use candlelens::probes::{probe_layers, read_labelled, read_valued, regress_layers, ProbeOptions};
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, BosArgs, ProcessingArgs};

#[derive(Args)]
pub struct ProbeArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// A JSONL file: {"text": ..., "label": 0 or 1} per line (--target label), or
    /// {"text": ..., "value": x} (--target value).
    #[arg(long)]
    data: std::path::PathBuf,
    /// What is probed: a binary label (logistic probes, accuracy) or a real value (ridge
    /// probes, R²).
    #[arg(long, default_value = "label", value_parser = ["label", "value"])]
    target: String,
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
    /// The logistic probe's inverse L2 strength: scikit-learn's LogisticRegression(C).
    #[arg(long, default_value_t = 1.0)]
    l2: f64,
    /// The linear probe's ridge strength: scikit-learn's Ridge(alpha).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    train_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    train_r2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_r2: Option<f64>,
}

impl LayerScore {
    fn new(layer: usize, label: bool, train: f64, test: f64) -> Self {
        let (acc, r2) = if label {
            ((Some(train), Some(test)), (None, None))
        } else {
            ((None, None), (Some(train), Some(test)))
        };
        LayerScore {
            layer,
            train_acc: acc.0,
            test_acc: acc.1,
            train_r2: r2.0,
            test_r2: r2.1,
        }
    }

    fn test(&self) -> f64 {
        self.test_acc.or(self.test_r2).unwrap_or(f64::NAN)
    }

    fn train(&self) -> f64 {
        self.train_acc.or(self.train_r2).unwrap_or(f64::NAN)
    }
}

#[derive(Serialize)]
struct Report {
    model: String,
    hook: String,
    target: String,
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
    for (flag, v, fix) in [
        (
            "--l2",
            args.l2,
            "give C > 0 (scikit-learn's default is 1.0)",
        ),
        (
            "--alpha",
            args.alpha,
            "give alpha > 0 (scikit-learn's default is 1.0)",
        ),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(LensError::bad_parameter(flag, v, fix));
        }
    }
    let label = args.target == "label";
    let (texts, labels, values) = if label {
        let (t, l) = read_labelled(&args.data)?;
        (t, l, Vec::new())
    } else {
        let (t, v) = read_valued(&args.data)?;
        (t, Vec::new(), v)
    };
    let model = args.processing.load(&args.model)?;
    let layers = parse_layers(&args.layers, model.cfg.n_layers)?;
    let tokens = model.to_tokens(texts, args.bos.flag())?;
    let opts = ProbeOptions {
        test_fraction: args.test_fraction,
        seed: args.seed,
        c: args.l2,
        alpha: args.alpha,
        batch_size: args.batch_size,
    };
    // (layer, train, test, control train, control test) per layer
    let (hook, split, rows): (String, _, Vec<[f64; 4]>) = if label {
        let p = probe_layers(&model, &tokens, &labels, &args.hook, &layers, &opts)?;
        let rows = p
            .layers
            .iter()
            .map(|l| {
                [
                    l.train_acc,
                    l.test_acc,
                    l.control_train_acc,
                    l.control_test_acc,
                ]
            })
            .collect();
        (p.hook, p.split, rows)
    } else {
        let p = regress_layers(&model, &tokens, &values, &args.hook, &layers, &opts)?;
        let rows = p
            .layers
            .iter()
            .map(|l| [l.train_r2, l.test_r2, l.control_train_r2, l.control_test_r2])
            .collect();
        (p.hook, p.split, rows)
    };
    let report = Report {
        model: model.cfg.name.clone(),
        hook,
        target: args.target.clone(),
        n: tokens.batch(),
        n_train: split.train.len(),
        n_test: split.test.len(),
        layers: layers
            .iter()
            .zip(&rows)
            .map(|(&l, r)| LayerScore::new(l, label, r[0], r[1]))
            .collect(),
        control: layers
            .iter()
            .zip(&rows)
            .map(|(&l, r)| LayerScore::new(l, label, r[2], r[3]))
            .collect(),
    };
    if args.json {
        emit_json(&report, true);
    } else {
        let (kind, score) = if label {
            ("logistic", "acc")
        } else {
            ("linear (ridge)", "R²")
        };
        let mut o = format!(
            "{} {kind} probes at {} ({} train / {} test):\nlayer  train {score}  test {score}  control test {score}\n",
            report.model, report.hook, report.n_train, report.n_test
        );
        for (l, c) in report.layers.iter().zip(&report.control) {
            o.push_str(&format!(
                "{:>5}  {:>9.3}  {:>8.3}  {:>16.3}\n",
                l.layer,
                l.train(),
                l.test(),
                c.test()
            ));
        }
        emit(&o);
    }
    Ok(())
}
