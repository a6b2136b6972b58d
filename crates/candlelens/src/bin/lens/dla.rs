//! `lens dla`: direct logit attribution of an answer pair's logit difference at the last
//! position, per component or per head (TransformerLens's `decompose_resid` /
//! `stack_head_results` with `apply_ln=True`, projected on the answers' residual directions).

use candlelens::analysis::LogitDiffRun;
use clap::Args;
use serde::Serialize;

use crate::common::{answer_pair, emit, emit_json, Input};

#[derive(Args)]
pub struct DlaArgs {
    #[command(flatten)]
    input: Input,
    /// Correct and incorrect answer (each one token, e.g. " Mary" " John").
    #[arg(long, num_args = 2, value_names = ["CORRECT", "INCORRECT"])]
    answers: Vec<String>,
    /// One value per attention head (L0H0, ...).
    #[arg(long, conflicts_with = "per_layer")]
    per_head: bool,
    /// One value per component: embed, pos_embed, 0_attn_out, 0_mlp_out, ... (the default).
    #[arg(long)]
    per_layer: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `lens dla --json` prints.
#[derive(Serialize)]
struct DlaReport {
    model: String,
    processing: String,
    labels: Vec<String>,
    values: Vec<f32>,
    logit_diff: f32,
    /// The final norm's and the unembedding's biases along the answers: the components plus
    /// this add up to `logit_diff` (without a softcap).
    bias: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub fn dla(a: &DlaArgs) -> candlelens::Result<()> {
    let model = a.input.load()?;
    let tokens = a.input.tokens(&model)?;
    if tokens.batch() != 1 {
        return Err(candlelens::LensError::mismatch(
            "lens dla",
            format!(
                "{} prompts; it attributes one prompt's logit difference: pass --prompt or --tokens",
                tokens.batch()
            ),
        ));
    }
    let pairs = answer_pair(&model, &a.answers)?;
    let run = LogitDiffRun::from_tokens(&model, tokens, pairs.clone())?;
    let attr = if a.per_head {
        run.per_head(&model)?
    } else {
        run.per_layer(&model)?
    };
    let report = DlaReport {
        model: model.cfg.name.clone(),
        processing: model.cfg.processing.describe(),
        labels: attr.labels.clone(),
        values: attr.values.clone(),
        logit_diff: run.logit_diff,
        bias: model.logit_diff_bias(&pairs)?[0],
        note: attr.note.clone(),
    };
    if a.json {
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = String::new();
    p!(
        o,
        "{}: logit difference {:?} - {:?} = {:.4} (weight processing: {})",
        report.model,
        a.answers[0],
        a.answers[1],
        report.logit_diff,
        report.processing
    );
    for (l, v) in report.labels.iter().zip(&report.values) {
        p!(o, "{l:>12} {v:>9.4}");
    }
    p!(o, "{:>12} {:>9.4}", "biases", report.bias);
    if let Some(n) = &report.note {
        p!(o, "note: {n}");
    }
    emit(&o);
    Ok(())
}
