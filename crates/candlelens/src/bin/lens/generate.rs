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
    /// Add COEF times the vector of FILE.npy (float32 `[d_model]`, as `lens steering-vector`
    /// writes it) to blocks.L.hook_resid_pre at every position, prompt and generated tokens
    /// alike: L:COEF:FILE.npy (repeatable).
    #[arg(long, value_name = "L:COEF:FILE.npy")]
    steer: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `L:COEF:FILE.npy` of `--steer`: the layer, the coefficient and the vector's file.
fn parse_steer(spec: &str) -> candlelens::Result<(usize, f64, &str)> {
    let bad = |why: &str| {
        LensError::bad_parameter(
            "--steer",
            spec,
            &format!("{why}; write LAYER:COEF:FILE.npy, e.g. --steer 6:4.0:happy.npy"),
        )
    };
    let mut parts = spec.splitn(3, ':');
    let (Some(l), Some(c), Some(f)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("it needs three parts"));
    };
    let layer = l
        .trim()
        .parse()
        .map_err(|_| bad("the layer is not a whole number"))?;
    let coef: f64 = c
        .trim()
        .parse()
        .map_err(|_| bad("the coefficient is not a number"))?;
    if !coef.is_finite() {
        return Err(bad("the coefficient is not finite"));
    }
    if f.is_empty() {
        return Err(bad("the file is missing"));
    }
    Ok((layer, coef, f))
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
    let mut steering = Steering::new();
    for spec in &args.steer {
        let (layer, coef, file) = parse_steer(spec)?;
        let hook = format!("blocks.{layer}.hook_resid_pre");
        let v = SteeringVector::load_npy(file, &hook, &model.cfg)?;
        steering = steering.add(v, coef);
    }
    let mut hooks = steering.hooks(&model.cfg)?;
    let new = model.generate_tokens_with(&tokens, &opts, &mut hooks)?;
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
