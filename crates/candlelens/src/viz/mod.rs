//! Figures that display inline in an evcxr notebook and save to SVG, PNG or HTML: heatmaps,
//! line charts, bars, scatter plots, an attention-pattern viewer and tables.
//!
//! evcxr shows a value richly when it has an `evcxr_display` method that prints
//! `EVCXR_BEGIN_CONTENT <mime>` ... `EVCXR_END_CONTENT`; every figure here has one. Keep one
//! figure per cell: evcxr merges several rich outputs of a cell into one.

mod attention;
mod chart;
pub(crate) mod table;

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

pub use attention::AttentionView;
pub use chart::{rdbu, Chart};
pub(crate) use table::escape;
pub use table::Table;

use crate::error::{LensError, Result};

static FONT: Once = Once::new();

/// Registers the embedded DejaVu Sans (plotters draws no text without a font).
fn ensure_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // registration only fails for a bad font, which the embedded one is not
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}

/// A chart with a title and a size, rendered on demand.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What to draw.
    pub chart: Chart,
    /// The title above the chart.
    pub title: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

fn draw_err(e: String) -> LensError {
    LensError::Drawing(e)
}

impl Figure {
    /// A heatmap of `values[row][col]` (rows top to bottom), diverging RdBu centred at 0.
    pub fn heatmap(
        values: Vec<Vec<f32>>,
        x_labels: Vec<String>,
        y_labels: Vec<String>,
        title: &str,
    ) -> Self {
        let (rows, cols) = (values.len(), values.first().map_or(0, Vec::len));
        Figure {
            chart: Chart::Heatmap {
                values,
                x_labels,
                y_labels,
                x_title: "Position".into(),
                y_title: "Layer".into(),
            },
            title: title.into(),
            width: (200 + 22 * cols as u32).clamp(500, 1400),
            height: (220 + 22 * rows as u32).clamp(360, 1000),
        }
    }

    /// A line chart of one or more series over `x`; `x_labels` name the x values.
    pub fn line(
        x: Vec<f32>,
        series: Vec<(String, Vec<f32>)>,
        x_labels: Option<Vec<String>>,
        title: &str,
    ) -> Self {
        Figure {
            chart: Chart::Line {
                x,
                series,
                x_labels,
                x_title: String::new(),
                y_title: String::new(),
            },
            title: title.into(),
            width: 800,
            height: 420,
        }
    }

    /// One bar per label.
    pub fn bar(labels: Vec<String>, values: Vec<f32>, title: &str) -> Self {
        Figure {
            chart: Chart::Bar {
                labels,
                values,
                y_title: String::new(),
            },
            title: title.into(),
            width: 800,
            height: 420,
        }
    }

    /// A scatter plot; `labels` (may be empty) annotate the points.
    pub fn scatter(points: Vec<(f32, f32)>, labels: Vec<String>, title: &str) -> Self {
        Figure {
            chart: Chart::Scatter {
                points,
                labels,
                x_title: String::new(),
                y_title: String::new(),
                diagonal: false,
            },
            title: title.into(),
            width: 640,
            height: 480,
        }
    }

    /// For a scatter plot: the same range on both axes and the line `y = x` (an estimate
    /// against the exact value). No effect on other charts.
    pub fn with_diagonal(mut self) -> Self {
        if let Chart::Scatter { diagonal, .. } = &mut self.chart {
            *diagonal = true;
        }
        self
    }

    /// A layered graph: `nodes` `(label, x, y)` with y = 0 at the bottom, `edges` `(from, to,
    /// weight, label)` drawn blue for positive and red for negative weights, wider when
    /// stronger, `label` written at the `to` end.
    pub fn graph(
        nodes: Vec<(String, f32, f32)>,
        edges: Vec<(usize, usize, f32, String)>,
        title: &str,
    ) -> Self {
        let rows = nodes.iter().map(|n| n.2 as u32).max().unwrap_or(0) + 1;
        Figure {
            chart: Chart::Graph { nodes, edges },
            title: title.into(),
            width: 800,
            height: (120 + 60 * rows).clamp(300, 1400),
        }
    }

    /// Sets the axis titles.
    pub fn axes(mut self, x: &str, y: &str) -> Self {
        match &mut self.chart {
            Chart::Heatmap {
                x_title, y_title, ..
            }
            | Chart::Line {
                x_title, y_title, ..
            }
            | Chart::Scatter {
                x_title, y_title, ..
            } => {
                *x_title = x.into();
                *y_title = y.into();
            }
            Chart::Bar { y_title, .. } => *y_title = y.into(),
            Chart::Graph { .. } => {}
        }
        self
    }

    /// Sets the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// The figure as an SVG document.
    ///
    /// # Errors
    /// [`LensError::Drawing`] if plotters reports a failure while drawing (none is expected: the
    /// SVG is written to a string, with the embedded font).
    pub fn to_svg(&self) -> Result<String> {
        ensure_font();
        let mut svg = String::new();
        {
            let root =
                SVGBackend::with_string(&mut svg, (self.width, self.height)).into_drawing_area();
            chart::draw(&self.chart, &self.title, &root).map_err(draw_err)?;
            root.present().map_err(|e| draw_err(e.to_string()))?;
        }
        Ok(svg)
    }

    /// The figure as an HTML fragment (the SVG inline).
    ///
    /// # Errors
    /// As [`Self::to_svg`]: [`LensError::Drawing`] if plotters reports a failure (none expected).
    pub fn to_html(&self) -> Result<String> {
        Ok(format!(
            "<div class=\"candlelens-figure\">{}</div>",
            self.to_svg()?
        ))
    }

    /// Saves as `.svg`, `.png` or `.html` (by the extension).
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for another extension; I/O and drawing errors.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => write(path, &self.to_svg()?),
            Some("html") => write(path, &html_page(&self.title, &self.to_html()?)),
            Some("png") => {
                ensure_font();
                // the PNG encoder picks the format by extension: the temporary keeps it
                crate::util::fs::write_atomically(path, |tmp| {
                    let tmp_png = tmp.with_extension("tmp.png");
                    let drawn = (|| {
                        let root = BitMapBackend::new(&tmp_png, (self.width, self.height))
                            .into_drawing_area();
                        chart::draw(&self.chart, &self.title, &root).map_err(draw_err)?;
                        root.present().map_err(|e| draw_err(e.to_string()))
                    })();
                    let moved = drawn.and_then(|()| {
                        std::fs::rename(&tmp_png, tmp).map_err(|e| LensError::io(tmp, e))
                    });
                    if moved.is_err() {
                        let _ = std::fs::remove_file(&tmp_png);
                    }
                    moved
                })
            }
            _ => Err(LensError::UnknownChoice {
                what: "figure file type".into(),
                given: path.display().to_string(),
                choices: "a path ending in .svg, .png or .html".into(),
            }),
        }
    }

    /// Shows the figure inline in an evcxr notebook (SVG).
    pub fn evcxr_display(&self) {
        match self.to_svg() {
            Ok(svg) => display("image/svg+xml", &svg),
            Err(e) => eprintln!("Error: {e}"),
        }
    }
}

/// Prints one rich output block for evcxr.
pub(crate) fn display(mime: &str, body: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{body}\nEVCXR_END_CONTENT");
}

/// Writes a file whole or not at all ([`crate::util::fs::write_bytes`]).
pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    crate::util::fs::write_bytes(path, text.as_bytes())
}

/// A standalone HTML page around a fragment.
pub(crate) fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>{body}</body></html>",
        table::escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_svg_has_labels_and_colours() {
        let f = Figure::heatmap(
            vec![vec![1.0, -1.0, 0.0], vec![0.5, 0.0, -0.25]],
            vec!["<bos>_0".into(), "Peb_1".into(), "is_2".into()],
            vec!["0".into(), "1".into()],
            "Patched resid_pre",
        );
        let svg = f.to_svg().unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Patched resid_pre"));
        assert!(svg.contains("Peb_1"), "x labels drawn");
        assert!(svg.contains("&lt;bos&gt;_0"), "labels are escaped");
        assert!(
            svg.contains("#2166AC") || svg.to_lowercase().contains("#2166ac"),
            "max blue"
        );
        assert!(svg.to_lowercase().contains("#b2182b"), "min red");
    }

    #[test]
    fn figures_save_as_svg_png_html() {
        let dir = std::env::temp_dir().join(format!("candlelens-viz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Figure::line(
            vec![0.0, 0.5, 1.0],
            vec![("logit diff".into(), vec![0.1, 1.0, 3.0])],
            Some(vec!["0_pre".into(), "0_mid".into(), "final_post".into()]),
            "Logit lens",
        );
        for ext in ["svg", "png", "html"] {
            let p = dir.join(format!("f.{ext}"));
            f.save(&p).unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() > 100, "{ext}");
        }
        let png = std::fs::read(dir.join("f.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(f.save(dir.join("f.gif")).is_err());
        let b = Figure::bar(vec!["a".into(), "b".into()], vec![1.0, -2.0], "bars")
            .to_svg()
            .unwrap();
        assert!(b.contains("bars"));
        let s = Figure::scatter(
            vec![(0.0, 1.0), (1.0, 0.0)],
            vec!["x".into(), "y".into()],
            "pts",
        )
        .to_svg()
        .unwrap();
        assert!(s.contains("pts"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
