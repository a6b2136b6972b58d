//! The self-check of attribution patching: the exact sweep on the same grid beside the
//! estimate ([`AttributionPatcher::verify`]), with the cells where the linear estimate is wrong.

use crate::error::{LensError, Result};
use crate::interp::metrics::float_metric;
use crate::interp::patching::{PatchGrid, PatchTarget, Patcher};

use super::AttributionPatcher;

/// A self-check's threshold: finite and non-negative.
///
/// # Errors
/// [`LensError::BadParameter`] otherwise.
pub(super) fn check_threshold(threshold: f32) -> Result<()> {
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(LensError::bad_parameter(
            "threshold",
            threshold,
            "use a finite, non-negative difference in normalised units (e.g. 0.1)",
        ));
    }
    Ok(())
}

impl AttributionPatcher {
    /// The exact counterpart of the estimates: a [`Patcher`] on the same prompts, metric,
    /// hooks, readout and alignment (progress off).
    pub(super) fn exact_patcher(&self) -> Result<Patcher> {
        let mut patcher = Patcher::with_shared_hooks(
            &self.model,
            &self.clean_tokens,
            &self.corrupt_tokens,
            float_metric(&self.metric),
            self.hooks.clone(),
            &self.readout,
            &self.alignment,
        )?;
        patcher.progress = false;
        Ok(patcher)
    }

    /// The self-check: the exact sweep on the same grid (clean activations patched into the
    /// corrupted run, [`Patcher::sweep`]) beside the estimate, their correlation, and every
    /// cell where `|estimate − exact| > threshold` (normalised units).
    ///
    /// # Errors
    /// As [`Self::nodes`] and [`Patcher::sweep`]; [`LensError::BadParameter`] for a
    /// negative or non-finite threshold.
    pub fn verify(&self, target: PatchTarget, threshold: f32) -> Result<Verification> {
        check_threshold(threshold)?;
        let estimate = self.nodes(target)?;
        let exact = self.exact_patcher()?.sweep(target)?;
        let mut wrong = Vec::new();
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for (r, (er, xr)) in estimate.values.iter().zip(&exact.values).enumerate() {
            for (col, (&e, &x)) in er.iter().zip(xr).enumerate() {
                xs.push(e as f64);
                ys.push(x as f64);
                if (e - x).abs() > threshold {
                    wrong.push(Disagreement {
                        row: estimate.row_labels[r].clone(),
                        col: estimate.col_labels[col].clone(),
                        estimate: e,
                        exact: x,
                    });
                }
            }
        }
        wrong.sort_by(|a, b| {
            (b.estimate - b.exact)
                .abs()
                .total_cmp(&(a.estimate - a.exact).abs())
        });
        let max_abs_error = xs
            .iter()
            .zip(&ys)
            .map(|(e, x)| (e - x).abs() as f32)
            .fold(0.0, f32::max);
        Ok(Verification {
            correlation: pearson(&xs, &ys),
            max_abs_error,
            threshold,
            wrong,
            estimate,
            exact,
        })
    }
}

/// One cell where the attribution estimate and the exact patching score disagree.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Disagreement {
    /// The row label (layer, or `L{l}H{h}`).
    pub row: String,
    /// The column label (position, or `H{h}`).
    pub col: String,
    /// The attribution estimate.
    pub estimate: f32,
    /// The exact patching score.
    pub exact: f32,
}

/// What [`AttributionPatcher::verify`] found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verification {
    /// The attribution grid.
    pub estimate: PatchGrid,
    /// The exact sweep's grid.
    pub exact: PatchGrid,
    /// Pearson correlation of the two over every cell (NaN when either is constant).
    pub correlation: f64,
    /// The largest `|estimate − exact|`.
    pub max_abs_error: f32,
    /// The threshold `wrong` was drawn with.
    pub threshold: f32,
    /// The cells beyond the threshold, worst first.
    pub wrong: Vec<Disagreement>,
}

impl Verification {
    /// Every cell as a point (exact patching score, attribution estimate) with the line
    /// `y = x`: cells on the line are where the linear estimate can be trusted. The cells off by
    /// more than the threshold carry their labels.
    pub fn figure(&self, title: &str) -> crate::viz::Figure {
        let mut points = Vec::new();
        let mut labels = Vec::new();
        for (r, (er, xr)) in self
            .estimate
            .values
            .iter()
            .zip(&self.exact.values)
            .enumerate()
        {
            for (c, (&e, &x)) in er.iter().zip(xr).enumerate() {
                points.push((x, e));
                labels.push(if (e - x).abs() > self.threshold {
                    format!(
                        "{} {}",
                        self.estimate.row_labels[r], self.estimate.col_labels[c]
                    )
                } else {
                    String::new()
                });
            }
        }
        crate::viz::Figure::scatter(points, labels, title)
            .with_diagonal()
            .axes(
                "exact patching (normalised)",
                "attribution estimate (normalised)",
            )
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cells = self.estimate.values.iter().map(Vec::len).sum::<usize>();
        writeln!(
            f,
            "{}: attribution vs exact patching over {cells} cells: correlation {:.3}, largest error {:.3}; {} cells off by more than {}",
            self.estimate.target.name(),
            self.correlation,
            self.max_abs_error,
            self.wrong.len(),
            self.threshold
        )?;
        for d in self.wrong.iter().take(10) {
            writeln!(
                f,
                "  row {} col {}: estimate {:+.3}, exact {:+.3}",
                d.row, d.col, d.estimate, d.exact
            )?;
        }
        Ok(())
    }
}

/// Pearson correlation; NaN when either side is constant.
pub(crate) fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.is_empty() {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}
