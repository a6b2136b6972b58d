//! Probes at one hook point across layers, with the shuffled-target control, and their figures.

use ndarray::Array2;

use super::features::{last_token_features, matrix, rows_of};
use super::linear::LinearProbe;
use super::logistic::LogisticProbe;
use super::split::Split;
use crate::engine::hooks::HookPoint;
use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;
use crate::viz::Figure;

/// Options of [`probe_layers`] and [`regress_layers`].
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The held-out share (default 0.25).
    pub test_fraction: f64,
    /// The split's seed; the control's labels are shuffled with `seed + 1` (default 42).
    pub seed: u64,
    /// The logistic probe's inverse L2 strength, scikit-learn's `C` (default 1.0).
    pub c: f64,
    /// The linear probe's ridge strength, scikit-learn's `Ridge(alpha)` (default 1.0).
    pub alpha: f64,
    /// Prompts per forward when reading the features (default 32).
    pub batch_size: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            test_fraction: 0.25,
            seed: 42,
            c: 1.0,
            alpha: 1.0,
            batch_size: 32,
        }
    }
}

/// One layer's probe and its scores.
#[derive(Clone, Debug)]
pub struct LayerProbe {
    /// The block.
    pub layer: usize,
    /// Accuracy on the training rows.
    pub train_acc: f64,
    /// Accuracy on the held-out rows.
    pub test_acc: f64,
    /// The control probe's (shuffled labels) accuracies on its own labels.
    pub control_train_acc: f64,
    /// The same on the held-out rows: about chance where the features do not simply memorise.
    pub control_test_acc: f64,
    /// The probe itself (its `direction` steers or ablates the property).
    pub probe: LogisticProbe,
}

/// Probes at one hook point across layers ([`probe_layers`]).
#[derive(Clone, Debug)]
pub struct LayerProbes {
    /// The hook point's suffix (e.g. `hook_resid_post`).
    pub hook: String,
    /// One per layer, in the order asked.
    pub layers: Vec<LayerProbe>,
    /// The split used.
    pub split: Split,
    /// The control's labels (the labels shuffled with `seed + 1`).
    pub control_labels: Vec<bool>,
}

/// One layer's linear (ridge) probe and its scores.
#[derive(Clone, Debug)]
pub struct LayerRegression {
    /// The block.
    pub layer: usize,
    /// R² on the training rows.
    pub train_r2: f64,
    /// R² on the held-out rows.
    pub test_r2: f64,
    /// The control probe's (shuffled targets) R² on its own targets.
    pub control_train_r2: f64,
    /// The same on the held-out rows: about 0 or below where the features do not memorise.
    pub control_test_r2: f64,
    /// The probe itself (its `direction` is the one along which the target grows).
    pub probe: LinearProbe,
}

/// Linear probes at one hook point across layers ([`regress_layers`]).
#[derive(Clone, Debug)]
pub struct LayerRegressions {
    /// The hook point's suffix (e.g. `hook_resid_post`).
    pub hook: String,
    /// One per layer, in the order asked.
    pub layers: Vec<LayerRegression>,
    /// The split used.
    pub split: Split,
    /// The control's targets (the targets shuffled with `seed + 1`).
    pub control_targets: Vec<f64>,
}

impl LayerProbes {
    /// Held-out accuracy per layer, the probe's and the control's.
    pub fn figure(&self) -> Figure {
        let pick = |f: fn(&LayerProbe) -> f64| self.layers.iter().map(|l| f(l) as f32).collect();
        score_figure(
            self.layers.iter().map(|l| l.layer).collect(),
            [pick(|l| l.test_acc), pick(|l| l.control_test_acc)],
            &format!("Logistic probes at {} per layer", self.hook),
            "accuracy",
        )
    }
}

impl LayerRegressions {
    /// Held-out R² per layer, the probe's and the control's.
    pub fn figure(&self) -> Figure {
        let pick =
            |f: fn(&LayerRegression) -> f64| self.layers.iter().map(|l| f(l) as f32).collect();
        score_figure(
            self.layers.iter().map(|l| l.layer).collect(),
            [pick(|l| l.test_r2), pick(|l| l.control_test_r2)],
            &format!("Linear (ridge) probes at {} per layer", self.hook),
            "R²",
        )
    }
}

/// A held-out score per layer, probe and control, as a line figure.
fn score_figure(
    layers: Vec<usize>,
    [probe, control]: [Vec<f32>; 2],
    title: &str,
    score: &str,
) -> Figure {
    Figure::line(
        layers.into_iter().map(|l| l as f32).collect(),
        vec![
            ("probe (held out)".to_string(), probe),
            ("control: shuffled targets (held out)".to_string(), control),
        ],
        None,
        title,
    )
    .axes("layer", score)
}

/// One layer's probe and its four scores: `[train, test, control train, control test]`.
struct Fitted<P> {
    layer: usize,
    scores: [f64; 4],
    probe: P,
}

/// Every layer's [`Fitted`], with the hook's suffix, the split and the control's targets.
struct AllLayers<T, P> {
    hook: String,
    split: Split,
    control: Vec<T>,
    fitted: Vec<Fitted<P>>,
}

/// What every probe at one hook point shares: checks one target per prompt, resolves `hook` at
/// each of `layers`, splits the rows, reads the features, shuffles the targets for the control
/// (`random.Random(seed + 1)`) and, per layer, fits the probe and the control on the training
/// rows and scores both on each side of the split.
#[allow(clippy::too_many_arguments)]
fn fit_layers<T: Clone, P>(
    model: &HookedTransformer,
    tokens: &Tokens,
    targets: &[T],
    hook: &str,
    layers: &[usize],
    opts: &ProbeOptions,
    fit: impl Fn(&Array2<f64>, &[T]) -> Result<P>,
    score: impl Fn(&P, &Array2<f64>, &[T]) -> f64,
) -> Result<AllLayers<T, P>> {
    if targets.len() != tokens.batch() {
        return Err(LensError::mismatch(
            "probe targets",
            format!(
                "{} labels or values for {} prompts; give one per prompt",
                targets.len(),
                tokens.batch()
            ),
        ));
    }
    let suffix = if hook.starts_with("hook_") {
        hook.to_string()
    } else {
        format!("hook_{hook}")
    };
    let points = layers
        .iter()
        .map(|&l| {
            if l >= model.cfg.n_layers {
                return Err(LensError::LayerOutOfRange {
                    layer: l,
                    n_layers: model.cfg.n_layers,
                });
            }
            HookPoint::parse_for(&format!("blocks.{l}.{suffix}"), &model.cfg)
        })
        .collect::<Result<Vec<_>>>()?;
    let split = Split::python(targets.len(), opts.test_fraction, opts.seed)?;
    let mut control = targets.to_vec();
    PyRandom::seed(opts.seed + 1).shuffle(&mut control);
    let pick = |v: &[T], idx: &[usize]| -> Vec<T> { idx.iter().map(|&i| v[i].clone()).collect() };
    let (y_train, y_test) = (pick(targets, &split.train), pick(targets, &split.test));
    let (c_train, c_test) = (pick(&control, &split.train), pick(&control, &split.test));
    let features = last_token_features(model, tokens, &points, opts.batch_size)?;
    let fitted = layers
        .iter()
        .zip(features)
        .map(|(&layer, x)| {
            let x = matrix(&x)?;
            let (train, test) = (rows_of(&x, &split.train), rows_of(&x, &split.test));
            let probe = fit(&train, &y_train)?;
            let ctl = fit(&train, &c_train)?;
            let scores = [
                score(&probe, &train, &y_train),
                score(&probe, &test, &y_test),
                score(&ctl, &train, &c_train),
                score(&ctl, &test, &c_test),
            ];
            Ok(Fitted {
                layer,
                scores,
                probe,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AllLayers {
        hook: suffix,
        split,
        control,
        fitted,
    })
}

/// Trains a logistic probe for `labels` on `hook` (a block hook's suffix: `resid_post`,
/// `hook_resid_pre`, `mlp_out`, ...) at each prompt's last real token, for each of `layers`,
/// on Python's split ([`Split::python`]), with a control on the labels shuffled by
/// `random.Random(seed + 1).shuffle`.
///
/// # Errors
/// [`LensError::Mismatch`] for one label per prompt not given; [`LensError::LayerOutOfRange`];
/// [`LensError::UnknownHook`] / [`LensError::HookNotOnModel`]; as [`Split::python`] and
/// [`LogisticProbe::fit`] (e.g. a training set with one class).
pub fn probe_layers(
    model: &HookedTransformer,
    tokens: &Tokens,
    labels: &[bool],
    hook: &str,
    layers: &[usize],
    opts: &ProbeOptions,
) -> Result<LayerProbes> {
    let AllLayers {
        hook,
        split,
        control,
        fitted,
    } = fit_layers(
        model,
        tokens,
        labels,
        hook,
        layers,
        opts,
        |x, y| LogisticProbe::fit_matrix(x, y, opts.c),
        |p, x, y| p.accuracy_matrix(x, y),
    )?;
    let layers = fitted
        .into_iter()
        .map(|f| LayerProbe {
            layer: f.layer,
            train_acc: f.scores[0],
            test_acc: f.scores[1],
            control_train_acc: f.scores[2],
            control_test_acc: f.scores[3],
            probe: f.probe,
        })
        .collect();
    Ok(LayerProbes {
        hook,
        layers,
        split,
        control_labels: control,
    })
}

/// Trains a linear probe (ridge regression with `opts.alpha`, scikit-learn's `Ridge`) for the
/// real-valued `targets` on `hook` at each prompt's last real token, for each of `layers`, on
/// Python's split, with a control on the targets shuffled by `random.Random(seed + 1)`; scored
/// by R².
///
/// # Errors
/// As [`probe_layers`], and as [`LinearProbe::fit_ridge`] (e.g. a non-finite target or
/// `alpha`).
pub fn regress_layers(
    model: &HookedTransformer,
    tokens: &Tokens,
    targets: &[f64],
    hook: &str,
    layers: &[usize],
    opts: &ProbeOptions,
) -> Result<LayerRegressions> {
    let AllLayers {
        hook,
        split,
        control,
        fitted,
    } = fit_layers(
        model,
        tokens,
        targets,
        hook,
        layers,
        opts,
        |x, y| LinearProbe::fit_ridge_matrix(x, y, opts.alpha),
        |p, x, y| p.r2_matrix(x, y),
    )?;
    let layers = fitted
        .into_iter()
        .map(|f| LayerRegression {
            layer: f.layer,
            train_r2: f.scores[0],
            test_r2: f.scores[1],
            control_train_r2: f.scores[2],
            control_test_r2: f.scores[3],
            probe: f.probe,
        })
        .collect();
    Ok(LayerRegressions {
        hook,
        layers,
        split,
        control_targets: control,
    })
}
