//! `lens patch`: activation patching of one target over every layer and position (or head).

use candlelens::patching::{PatchGrid, PatchTarget};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{answer_metric, bos_flag, emit, emit_json, grid_text};

#[derive(Args)]
pub struct PatchArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// The clean prompt.
    #[arg(long)]
    clean: String,
    /// The corrupted prompt (same number of tokens).
    #[arg(long)]
    corrupt: String,
    /// Correct and incorrect answer (each one token, e.g. " Peb" " Rachel").
    #[arg(long, num_args = 2, value_names = ["CORRECT", "INCORRECT"])]
    answers: Vec<String>,
    /// What to patch: resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, heads_by_pos,
    /// q, k, v (per kv head), pattern.
    #[arg(long, default_value = "resid_pre")]
    hook: String,
    /// Prepend BOS (default: the model's tokenizer default).
    #[arg(long, conflicts_with = "no_bos")]
    bos: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
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
    let model = std::sync::Arc::new(HookedTransformer::from_pretrained(&a.model)?);
    let bos = bos_flag(a.bos, a.no_bos);
    let clean = model.to_tokens(a.clean.as_str(), bos)?;
    let corrupt = model.to_tokens(a.corrupt.as_str(), bos)?;
    let target = PatchTarget::parse(&a.hook)?;
    let mut p = Patcher::new(&model, &clean, &corrupt, answer_metric(&model, &a.answers)?)?;
    p.progress = !a.json;
    let grid = p.sweep(target)?;
    let str_tokens = model.ids_to_str_tokens(clean.row(0)?)?;
    if a.json {
        let report = PatchReport {
            model: &model.cfg.name,
            str_tokens,
            grid: &grid,
        };
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = String::new();
    p!(
        o,
        "model {}  patching {}  clean diff {:.4}  corrupted diff {:.4}",
        model.cfg.name,
        target.name(),
        grid.clean,
        grid.corrupted
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
