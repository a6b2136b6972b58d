//! The linear probe: least squares (scikit-learn's `LinearRegression`, with linfa-linear) or
//! ridge (`Ridge(alpha)`) for a real-valued target, scored by R².

use candle_core::Tensor;
use linfa::prelude::*;
use linfa::Dataset;
use linfa_linalg::cholesky::SolveC;
use ndarray::{Array1, Array2, Axis};

use super::features::{direction_tensor, matrix};
use crate::error::{LensError, Result};

/// A linear probe: `y ≈ w · x + b`, by ordinary least squares or ridge regression.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// `w`, `[d]` f32: the direction along which the target grows.
    pub direction: Tensor,
    /// `b`.
    pub intercept: f64,
    /// The ridge strength it was fitted with (scikit-learn's `Ridge(alpha)`; 0 for least
    /// squares).
    pub alpha: f64,
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

    pub(super) fn fit_matrix(x: &Array2<f64>, targets: &[f64]) -> Result<Self> {
        check_targets(x, targets)?;
        if x.nrows() <= x.ncols() {
            return Err(LensError::TooFew {
                what: "training rows for a linear probe".into(),
                need: x.ncols() + 1,
                got: x.nrows(),
                fix: "least squares with as many features as rows interpolates: add rows, or use the logistic probe's L2 penalty".into(),
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
            alpha: 0.0,
            w,
        })
    }

    /// Fits `targets` from features `x [n, d]` by ridge regression with an unpenalised
    /// intercept, minimising `|y − X w − b|² + α |w|²` — scikit-learn's `Ridge(alpha)`
    /// optimum. Unlike least squares it has a unique answer with fewer rows than features
    /// (the usual case for a probe on a model's residual stream).
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for `alpha` not finite and positive; [`LensError::Mismatch`]
    /// for one target per row not given; [`LensError::TooFew`] for fewer than 2 rows;
    /// [`LensError::Numerical`] for non-finite values.
    pub fn fit_ridge(x: &Tensor, targets: &[f64], alpha: f64) -> Result<Self> {
        Self::fit_ridge_matrix(&matrix(x)?, targets, alpha)
    }

    pub(super) fn fit_ridge_matrix(x: &Array2<f64>, targets: &[f64], alpha: f64) -> Result<Self> {
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(LensError::bad_parameter(
                "alpha",
                alpha,
                "give the ridge strength as a positive number (scikit-learn's default is 1.0)",
            ));
        }
        check_targets(x, targets)?;
        if x.nrows() < 2 {
            return Err(LensError::too_few(
                "training rows for a linear probe",
                2,
                x.nrows(),
                "add rows",
            ));
        }
        // centre, so that the intercept is not penalised: w solves the centred problem and
        // b = ȳ − x̄ · w
        let mean_x = x.mean_axis(Axis(0)).expect("rows");
        let y = Array1::from(targets.to_vec());
        let mean_y = y.mean().expect("rows");
        let xc = x - &mean_x;
        let yc = &y - mean_y;
        let solve = |mut a: Array2<f64>, b: Array1<f64>| -> Result<Array1<f64>> {
            a.diag_mut().mapv_inplace(|v| v + alpha);
            let b = b.insert_axis(Axis(1));
            let sol = a.solvec(&b).map_err(|e| LensError::Numerical {
                what: "the ridge probe's linear system".into(),
                detail: e.to_string(),
            })?;
            Ok(sol.column(0).to_owned())
        };
        // (XᵀX + αI) w = Xᵀy, or with fewer rows than features the same w as
        // Xᵀ (XXᵀ + αI)⁻¹ y (a system of n instead of d unknowns)
        let w = if x.nrows() >= x.ncols() {
            solve(xc.t().dot(&xc), xc.t().dot(&yc))?
        } else {
            xc.t().dot(&solve(xc.dot(&xc.t()), yc)?)
        };
        let intercept = mean_y - mean_x.dot(&w);
        Ok(LinearProbe {
            direction: direction_tensor(&w)?,
            intercept,
            alpha,
            w,
        })
    }

    pub(super) fn r2_matrix(&self, x: &Array2<f64>, y: &[f64]) -> f64 {
        let pred = x.dot(&self.w) + self.intercept;
        let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
        let ss_res: f64 = pred.iter().zip(y).map(|(p, t)| (t - p).powi(2)).sum();
        let ss_tot: f64 = y.iter().map(|t| (t - mean).powi(2)).sum();
        if ss_tot == 0.0 {
            // a constant target: scikit-learn's r2_score (force_finite) gives 1 for a perfect
            // prediction and 0 otherwise
            return if ss_res == 0.0 { 1.0 } else { 0.0 };
        }
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

/// One finite target per row.
fn check_targets(x: &Array2<f64>, targets: &[f64]) -> Result<()> {
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
    if let Some(i) = targets.iter().position(|t| !t.is_finite()) {
        return Err(LensError::Numerical {
            what: "probe targets".into(),
            detail: format!("target {i} is NaN or infinite"),
        });
    }
    Ok(())
}
