//! `lens generate`: continues a prompt (or a file of prompts, run as one batch) with the KV
//! cache, greedy or sampled.

use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, Input};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    input: Input,
    /// How many tokens to add at most.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// 0 (default) is greedy; otherwise sample from logits divided by it.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to p (in (0, 1]).
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed of each prompt's sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past the model's EOS token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One prompt's continuation: the prompt's ids, then the new ones; the new text.
#[derive(Serialize)]
struct Continuation {
    token_ids: Vec<u32>,
    new_token_ids: Vec<u32>,
    text: String,
}

/// What `lens generate --json` prints: the first prompt's continuation at the top level, and
/// every prompt's under `prompts`.
#[derive(Serialize)]
struct GenerateReport {
    model: String,
    token_ids: Vec<u32>,
    text: String,
    prompts: Vec<Continuation>,
}

pub fn generate(args: &GenerateArgs) -> candlelens::Result<()> {
    let model = args.input.load()?;
    let tokens = args.input.tokens(&model)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_at_eos: !args.ignore_eos,
    };
    let new = model.generate_tokens(&tokens, &opts)?;
    let mut prompts = Vec::with_capacity(new.len());
    for (prompt, new) in tokens.rows().iter().zip(new) {
        let text = model.to_string(&new)?;
        let mut token_ids = prompt.clone();
        token_ids.extend(&new);
        prompts.push(Continuation {
            token_ids,
            new_token_ids: new,
            text,
        });
    }
    if args.json {
        let first = &prompts[0];
        let report = GenerateReport {
            model: model.cfg.name.clone(),
            token_ids: first.token_ids.clone(),
            text: first.text.clone(),
            prompts,
        };
        emit_json(&report, true);
    } else {
        let mut o = String::new();
        for (row, c) in tokens.rows().iter().zip(&prompts) {
            p!(o, "{}{}", model.to_string(row)?, c.text);
        }
        emit(&o);
    }
    Ok(())
}
