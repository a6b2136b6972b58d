//! Charts drawn with plotters on any backend (SVG for notebooks and reports, PNG files):
//! heatmaps with a diverging colour scale centred at 0, line charts, bars and scatter plots.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What to draw.
#[derive(Clone, Debug)]
pub enum Chart {
    /// `values[row][col]`, rows drawn top to bottom (layers on y), RdBu centred at 0.
    Heatmap {
        /// The cells, `values[row][col]`.
        values: Vec<Vec<f32>>,
        /// One label per column.
        x_labels: Vec<String>,
        /// One label per row.
        y_labels: Vec<String>,
        /// The x axis's title.
        x_title: String,
        /// The y axis's title.
        y_title: String,
    },
    /// One or more series over shared x values.
    Line {
        /// The shared x values.
        x: Vec<f32>,
        /// `(name, y values)` per series, one y per x.
        series: Vec<(String, Vec<f32>)>,
        /// Tick labels in place of the x values, one per x.
        x_labels: Option<Vec<String>>,
        /// The x axis's title.
        x_title: String,
        /// The y axis's title.
        y_title: String,
    },
    /// One bar per label.
    Bar {
        /// One label per bar.
        labels: Vec<String>,
        /// One height per bar.
        values: Vec<f32>,
        /// The y axis's title.
        y_title: String,
    },
    /// Points `(x, y)` with optional labels.
    Scatter {
        /// The points `(x, y)`.
        points: Vec<(f32, f32)>,
        /// One label per point, or empty for none.
        labels: Vec<String>,
        /// The x axis's title.
        x_title: String,
        /// The y axis's title.
        y_title: String,
        /// Draw the line `y = x` (estimate against exact value).
        diagonal: bool,
    },
    /// A layered graph: nodes at `(x, y)` (y = 0 at the bottom), weighted edges between them
    /// (blue positive, red negative, width by `|weight|`), each with an optional label at its
    /// end.
    Graph {
        /// `(label, x, y)` per node.
        nodes: Vec<(String, f32, f32)>,
        /// `(from, to, weight, label)`: node indices, the weight, text at the `to` end.
        edges: Vec<(usize, usize, f32, String)>,
    },
}

/// RdBu: blue for positive, red for negative, white at 0; `t` in [-1, 1].
pub fn rdbu(t: f32) -> RGBColor {
    let t = t.clamp(-1.0, 1.0);
    let (r0, g0, b0) = (247.0, 247.0, 247.0);
    let (r1, g1, b1) = if t >= 0.0 {
        (33.0, 102.0, 172.0)
    } else {
        (178.0, 24.0, 43.0)
    };
    let a = t.abs();
    let mix = |x: f32, y: f32| (x + (y - x) * a).round() as u8;
    RGBColor(mix(r0, r1), mix(g0, g1), mix(b0, b1))
}

const SERIES: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type DrawResult<T> = std::result::Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Every `step`-th label (so that long axes stay readable).
fn sparse(labels: &[String], max: usize) -> usize {
    labels.len().div_ceil(max.max(1)).max(1)
}

/// Draws `chart` with `title` onto `root`.
pub fn draw<DB: DrawingBackend>(
    chart: &Chart,
    title: &str,
    root: &DrawingArea<DB, Shift>,
) -> DrawResult<()> {
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
    match chart {
        Chart::Heatmap {
            values,
            x_labels,
            y_labels,
            x_title,
            y_title,
        } => heatmap(&root, values, x_labels, y_labels, x_title, y_title),
        Chart::Line {
            x,
            series,
            x_labels,
            x_title,
            y_title,
        } => line(&root, x, series, x_labels.as_deref(), x_title, y_title),
        Chart::Bar {
            labels,
            values,
            y_title,
        } => bar(&root, labels, values, y_title),
        Chart::Scatter {
            points,
            labels,
            x_title,
            y_title,
            diagonal,
        } => scatter(&root, points, labels, x_title, y_title, *diagonal),
        Chart::Graph { nodes, edges } => graph(&root, nodes, edges),
    }
}

fn heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    values: &[Vec<f32>],
    x_labels: &[String],
    y_labels: &[String],
    x_title: &str,
    y_title: &str,
) -> DrawResult<()> {
    let rows = values.len();
    let cols = values.first().map_or(0, Vec::len);
    let limit = values
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    let (w, _) = root.dim_in_pixel();
    let (main, bar) = root.split_horizontally(w.saturating_sub(90));
    let longest = x_labels
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(1) as u32;
    let mut chart = ChartBuilder::on(&main)
        .margin(8)
        .x_label_area_size((longest * 7 + 40).min(160))
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0..cols.saturating_sub(1)).into_segmented(),
            (0..rows.saturating_sub(1)).into_segmented(),
        )
        .map_err(err)?;
    let xs = sparse(x_labels, 60);
    let ys = sparse(y_labels, 40);
    let label = |labels: &[String], step: usize, v: &SegmentValue<usize>, flip: bool| match v {
        SegmentValue::CenterOf(i) if i % step == 0 => {
            let i = if flip { rows.saturating_sub(1 + i) } else { *i };
            labels.get(i).cloned().unwrap_or_default()
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols)
        .y_labels(rows)
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| label(y_labels, ys, v, true))
        .y_label_style(("sans-serif", 11))
        .x_desc(x_title)
        .y_desc(y_title)
        .draw()
        .map_err(err)?;
    let centres: Vec<(String, (i32, i32))> = (0..cols)
        .filter(|c| c % xs == 0)
        .map(|c| {
            let v = SegmentValue::CenterOf(c);
            (
                label(x_labels, xs, &v, false),
                chart.backend_coord(&(v, SegmentValue::Exact(0))),
            )
        })
        .collect();
    vertical_labels(&main, &centres)?;
    // row 0 at the top, as imshow draws it
    chart
        .draw_series(values.iter().enumerate().flat_map(|(r, row)| {
            let y = rows - 1 - r;
            row.iter().enumerate().map(move |(c, v)| {
                let colour = if v.is_finite() {
                    rdbu(v / limit)
                } else {
                    RGBColor(200, 200, 200)
                };
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    colour.filled(),
                )
            })
        }))
        .map_err(err)?;
    colour_bar(&bar, limit)
}

/// Draws labels reading upwards, ending just below the points given in backend pixels.
fn vertical_labels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    at: &[(String, (i32, i32))],
) -> DrawResult<()> {
    let (bx, by) = area.get_base_pixel();
    let style = TextStyle::from(("sans-serif", 11).into_font())
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (text, (x, y)) in at {
        if text.is_empty() {
            continue;
        }
        let (w, _) = area
            .estimate_text_size(text, &style)
            .unwrap_or((text.chars().count() as u32 * 7, 11));
        let anchor = (x - bx, y - by + 6 + w as i32);
        area.draw(&Text::new(text.clone(), anchor, style.clone()))
            .map_err(err)?;
    }
    Ok(())
}

fn colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, limit: f32) -> DrawResult<()> {
    let mut cb = ChartBuilder::on(area)
        .margin_top(20)
        .margin_bottom(60)
        .margin_right(10)
        .y_label_area_size(50)
        .build_cartesian_2d(0f32..1f32, -limit..limit)
        .map_err(err)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .y_label_formatter(&|v| format!("{v:.2}"))
        .y_label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    let steps = 64;
    cb.draw_series((0..steps).map(|i| {
        let a = -limit + 2.0 * limit * i as f32 / steps as f32;
        let b = -limit + 2.0 * limit * (i + 1) as f32 / steps as f32;
        Rectangle::new([(0.0, a), (1.0, b)], rdbu((a + b) / 2.0 / limit).filled())
    }))
    .map_err(err)?;
    Ok(())
}

fn range(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

fn line<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x: &[f32],
    series: &[(String, Vec<f32>)],
    x_labels: Option<&[String]>,
    x_title: &str,
    y_title: &str,
) -> DrawResult<()> {
    let (x0, x1) = range(x.iter().copied());
    let (y0, y1) = range(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .x_label_area_size(if x_labels.is_some() { 70 } else { 40 })
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let name_of = |v: &f32| -> String {
        x_labels
            .and_then(|labels| {
                x.iter()
                    .position(|a| (a - v).abs() < 1e-3)
                    .and_then(|i| labels.get(i).cloned())
            })
            .unwrap_or_else(|| format!("{v:.1}"))
    };
    chart
        .configure_mesh()
        .x_desc(x_title)
        .y_desc(y_title)
        .label_style(("sans-serif", 11))
        .x_label_formatter(&name_of)
        .draw()
        .map_err(err)?;
    for (i, (name, ys)) in series.iter().enumerate() {
        let colour = SERIES[i % SERIES.len()];
        chart
            .draw_series(LineSeries::new(
                x.iter().copied().zip(ys.iter().copied()),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(a, b)| {
                PathElement::new(vec![(a, b), (a + 16, b)], colour.stroke_width(2))
            });
        chart
            .draw_series(
                x.iter()
                    .zip(ys)
                    .map(|(&a, &b)| Circle::new((a, b), 3, colour.filled())),
            )
            .map_err(err)?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &[String],
    values: &[f32],
    y_title: &str,
) -> DrawResult<()> {
    let (y0, y1) = range(values.iter().copied().chain([0.0]));
    let n = values.len();
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .x_label_area_size(80)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), y0..y1)
        .map_err(err)?;
    let step = sparse(labels, 50);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|_| String::new())
        .y_desc(y_title)
        .draw()
        .map_err(err)?;
    let centres: Vec<(String, (i32, i32))> = (0..n)
        .filter(|i| i % step == 0)
        .map(|i| {
            (
                labels.get(i).cloned().unwrap_or_default(),
                chart.backend_coord(&(SegmentValue::CenterOf(i), y0)),
            )
        })
        .collect();
    vertical_labels(root, &centres)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, &v)| {
            let colour = if v >= 0.0 { SERIES[0] } else { SERIES[3] };
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                colour.filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

fn scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[(f32, f32)],
    labels: &[String],
    x_title: &str,
    y_title: &str,
    diagonal: bool,
) -> DrawResult<()> {
    let (mut x0, mut x1) = range(points.iter().map(|p| p.0));
    let (mut y0, mut y1) = range(points.iter().map(|p| p.1));
    if diagonal {
        // one range on both axes, so that y = x runs corner to corner
        (x0, x1) = (x0.min(y0), x1.max(y1));
        (y0, y1) = (x0, x1);
    }
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_title)
        .y_desc(y_title)
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    if diagonal {
        chart
            .draw_series(LineSeries::new(
                [(x0, x0), (x1, x1)],
                ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1),
            ))
            .map_err(err)?;
    }
    chart
        .draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 4, SERIES[0].filled())),
        )
        .map_err(err)?;
    if !labels.is_empty() {
        chart
            .draw_series(
                points.iter().zip(labels).map(|(&p, l)| {
                    Text::new(l.clone(), (p.0, p.1), ("sans-serif", 10).into_font())
                }),
            )
            .map_err(err)?;
    }
    Ok(())
}

fn graph<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    nodes: &[(String, f32, f32)],
    edges: &[(usize, usize, f32, String)],
) -> DrawResult<()> {
    let (w, h) = root.dim_in_pixel();
    let (x0, x1) = range(nodes.iter().map(|n| n.1));
    let (y0, y1) = range(nodes.iter().map(|n| n.2));
    let margin = 50.0;
    let px = |x: f32, y: f32| -> (i32, i32) {
        let fx = if x1 > x0 { (x - x0) / (x1 - x0) } else { 0.5 };
        let fy = if y1 > y0 { (y - y0) / (y1 - y0) } else { 0.5 };
        (
            (margin + fx * (w as f32 - 2.0 * margin)) as i32,
            (h as f32 - margin - fy * (h as f32 - 2.0 * margin)) as i32,
        )
    };
    let strongest = edges
        .iter()
        .map(|e| e.2.abs())
        .fold(0f32, f32::max)
        .max(1e-12);
    for (a, b, wgt, label) in edges {
        let (Some(na), Some(nb)) = (nodes.get(*a), nodes.get(*b)) else {
            continue;
        };
        let (pa, pb) = (px(na.1, na.2), px(nb.1, nb.2));
        let t = (wgt / strongest).clamp(-1.0, 1.0);
        let colour = if t >= 0.0 { rdbu(0.85) } else { rdbu(-0.85) };
        let width = (1.0 + 6.0 * t.abs()) as u32;
        root.draw(&PathElement::new(
            vec![pa, pb],
            ShapeStyle::from(&colour.mix(0.75)).stroke_width(width),
        ))
        .map_err(err)?;
        if !label.is_empty() {
            // a little way back from the end, so that it sits beside the node
            let at = (pb.0 + (pa.0 - pb.0) / 5, pb.1 + (pa.1 - pb.1) / 5);
            root.draw(&Text::new(
                label.clone(),
                at,
                ("sans-serif", 12).into_font(),
            ))
            .map_err(err)?;
        }
    }
    let centred = ("sans-serif", 12)
        .into_font()
        .into_text_style(root)
        .pos(Pos::new(HPos::Center, VPos::Center));
    for (label, x, y) in nodes {
        let p = px(*x, *y);
        root.draw(&Rectangle::new(
            [(p.0 - 28, p.1 - 10), (p.0 + 28, p.1 + 10)],
            WHITE.filled(),
        ))
        .map_err(err)?;
        root.draw(&Rectangle::new(
            [(p.0 - 28, p.1 - 10), (p.0 + 28, p.1 + 10)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        root.draw(&Text::new(label.clone(), p, centred.clone()))
            .map_err(err)?;
    }
    Ok(())
}
