//! `lens path-patch`: path patching (the IOI paper's recipe) from every head, or from a set of
//! sender heads, to the logits or to receiver heads' queries, keys or values.

use candlelens::metrics;
use candlelens::patching::{Head, PatchGrid, PathPatcher, Receivers};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{circuit_header, emit, emit_json, grid_text, PairArgs};

#[derive(Args)]
pub struct PathPatchArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Where the paths end: `final` (the logits) or receiver heads `LAYER.HEAD:q|k|v`
    /// (several allowed, e.g. `9.6:q 9.9:q`; `qkv` for all three inputs).
    #[arg(long, num_args = 1.., default_value = "final")]
    receivers: Vec<String>,
    /// Patch these senders together (`LAYER.HEAD`, e.g. `7.3 7.9`) and print one score,
    /// instead of the grid with every head on its own as the sender.
    #[arg(long, num_args = 1..)]
    senders: Vec<String>,
    /// Freeze the MLPs at the corrupted run too (only direct paths count).
    #[arg(long)]
    freeze_mlps: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `lens path-patch --json` prints.
#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    receivers: &'a Receivers,
    freeze_mlps: bool,
    /// The senders patched together (with --senders).
    #[serde(skip_serializing_if = "Option::is_none")]
    senders: Option<Vec<String>>,
    /// Their normalised score (with --senders).
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    grid: Option<&'a PatchGrid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clean_diff: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt_diff: Option<f32>,
    seconds: f64,
}

fn parse_head(s: &str) -> candlelens::Result<Head> {
    let bad = || LensError::UnknownChoice {
        what: "sender head".into(),
        given: s.to_string(),
        choices: "LAYER.HEAD, e.g. 7.3".into(),
    };
    let (l, h) = s.split_once('.').ok_or_else(bad)?;
    Ok((l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

pub fn path_patch(a: &PathPatchArgs) -> candlelens::Result<()> {
    let specs: Vec<&str> = a.receivers.iter().map(String::as_str).collect();
    let receivers = Receivers::parse(&specs)?;
    let senders = a
        .senders
        .iter()
        .map(|s| parse_head(s))
        .collect::<candlelens::Result<Vec<_>>>()?;
    let (model, clean, corrupt, pairs) = a.pair.load()?;
    let metric = metrics::logit_diff_metric(&pairs);
    let t0 = std::time::Instant::now();
    let mut pp = PathPatcher::from_patcher(Patcher::with_options(
        &model,
        &clean,
        &corrupt,
        metric,
        a.pair.options(),
    )?);
    pp.freeze_mlps = a.freeze_mlps;
    let (score, grid) = if senders.is_empty() {
        (None, Some(pp.grid(&receivers)?))
    } else {
        (Some(pp.patch(&senders, &receivers)?), None)
    };
    let seconds = t0.elapsed().as_secs_f64();
    let (c, k) = (pp.patcher().clean_metric(), pp.patcher().corrupted_metric());
    if a.json {
        let report = Report {
            model: &model.cfg.name,
            receivers: &receivers,
            freeze_mlps: a.freeze_mlps,
            senders: score.map(|_| a.senders.clone()),
            score,
            grid: grid.as_ref(),
            clean_diff: score.map(|_| c),
            corrupt_diff: score.map(|_| k),
            seconds,
        };
        emit_json(&report, true);
        return Ok(());
    }
    let frozen = if a.freeze_mlps { " (MLPs frozen)" } else { "" };
    let mut o = circuit_header(
        &model.cfg.name,
        &format!("paths to {receivers}{frozen}"),
        c,
        k,
    );
    if let Some(s) = score {
        p!(
            o,
            "senders {}: (patched - corrupted) / (clean - corrupted) = {s:.4}",
            a.senders.join(" ")
        );
    }
    if let Some(g) = &grid {
        grid_text(&mut o, g, "each head as the sender:", 4);
        let top: Vec<String> = g
            .strongest(5)
            .into_iter()
            .map(|(l, h, v)| format!("{l}.{} {v:+.3}", h.trim_start_matches('H')))
            .collect();
        p!(o, "strongest senders: {}", top.join(", "));
        p!(
            o,
            "{:.2} s, {:.1} forward-equivalents (the hooks recipe: {} forwards)",
            g.seconds,
            g.forward_equivalents,
            g.naive_forwards
        );
    }
    emit(&o);
    Ok(())
}
