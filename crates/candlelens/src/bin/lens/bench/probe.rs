//! `lens bench probe`: the time to train a logistic probe per layer, on features that it also
//! writes out so that `scripts/bench_hf.py probe` times scikit-learn on the very same numbers.

use candle_core::{Device, Tensor};
use candlelens::prelude::*;
use candlelens::probes::{last_token_features, read_labelled, LogisticProbe, Split};
use serde::Serialize;

use super::time_ms;
use crate::common::emit_json;

/// One layer's training time.
#[derive(Serialize)]
struct LayerTime {
    layer: usize,
    /// Median milliseconds of `LogisticProbe::fit` on the training rows.
    fit_ms: f64,
    /// Held-out accuracy of the probe (scikit-learn's on the same features should equal it).
    test_acc: f64,
}

/// What `lens bench probe` prints.
#[derive(Serialize)]
struct ProbeBench {
    model: String,
    n_train: usize,
    n_test: usize,
    d: usize,
    c: f64,
    runs: usize,
    layers: Vec<LayerTime>,
    /// Mean of `fit_ms` over the layers.
    mean_fit_ms: f64,
}

fn rows(x: &Tensor, idx: &[usize]) -> candlelens::Result<Tensor> {
    let i = Tensor::new(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    Ok(x.index_select(&i, 0)?)
}

/// Reads `blocks.{l}.hook_resid_post` at each text's last token for each of `layers`, writes
/// them (and the labels and split) under `features_out` when given, and times the probe's fit
/// per layer on Python's seed-42 split (25 % held out).
pub(super) fn probe(
    model: &str,
    data: &std::path::Path,
    layers: &[usize],
    c: f64,
    runs: usize,
    features_out: Option<&std::path::Path>,
    as_json: bool,
) -> candlelens::Result<()> {
    let (texts, labels) = read_labelled(data)?;
    let model = HookedTransformer::from_pretrained(model)?;
    let layers: Vec<usize> = if layers.is_empty() {
        (0..model.cfg.n_layers).collect()
    } else {
        layers.to_vec()
    };
    let points = layers
        .iter()
        .map(|&l| HookPoint::parse_for(&format!("blocks.{l}.hook_resid_post"), &model.cfg))
        .collect::<candlelens::Result<Vec<_>>>()?;
    let tokens = model.to_tokens(texts, None)?;
    let features = last_token_features(&model, &tokens, &points, 32)?;
    let split = Split::python(labels.len(), 0.25, 42)?;
    let pick = |idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| labels[i]).collect() };
    let (y_train, y_test) = (pick(&split.train), pick(&split.test));
    if let Some(dir) = features_out {
        std::fs::create_dir_all(dir)
            .map_err(|e| LensError::Custom(format!("{}: {e}", dir.display())))?;
        for (l, x) in layers.iter().zip(&features) {
            x.write_npy(dir.join(format!("layer-{l}.npy")))?;
        }
        let meta = serde_json::json!({
            "layers": layers, "labels": labels, "train": split.train, "test": split.test, "C": c,
        });
        std::fs::write(dir.join("meta.json"), meta.to_string())
            .map_err(|e| LensError::Custom(format!("{}: {e}", dir.display())))?;
    }
    let mut out = Vec::new();
    for (&layer, x) in layers.iter().zip(&features) {
        let (train, test) = (rows(x, &split.train)?, rows(x, &split.test)?);
        let ms = time_ms(runs, || LogisticProbe::fit(&train, &y_train, c).map(|_| ()))?;
        let p = LogisticProbe::fit(&train, &y_train, c)?;
        out.push(LayerTime {
            layer,
            fit_ms: ms[ms.len() / 2],
            test_acc: p.accuracy(&test, &y_test)?,
        });
    }
    let mean_fit_ms = out.iter().map(|l| l.fit_ms).sum::<f64>() / out.len() as f64;
    emit_json(
        &ProbeBench {
            model: model.cfg.name.clone(),
            n_train: split.train.len(),
            n_test: split.test.len(),
            d: features[0].dim(1)?,
            c,
            runs,
            layers: out,
            mean_fit_ms,
        },
        as_json,
    );
    Ok(())
}
