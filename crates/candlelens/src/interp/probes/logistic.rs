//! The logistic probe: L2-regularised logistic regression, scikit-learn's
//! `LogisticRegression(C)` optimum, fitted with linfa-logistic.

use candle_core::Tensor;
use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};

use super::features::{direction_tensor, matrix};
use crate::error::{LensError, Result};

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

    pub(super) fn fit_matrix(x: &Array2<f64>, labels: &[bool], c: f64) -> Result<Self> {
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

    pub(super) fn accuracy_matrix(&self, x: &Array2<f64>, labels: &[bool]) -> f64 {
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
