//! `lens lre`: a linear relational embedding fitted on 60% of a relation, evaluated on the rest
//! (every layer with the regression estimator when no layer is given).

use std::time::Instant;

use candlelens::lre::{
    self, Candidates, CausalityReport, LreOperator, LreReport, LreStates, ReadAt, Relation,
};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json};

#[derive(Args)]
pub struct LreArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    processing: crate::common::ProcessingArgs,
    /// Relation file: a [{subject, object}] list (data/data_sample.json) or the LRE paper's format.
    #[arg(long, default_value = "data/data_sample.json")]
    data: String,
    /// Prompt template with one {} for the subject (default: the relation's first template).
    #[arg(long)]
    template: Option<String>,
    /// Layer whose hook_resid_post is h (default: every layer, regression only).
    #[arg(long)]
    layer: Option<usize>,
    /// Where h is read: the subject's last token (Hernandez et al.) or the prompt's last token
    /// (what the source's printed numbers read).
    #[arg(long, default_value = "subject-last", value_parser = ["subject-last", "prompt-last"])]
    read_at: String,
    /// regression (the source's least-norm fit) or jacobian (Hernandez et al. 2023).
    #[arg(long, default_value = "regression")]
    method: String,
    /// β for the Jacobian estimator.
    #[arg(long, default_value_t = 2.25)]
    beta: f32,
    /// Training subjects the Jacobian is averaged over (the paper: 8).
    #[arg(long, default_value_t = 8)]
    n_jacobian: usize,
    /// Seed of the split (Python's random.seed; the source: 42).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run the causality test with a pseudo-inverse of this rank.
    #[arg(long, value_parser = crate::common::positive_arg)]
    causality_rank: Option<usize>,
    /// Device: cpu (default), cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What `lens lre --json` prints without `--layer`: the regression at every layer.
#[derive(Serialize)]
struct SweepReport<'a> {
    model: &'a str,
    template: &'a str,
    read_at: &'a str,
    seconds_collect: f64,
    layers: Vec<LreReport<'a>>,
}

/// What `lens lre --layer L --json` prints: one evaluation, and the causality test if asked.
#[derive(Serialize)]
struct EvalReport<'a> {
    model: &'a str,
    template: &'a str,
    read_at: &'a str,
    seconds: f64,
    #[serde(flatten)]
    eval: LreReport<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causality: Option<CausalityReport<'a>>,
}

pub fn lre(a: &LreArgs) -> candlelens::Result<()> {
    let mut opts = LoadOptions::parse(&a.device, &a.dtype)?;
    opts.processing = a.processing.processing();
    let model = HookedTransformer::from_pretrained_with(&a.model, &opts)?;
    let rel = Relation::from_file(&a.data)?;
    let template = rel.template(a.template.as_deref())?;
    let (train, test) = rel.split_like_source(a.seed, 0.6);
    let cands = Candidates::new(&model, &rel.objects(), &template)?;
    let t0 = Instant::now();
    let read_at = if a.read_at == "prompt-last" {
        ReadAt::PromptLast
    } else {
        ReadAt::SubjectLast
    };
    let train = LreStates::collect(&model, &train, &template, &cands)?.read_at(read_at);
    let test = LreStates::collect(&model, &test, &template, &cands)?.read_at(read_at);
    let collect_s = t0.elapsed().as_secs_f64();
    let op = match (a.method.as_str(), a.layer) {
        ("regression", None) => {
            let sweep = lre::layer_sweep(&model, &train, &test, 0..model.cfg.n_layers)?;
            if a.json {
                let report = SweepReport {
                    model: &model.cfg.name,
                    template: &template,
                    read_at: &a.read_at,
                    seconds_collect: collect_s,
                    layers: sweep.iter().map(|e| e.report()).collect(),
                };
                emit_json(&report, true);
            } else {
                let mut o = String::new();
                p!(
                    o,
                    "{} on {:?}, h at {}: {} train / {} test subjects",
                    model.cfg.name,
                    template,
                    read_at,
                    train.len(),
                    test.len()
                );
                for e in &sweep {
                    let ((s, n), (k, _)) = (e.source_count(), e.correct());
                    p!(
                        o,
                        "layer {:>2}: the source's count {s}/{n}, over the candidates {k}/{n}, faithful to the model {:.1}%",
                        e.layer,
                        100.0 * e.faithfulness()
                    );
                }
                emit(&o);
            }
            return Ok(());
        }
        ("regression", Some(l)) => LreOperator::fit_regression(&model, &train, l)?,
        ("jacobian", Some(l)) => {
            let n = a.n_jacobian.clamp(1, train.len());
            LreOperator::fit_jacobian(&model, &train.items[..n], l, a.beta)?
        }
        ("jacobian", None) => return Err(LensError::Unsupported {
            what: "--method jacobian without --layer".into(),
            fix:
                "pass --layer L (one Jacobian per training subject is costly, so there is no sweep)"
                    .into(),
        }),
        (m, _) => {
            return Err(LensError::UnknownChoice {
                what: "--method".into(),
                given: m.to_string(),
                choices: "regression or jacobian".into(),
            })
        }
    };
    let eval = lre::evaluate(&model, &op, &test)?;
    let caus = a
        .causality_rank
        .map(|r| lre::causality(&model, &op, &train, &test, r))
        .transpose()?;
    if a.json {
        let report = EvalReport {
            model: &model.cfg.name,
            template: &template,
            read_at: &a.read_at,
            seconds: t0.elapsed().as_secs_f64(),
            eval: eval.report(),
            causality: caus.as_ref().map(|c| c.report()),
        };
        emit_json(&report, true);
    } else {
        let mut o = eval.table();
        if let Some(c) = &caus {
            o += &c.table();
        }
        emit(&o);
    }
    Ok(())
}
