//! A sweep's result, [`PatchGrid`]: the normalised grid with its labels, what it cost, and
//! the ways to read and draw it.

use super::PatchTarget;
use crate::error::{LensError, Result};

/// A sweep's result: normalised scores `(patched - corrupted) / (clean - corrupted)`.
///
/// Serializes as `lens patch --json` prints it: `{"hook", "grid", "row_labels", "col_labels",
/// "clean_diff", "corrupt_diff", "seconds", "forward_equivalents", "naive_forwards"}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchGrid {
    /// What was patched.
    #[serde(rename = "hook")]
    pub target: PatchTarget,
    /// `[rows][cols]`: layer × position, layer × head, or head × position.
    #[serde(rename = "grid")]
    pub values: Vec<Vec<f32>>,
    /// One label per row: the layer (`"3"`), or the head (`"L3H5"`) for
    /// [`PatchTarget::HeadsByPos`].
    pub row_labels: Vec<String>,
    /// One label per column: the position (`"12"`), or the head (`"H5"`) for
    /// [`PatchTarget::HeadsAllPos`].
    pub col_labels: Vec<String>,
    /// The metric on the clean run.
    #[serde(rename = "clean_diff")]
    pub clean: f32,
    /// The metric on the corrupted run.
    #[serde(rename = "corrupt_diff")]
    pub corrupted: f32,
    /// Wall time of the sweep.
    pub seconds: f64,
    /// Block evaluations of the sweep, in full forwards (layers × positions × batch).
    pub forward_equivalents: f64,
    /// How many full forwards the one-forward-per-cell method runs.
    pub naive_forwards: usize,
}

/// A grid cell `(row, col)` and the metric its patched run scored.
pub(crate) type CellMetric = ((usize, usize), f32);

impl PatchGrid {
    /// The grid as a heatmap; `col_labels` (e.g. `"Peb_26"`) replace the numeric columns.
    pub fn figure(&self, title: &str, col_labels: Option<Vec<String>>) -> crate::viz::Figure {
        let (x, y) = match self.target {
            PatchTarget::K | PatchTarget::V => ("KV head", "Layer"),
            t if t.by_head() => ("Head", "Layer"),
            PatchTarget::HeadsByPos => ("Position", "Head"),
            _ => ("Position", "Layer"),
        };
        crate::viz::Figure::heatmap(
            self.values.clone(),
            col_labels.unwrap_or_else(|| self.col_labels.clone()),
            self.row_labels.clone(),
            title,
        )
        .axes(x, y)
    }

    /// The `k` heads with the largest score (`descending`) or the most negative (`!descending`),
    /// as `(layer, head)`, for a grid by layer × head ([`PatchTarget::HeadsAllPos`], as path
    /// patching's grids are).
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a grid of another target.
    pub fn top_heads(&self, k: usize, descending: bool) -> Result<Vec<(usize, usize)>> {
        if !self.target.by_head() {
            return Err(LensError::Unsupported {
                what: format!("top_heads of a {} grid", self.target.name()),
                fix: "it reads layer x head grids (PatchTarget::HeadsAllPos, path patching); use strongest() for others".into(),
            });
        }
        let mut cells = self.cells();
        cells.sort_by(|a, b| {
            if descending {
                b.2.total_cmp(&a.2)
            } else {
                a.2.total_cmp(&b.2)
            }
        });
        Ok(cells.into_iter().take(k).map(|(l, h, _)| (l, h)).collect())
    }

    /// Every cell as `(row, col, score)`.
    fn cells(&self) -> Vec<(usize, usize, f32)> {
        self.values
            .iter()
            .enumerate()
            .flat_map(|(r, row)| row.iter().enumerate().map(move |(c, &v)| (r, c, v)))
            .collect()
    }

    /// The `k` cells with the largest absolute score: `(row label, col label, score)`.
    pub fn strongest(&self, k: usize) -> Vec<(String, String, f32)> {
        let mut cells = self.cells();
        cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
        cells
            .into_iter()
            .take(k)
            .map(|(r, c, v)| (self.row_labels[r].clone(), self.col_labels[c].clone(), v))
            .collect()
    }

    /// Two lines a reader wants under the figure: the five strongest cells (positions named by
    /// `labels`, e.g. [`HookedTransformer::position_labels`](crate::HookedTransformer::position_labels), where given) and the sweep's cost
    /// against one forward per cell.
    pub fn summary(&self, labels: Option<&[String]>) -> String {
        let name = |col: &str| -> String {
            col.parse::<usize>()
                .ok()
                .and_then(|i| labels.and_then(|l| l.get(i)))
                .map_or_else(|| col.to_string(), String::clone)
        };
        let strongest: Vec<String> = self
            .strongest(5)
            .iter()
            .map(|(row, col, v)| format!("layer {row} at {}: {v:+.2}", name(col)))
            .collect();
        format!(
            "strongest cells: {}\nsweep {:.1} s, {:.0} forward-equivalents instead of {} (exact: tests hold it equal to one forward per cell)",
            strongest.join("; "),
            self.seconds,
            self.forward_equivalents,
            self.naive_forwards
        )
    }
}

/// A grid's labels: rows are layers, or `L{l}H{h}` heads for [`PatchTarget::HeadsByPos`];
/// columns are positions, or `H{h}` heads for [`PatchTarget::HeadsAllPos`].
pub(crate) fn grid_labels(
    cfg: &crate::engine::config::ModelConfig,
    target: PatchTarget,
    rows: usize,
    cols: usize,
) -> (Vec<String>, Vec<String>) {
    let row_labels = match target {
        PatchTarget::HeadsByPos => (0..cfg.n_layers)
            .flat_map(|l| (0..cfg.n_heads).map(move |h| format!("L{l}H{h}")))
            .collect(),
        _ => (0..rows).map(|l| l.to_string()).collect(),
    };
    let col_labels = match target {
        t if t.by_head() => (0..cols).map(|h| format!("H{h}")).collect(),
        _ => (0..cols).map(|p| p.to_string()).collect(),
    };
    (row_labels, col_labels)
}
