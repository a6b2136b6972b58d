//! `lens patch`: activation patching of one target over every layer and position (or head).

use candlelens::metrics;
use candlelens::patching::{PatchGrid, PatchTarget};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{circuit_header, emit, emit_json, grid_text, PairArgs};

#[derive(Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// What to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, heads_by_pos,
    /// q, k, v (per kv head), pattern.
    #[arg(long, default_value = "resid_pre")]
    hook: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `lens patch --json` prints: the model, the clean prompt's tokens and the grid.
#[derive(Serialize)]
struct PatchReport<'a> {
    model: &'a str,
    str_tokens: Vec<String>,
    #[serde(flatten)]
    grid: &'a PatchGrid,
}

pub fn patch(a: &PatchArgs) -> candlelens::Result<()> {
    let (model, clean, corrupt, pairs) = a.pair.load()?;
    let target = PatchTarget::parse(&a.hook)?;
    let metric = metrics::logit_diff_metric(&pairs);
    let mut p = Patcher::with_options(&model, &clean, &corrupt, metric, a.pair.options())?;
    p.progress = !a.json;
    let grid = p.sweep(target)?;
    let str_tokens = model.ids_to_str_tokens(a.pair.label_tokens(&clean, &corrupt).row(0)?)?;
    if a.json {
        let report = PatchReport {
            model: &model.cfg.name,
            str_tokens,
            grid: &grid,
        };
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = circuit_header(
        &model.cfg.name,
        &format!("patching {}", target.name()),
        grid.clean,
        grid.corrupted,
    );
    p!(o, "tokens: {:?}", str_tokens);
    grid_text(&mut o, &grid, "normalised", 6);
    p!(
        o,
        "sweep {:.2} s, {:.1} forward-equivalents (naive: {} forwards)",
        grid.seconds,
        grid.forward_equivalents,
        grid.naive_forwards
    );
    emit(&o);
    Ok(())
}
