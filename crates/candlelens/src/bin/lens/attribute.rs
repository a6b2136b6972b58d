//! `lens attribute`: attribution patching of one target (every layer and position, or head)
//! from one backward pass, optionally beside the exact sweep (`--verify`).

use candlelens::attribution::{AttributionPatcher, Disagreement, Edge, EdgeVerification};
use candlelens::metrics;
use candlelens::patching::{PatchGrid, PatchTarget};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{circuit_header, emit, emit_json, grid_text, PairArgs};

#[derive(Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// What to attribute: resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads,
    /// heads_by_pos, q, k, v (per kv head), pattern.
    #[arg(long, default_value = "resid_pre")]
    hook: String,
    /// Integrated gradients (EAP-IG) with this many interpolation steps instead of the
    /// gradient at the corrupted run.
    #[arg(long, value_parser = crate::common::ig_steps_arg)]
    ig_steps: Option<usize>,
    /// Also run the exact patching sweep and report where the estimate is off.
    #[arg(long)]
    verify: bool,
    /// With --verify: flag cells whose estimate is off by more than this (normalised units).
    #[arg(long, default_value_t = 0.1)]
    threshold: f32,
    /// Edge attribution (EAP) instead of a node grid: the strongest edges between components
    /// (embed, heads, MLPs -> heads' q/k/v, MLPs, logits); with --verify, head edges beside
    /// exact edge patching.
    #[arg(long)]
    edges: bool,
    /// With --edges: how many of the strongest edges to print (and, with --verify, check).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `lens attribute --json` prints.
#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    str_tokens: Vec<String>,
    ig_steps: Option<usize>,
    #[serde(flatten)]
    grid: &'a PatchGrid,
    /// The exact sweep's grid (with --verify).
    exact: Option<&'a Vec<Vec<f32>>>,
    correlation: Option<f64>,
    max_abs_error: Option<f32>,
    wrong: Option<&'a Vec<Disagreement>>,
}

/// What `lens attribute --edges --json` prints.
#[derive(Serialize)]
struct EdgeReport<'a> {
    model: &'a str,
    str_tokens: Vec<String>,
    ig_steps: Option<usize>,
    /// The strongest edges, strongest first.
    edges: &'a [Edge],
    /// How many edges the graph has.
    n_edges: usize,
    clean_diff: f32,
    corrupt_diff: f32,
    seconds: f64,
    forward_equivalents: f64,
    /// With --verify: the head edges among them beside exact edge patching.
    edge_check: Option<&'a EdgeVerification>,
}

fn attribute_edges(
    a: &AttributeArgs,
    model: &HookedTransformer,
    attr: &AttributionPatcher,
    str_tokens: Vec<String>,
) -> candlelens::Result<()> {
    let graph = attr.edges()?;
    let check = if a.verify {
        Some(attr.verify_edges(&graph, a.top, a.threshold)?)
    } else {
        None
    };
    if a.json {
        let report = EdgeReport {
            model: &model.cfg.name,
            str_tokens,
            ig_steps: a.ig_steps,
            edges: graph.top(a.top),
            n_edges: graph.edges.len(),
            clean_diff: graph.clean,
            corrupt_diff: graph.corrupted,
            seconds: graph.seconds,
            forward_equivalents: graph.forward_equivalents,
            edge_check: check.as_ref(),
        };
        emit_json(&report, true);
        return Ok(());
    }
    let what = format!("edge attribution{}", ig_note(a.ig_steps));
    let mut o = circuit_header(&model.cfg.name, &what, graph.clean, graph.corrupted);
    p!(o, "tokens: {:?}", str_tokens);
    p!(
        o,
        "the {} strongest of {} edges, (estimated effect) / (clean - corrupted):",
        a.top.min(graph.edges.len()),
        graph.edges.len()
    );
    for e in graph.top(a.top) {
        p!(
            o,
            "{:>10} -> {:<12} {:+.4}",
            e.from.to_string(),
            e.to.to_string(),
            e.score
        );
    }
    p!(
        o,
        "edges {:.2} s, {:.1} forward-equivalents",
        graph.seconds,
        graph.forward_equivalents
    );
    if let Some(c) = &check {
        p!(o, "{c}");
    }
    emit(&o);
    Ok(())
}

pub fn attribute(a: &AttributeArgs) -> candlelens::Result<()> {
    let (model, clean, corrupt, pairs) = a.pair.load()?;
    let target = PatchTarget::parse(&a.hook)?;
    let metric = metrics::logit_diff_grad_metric(&pairs);
    let attr = AttributionPatcher::with_options(
        &model,
        &clean,
        &corrupt,
        metric,
        a.pair.options(),
        a.ig_steps,
    )?;
    if a.edges {
        let str_tokens = model.ids_to_str_tokens(a.pair.label_tokens(&clean, &corrupt).row(0)?)?;
        return attribute_edges(a, &model, &attr, str_tokens);
    }
    let verification = if a.verify {
        Some(attr.verify(target, a.threshold)?)
    } else {
        None
    };
    let grid = match &verification {
        Some(v) => v.estimate.clone(),
        None => attr.nodes(target)?,
    };
    let str_tokens = model.ids_to_str_tokens(a.pair.label_tokens(&clean, &corrupt).row(0)?)?;
    if a.json {
        let report = Report {
            model: &model.cfg.name,
            str_tokens,
            ig_steps: a.ig_steps,
            grid: &grid,
            exact: verification.as_ref().map(|v| &v.exact.values),
            correlation: verification.as_ref().map(|v| v.correlation),
            max_abs_error: verification.as_ref().map(|v| v.max_abs_error),
            wrong: verification.as_ref().map(|v| &v.wrong),
        };
        emit_json(&report, true);
        return Ok(());
    }
    let what = format!("attributing {}{}", target.name(), ig_note(a.ig_steps));
    let mut o = circuit_header(&model.cfg.name, &what, grid.clean, grid.corrupted);
    p!(o, "tokens: {:?}", str_tokens);
    grid_text(&mut o, &grid, "estimated", 6);
    p!(
        o,
        "attribution {:.2} s, {:.1} forward-equivalents",
        grid.seconds,
        grid.forward_equivalents
    );
    if let Some(v) = &verification {
        p!(o, "{v}");
    }
    emit(&o);
    Ok(())
}

/// `" (integrated gradients, k steps)"` with `--ig-steps k`, else nothing.
fn ig_note(steps: Option<usize>) -> String {
    steps
        .map(|k| format!(" (integrated gradients, {k} steps)"))
        .unwrap_or_default()
}
