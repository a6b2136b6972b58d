//! `lens run`: each prompt's top next-token logits (at its own last real token, whichever side
//! the batch is padded on) and the first prompt's residual stream entering each block.

use candle_core::{DType, IndexOp};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, Input};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    input: Input,
    /// How many top logits to show.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One of the top next-token logits.
#[derive(Clone, Serialize)]
struct TopLogit {
    id: u32,
    token: String,
    logit: f32,
}

/// `blocks.{layer}.hook_resid_pre` at the last position: its norm and first dimensions.
#[derive(Serialize)]
struct ResidSummary {
    layer: usize,
    l2: f64,
    first16: Vec<f32>,
}

/// One prompt of the batch: its ids and its top next-token logits.
#[derive(Serialize)]
struct PromptTop {
    token_ids: Vec<u32>,
    top_k: Vec<TopLogit>,
}

/// What `lens run --json` prints: the first prompt's tokens, top logits and residual stream,
/// and every prompt's top logits.
#[derive(Serialize)]
struct RunReport {
    model: String,
    token_ids: Vec<u32>,
    str_tokens: Vec<String>,
    top_k: Vec<TopLogit>,
    resid_pre_last: Vec<ResidSummary>,
    prompts: Vec<PromptTop>,
}

pub fn run(args: &RunArgs) -> candlelens::Result<()> {
    let model = args.input.load()?;
    let tokens = args.input.tokens(&model)?;
    // only the logits printed: each prompt's last real position, CHUNK prompts per forward
    // so that a file of thousands of prompts runs in bounded memory
    const CHUNK: usize = 64;
    let mut prompts = Vec::with_capacity(tokens.batch());
    for rows in tokens.rows().chunks(CHUNK) {
        let chunk = Tokens::with_padding(rows.to_vec(), tokens.pad_id(), tokens.padding())?;
        let last_logits = model.last_logits(&chunk)?;
        for (b, row) in rows.iter().enumerate() {
            prompts.push(PromptTop {
                token_ids: row.clone(),
                top_k: top_logits(&model, &last_logits.i(b)?, args.top_k)?,
            });
        }
    }
    // the first prompt's residual stream, from its own run (it computes what it does in the
    // batch)
    let first = model.tokens_from_ids(tokens.row(0)?.to_vec())?;
    let mut rec = ActivationCache::recorder(HookFilter::suffix("hook_resid_pre")?);
    model.forward_with(&first, LogitsAt::Last, &mut rec)?;
    let last = first.max_len() - 1;
    let token_ids = tokens.row(0)?.to_vec();
    let str_tokens = model.ids_to_str_tokens(&token_ids)?;
    let top_k = prompts[0].top_k.clone();
    let mut resid_pre_last = Vec::new();
    for l in 0..model.cfg.n_layers {
        let v: Vec<f32> = rec
            .at(HookPoint::ResidPre(l))?
            .i((0, last))?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let l2 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        resid_pre_last.push(ResidSummary {
            layer: l,
            l2,
            first16: v[..16.min(v.len())].to_vec(),
        });
    }
    let report = RunReport {
        model: model.cfg.name.clone(),
        token_ids,
        str_tokens,
        top_k,
        resid_pre_last,
        prompts,
    };
    if args.json {
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = String::new();
    p!(o, "model: {}", report.model);
    p!(
        o,
        "tokens ({}): {:?}",
        report.token_ids.len(),
        report.str_tokens
    );
    p!(o, "\n{:>4}  {:>8}  {:>10}  token", "rank", "id", "logit");
    for (r, t) in report.top_k.iter().enumerate() {
        p!(o, "{:>4}  {:>8}  {:>10.4}  {:?}", r, t.id, t.logit, t.token);
    }
    p!(o, "\nresidual stream entering each block, last position:");
    p!(o, "{:>5}  {:>10}  first dims", "layer", "L2");
    for r in &report.resid_pre_last {
        let head: Vec<String> = r
            .first16
            .iter()
            .take(4)
            .map(|x| format!("{x:.4}"))
            .collect();
        p!(
            o,
            "{:>5}  {:>10.4}  [{}, ...]",
            r.layer,
            r.l2,
            head.join(", ")
        );
    }
    emit(&o);
    Ok(())
}

/// The `k` most likely next tokens of a logits row `[d_vocab]`, most likely first.
fn top_logits(
    model: &HookedTransformer,
    row: &Tensor,
    k: usize,
) -> candlelens::Result<Vec<TopLogit>> {
    Ok(model
        .top_tokens(row, k)?
        .into_iter()
        .map(|t| TopLogit {
            id: t.id,
            token: t.token,
            logit: t.logit,
        })
        .collect())
}
