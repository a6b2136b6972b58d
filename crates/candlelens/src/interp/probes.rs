//! Linear probes: does a layer's activation at a prompt's last token encode a property of the
//! prompt? A logistic probe (L2-regularised logistic regression, the optimum of scikit-learn's
//! `LogisticRegression(C)`, fitted with linfa-logistic at `alpha = 1 / C`) for a binary label, a
//! linear probe (ordinary least squares, linfa-linear) for a real target; per layer, on Python's
//! seeded train/test split, with a shuffled-label control (Hewitt and Liang, 2019) that shows how
//! much of the accuracy the probe could reach on labels that mean nothing. The probe's direction
//! comes back as a `[d]` tensor, ready for steering or ablation.

use candle_core::{DType, Device, Tensor};
use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};

use crate::engine::hooks::{HookFilter, HookPoint, Hooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;
use crate::viz::Figure;

/// The texts and binary labels of a JSONL file: one `{"text": ..., "label": 0 or 1}` per line
/// (empty lines skipped) — a probe's dataset.
///
/// # Errors
/// [`LensError::MissingFile`]; [`LensError::BadData`] naming the line that is not JSON, has no
/// text or a label other than 0 or 1; [`LensError::TooFew`] for a file without rows.
pub fn read_labelled(path: impl AsRef<std::path::Path>) -> Result<(Vec<String>, Vec<bool>)> {
    let path = path.as_ref();
    let text = crate::util::fs::read_text(
        path,
        "pass a JSONL file with {\"text\": ..., \"label\": 0 or 1} per line",
    )?;
    let bad = |line: usize, detail: String| LensError::BadData {
        what: format!("{} line {line}", path.display()),
        detail,
    };
    let (mut texts, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                format!("not JSON ({e}); write one {{\"text\": ..., \"label\": 0 or 1}} per line"),
            )
        })?;
        let t = v["text"]
            .as_str()
            .ok_or_else(|| bad(i + 1, "no \"text\" string".into()))?;
        let l = match v["label"].as_u64() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(bad(i + 1, format!("label is {}, not 0 or 1", v["label"]))),
        };
        texts.push(t.to_string());
        labels.push(l);
    }
    if texts.is_empty() {
        return Err(LensError::TooFew {
            what: format!("rows in {}", path.display()),
            need: 2,
            got: 0,
            fix: "write one {\"text\": ..., \"label\": 0 or 1} per line".into(),
        });
    }
    Ok((texts, labels))
}

/// Which rows train a probe and which test it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Row indices of the training set.
    pub train: Vec<usize>,
    /// Row indices of the held-out set.
    pub test: Vec<usize>,
}

impl Split {
    /// The split Python gives: `random.seed(seed); idx = list(range(n)); random.shuffle(idx)`,
    /// the first `round((1 − test_fraction) · n)` indices (Python's rounding, half to even)
    /// train, the rest test.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] unless `0 < test_fraction < 1` and both sets get a row.
    pub fn python(n: usize, test_fraction: f64, seed: u64) -> Result<Split> {
        let k = ((1.0 - test_fraction) * n as f64).round_ties_even();
        if !(test_fraction > 0.0 && test_fraction < 1.0) || k < 1.0 || k >= n as f64 {
            return Err(LensError::bad_parameter(
                "test_fraction",
                test_fraction,
                &format!("give a fraction in (0, 1) that leaves at least one of the {n} rows on each side"),
            ));
        }
        let mut idx: Vec<usize> = (0..n).collect();
        PyRandom::seed(seed).shuffle(&mut idx);
        let test = idx.split_off(k as usize);
        Ok(Split { train: idx, test })
    }
}

/// `[n, d]` features as an f64 matrix, checked finite.
fn matrix(x: &Tensor) -> Result<Array2<f64>> {
    let (n, d) = x.dims2()?;
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(LensError::Numerical {
            what: "probe features".into(),
            detail: format!(
                "row {} holds a NaN or infinite value; check the model's dtype, weights and hooks",
                i / d.max(1)
            ),
        });
    }
    Array2::from_shape_vec((n, d), v.into_iter().map(f64::from).collect())
        .map_err(|e| LensError::Internal(format!("features to matrix: {e}")))
}

fn rows_of(x: &Array2<f64>, idx: &[usize]) -> Array2<f64> {
    x.select(ndarray::Axis(0), idx)
}

fn direction_tensor(w: &Array1<f64>) -> Result<Tensor> {
    let v: Vec<f32> = w.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, w.len(), &Device::Cpu)?)
}

/// A logistic probe: `P(label) = σ(w · x + b)`.
#[derive(Clone, Debug)]
pub struct LogisticProbe {
    /// `w`, `[d]` f32: the direction along which the label grows more likely.
    pub direction: Tensor,
    /// `b`.
    pub intercept: f64,
    /// The inverse regularisation strength it was fitted with (scikit-learn's `C`).
    pub c: f64,
    w: Array1<f64>,
}

impl LogisticProbe {
    /// Fits `labels` from features `x [n, d]`, minimising `C · Σ log loss + ½ |w|²` (the
    /// intercept unpenalised) — scikit-learn's `LogisticRegression(C=c)` optimum.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for one label per row not given; [`LensError::TooFew`] when only
    /// one class is present; [`LensError::BadParameter`] for `c` not finite and positive;
    /// [`LensError::Numerical`] for non-finite features or a solver that fails.
    pub fn fit(x: &Tensor, labels: &[bool], c: f64) -> Result<Self> {
        Self::fit_matrix(&matrix(x)?, labels, c)
    }

    fn fit_matrix(x: &Array2<f64>, labels: &[bool], c: f64) -> Result<Self> {
        if !(c.is_finite() && c > 0.0) {
            return Err(LensError::bad_parameter(
                "C",
                c,
                "give the inverse L2 strength as a positive number (scikit-learn's default is 1.0)",
            ));
        }
        if labels.len() != x.nrows() {
            return Err(LensError::mismatch(
                "probe labels",
                format!(
                    "{} labels for {} rows; give one per row",
                    labels.len(),
                    x.nrows()
                ),
            ));
        }
        let positives = labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == labels.len() {
            return Err(LensError::TooFew {
                what: "classes among the training labels".into(),
                need: 2,
                got: 1,
                fix: "a probe needs examples of both labels in its training set: add the missing class or change the split's seed".into(),
            });
        }
        let ds = Dataset::new(x.clone(), Array1::from(labels.to_vec()));
        let fitted = linfa_logistic::LogisticRegression::default()
            .alpha(1.0 / c)
            .gradient_tolerance(1e-10)
            .max_iterations(100_000)
            .fit(&ds)
            .map_err(|e| LensError::Numerical {
                what: "the logistic probe's solver".into(),
                detail: e.to_string(),
            })?;
        // linfa makes the larger class its positive one: point w at `true`
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let w = fitted.params() * sign;
        Ok(LogisticProbe {
            direction: direction_tensor(&w)?,
            intercept: fitted.intercept() * sign,
            c,
            w,
        })
    }

    fn decision_matrix(&self, x: &Array2<f64>) -> Vec<f64> {
        (x.dot(&self.w) + self.intercept).to_vec()
    }

    /// `w · x + b` for each row of `x [n, d]` (scikit-learn's `decision_function`).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for features of another width; [`LensError::Numerical`] for
    /// non-finite ones.
    pub fn decision(&self, x: &Tensor) -> Result<Vec<f64>> {
        let m = matrix(x)?;
        if m.ncols() != self.w.len() {
            return Err(LensError::mismatch(
                "probe features",
                format!(
                    "{} features per row, the probe has {}",
                    m.ncols(),
                    self.w.len()
                ),
            ));
        }
        Ok(self.decision_matrix(&m))
    }

    fn accuracy_matrix(&self, x: &Array2<f64>, labels: &[bool]) -> f64 {
        share_right(&self.decision_matrix(x), labels)
    }

    /// The share of rows whose label the probe predicts (`w · x + b > 0` for `true`).
    ///
    /// # Errors
    /// As [`Self::decision`]; [`LensError::Mismatch`] for one label per row not given.
    pub fn accuracy(&self, x: &Tensor, labels: &[bool]) -> Result<f64> {
        let d = self.decision(x)?;
        if d.len() != labels.len() {
            return Err(LensError::mismatch(
                "probe labels",
                format!("{} labels for {} rows", labels.len(), d.len()),
            ));
        }
        Ok(share_right(&d, labels))
    }
}

/// The share of `labels` that the decisions `w · x + b` predict (`> 0` for `true`).
fn share_right(decisions: &[f64], labels: &[bool]) -> f64 {
    let right = decisions
        .iter()
        .zip(labels)
        .filter(|(&z, &l)| (z > 0.0) == l)
        .count();
    right as f64 / labels.len().max(1) as f64
}

/// A linear probe: `y ≈ w · x + b` by ordinary least squares.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// `w`, `[d]` f32.
    pub direction: Tensor,
    /// `b`.
    pub intercept: f64,
    w: Array1<f64>,
}

impl LinearProbe {
    /// Fits `targets` from features `x [n, d]` by least squares with an intercept
    /// (scikit-learn's `LinearRegression`); needs more rows than features for a unique fit.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for one target per row not given, [`LensError::TooFew`] for no
    /// more rows than features; [`LensError::Numerical`] for non-finite values.
    pub fn fit(x: &Tensor, targets: &[f64]) -> Result<Self> {
        Self::fit_matrix(&matrix(x)?, targets)
    }

    fn fit_matrix(x: &Array2<f64>, targets: &[f64]) -> Result<Self> {
        if targets.len() != x.nrows() {
            return Err(LensError::mismatch(
                "probe targets",
                format!(
                    "{} targets for {} rows; give one per row",
                    targets.len(),
                    x.nrows()
                ),
            ));
        }
        if x.nrows() <= x.ncols() {
            return Err(LensError::TooFew {
                what: "training rows for a linear probe".into(),
                need: x.ncols() + 1,
                got: x.nrows(),
                fix: "least squares with as many features as rows interpolates: add rows, or use the logistic probe's L2 penalty".into(),
            });
        }
        if targets.iter().any(|t| !t.is_finite()) {
            return Err(LensError::Numerical {
                what: "probe targets".into(),
                detail: "a target is NaN or infinite".into(),
            });
        }
        let ds = Dataset::new(x.clone(), Array1::from(targets.to_vec()));
        let fitted = linfa_linear::LinearRegression::new()
            .fit(&ds)
            .map_err(|e| LensError::Numerical {
                what: "the linear probe's least squares".into(),
                detail: e.to_string(),
            })?;
        let w = fitted.params().clone();
        Ok(LinearProbe {
            direction: direction_tensor(&w)?,
            intercept: fitted.intercept(),
            w,
        })
    }

    fn r2_matrix(&self, x: &Array2<f64>, y: &[f64]) -> f64 {
        let pred = x.dot(&self.w) + self.intercept;
        let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
        let ss_res: f64 = pred.iter().zip(y).map(|(p, t)| (t - p).powi(2)).sum();
        let ss_tot: f64 = y.iter().map(|t| (t - mean).powi(2)).sum();
        1.0 - ss_res / ss_tot
    }

    /// The coefficient of determination `R² = 1 − SS_res / SS_tot` on `x`, `targets`
    /// (scikit-learn's `score`; negative when the probe does worse than the mean).
    ///
    /// # Errors
    /// As [`Self::fit`].
    pub fn r2(&self, x: &Tensor, targets: &[f64]) -> Result<f64> {
        let m = matrix(x)?;
        if targets.len() != m.nrows() || m.ncols() != self.w.len() {
            return Err(LensError::mismatch(
                "probe features and targets",
                format!(
                    "{} rows of {} features and {} targets; the probe has {} features",
                    m.nrows(),
                    m.ncols(),
                    targets.len(),
                    self.w.len()
                ),
            ));
        }
        Ok(self.r2_matrix(&m, targets))
    }
}

/// The activation at each of `points` at each prompt's last real token, `[n, d]` per point, run
/// in batches of `batch_size` prompts (memory bounded by the batch).
///
/// # Errors
/// As [`HookedTransformer::run_with_hooks_and_cache`]; [`LensError::BadParameter`] for a zero
/// batch size.
pub fn last_token_features(
    model: &HookedTransformer,
    tokens: &Tokens,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<Vec<Tensor>> {
    if batch_size == 0 {
        return Err(LensError::bad_parameter("batch_size", 0, "give at least 1"));
    }
    let mut per_point: Vec<Vec<Tensor>> = vec![Vec::new(); points.len()];
    for chunk in tokens.rows().chunks(batch_size) {
        let t = Tokens::with_padding(chunk.to_vec(), tokens.pad_id(), tokens.padding())?;
        let (_, cache) = model.run_with_hooks_and_cache(
            &t,
            &mut Hooks::new(),
            Some(HookFilter::Points(points.to_vec())),
            LogitsAt::Last,
        )?;
        for (i, hp) in points.iter().enumerate() {
            let act = cache.at(*hp)?;
            for (b, &p) in t.last_positions().iter().enumerate() {
                per_point[i].push(act.get(b)?.get(p)?.to_dtype(DType::F32)?);
            }
        }
    }
    per_point
        .into_iter()
        .map(|rows| Ok(Tensor::stack(&rows, 0)?))
        .collect()
}

/// Options of [`probe_layers`].
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The held-out share (default 0.25).
    pub test_fraction: f64,
    /// The split's seed; the control's labels are shuffled with `seed + 1` (default 42).
    pub seed: u64,
    /// scikit-learn's `C`, the inverse L2 strength (default 1.0).
    pub c: f64,
    /// Prompts per forward when reading the features (default 32).
    pub batch_size: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            test_fraction: 0.25,
            seed: 42,
            c: 1.0,
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

impl LayerProbes {
    /// Held-out accuracy per layer, the probe's and the control's.
    pub fn figure(&self) -> Figure {
        let x: Vec<f32> = self.layers.iter().map(|l| l.layer as f32).collect();
        let series = vec![
            (
                "probe (held out)".to_string(),
                self.layers.iter().map(|l| l.test_acc as f32).collect(),
            ),
            (
                "control: shuffled labels (held out)".to_string(),
                self.layers
                    .iter()
                    .map(|l| l.control_test_acc as f32)
                    .collect(),
            ),
        ];
        Figure::line(
            x,
            series,
            None,
            &format!("Logistic probes at {} per layer", self.hook),
        )
        .axes("layer", "accuracy")
    }
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
    if labels.len() != tokens.batch() {
        return Err(LensError::mismatch(
            "probe labels",
            format!(
                "{} labels for {} prompts; give one per prompt",
                labels.len(),
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
    let split = Split::python(labels.len(), opts.test_fraction, opts.seed)?;
    let mut control = labels.to_vec();
    PyRandom::seed(opts.seed + 1).shuffle(&mut control);
    let pick = |v: &[bool], idx: &[usize]| -> Vec<bool> { idx.iter().map(|&i| v[i]).collect() };
    let (y_train, y_test) = (pick(labels, &split.train), pick(labels, &split.test));
    let (c_train, c_test) = (pick(&control, &split.train), pick(&control, &split.test));
    let features = last_token_features(model, tokens, &points, opts.batch_size)?;
    let layers = layers
        .iter()
        .zip(features)
        .map(|(&layer, x)| {
            let x = matrix(&x)?;
            let (train, test) = (rows_of(&x, &split.train), rows_of(&x, &split.test));
            let probe = LogisticProbe::fit_matrix(&train, &y_train, opts.c)?;
            let ctl = LogisticProbe::fit_matrix(&train, &c_train, opts.c)?;
            Ok(LayerProbe {
                layer,
                train_acc: probe.accuracy_matrix(&train, &y_train),
                test_acc: probe.accuracy_matrix(&test, &y_test),
                control_train_acc: ctl.accuracy_matrix(&train, &c_train),
                control_test_acc: ctl.accuracy_matrix(&test, &c_test),
                probe,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LayerProbes {
        hook: suffix,
        layers,
        split,
        control_labels: control,
    })
}
