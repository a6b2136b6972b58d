//! Helpers for notebooks: which model to load (the source's or the embedded stand-in), our
//! numbers printed beside the source's, `test_prompt` over a list with a summary table, and
//! the check a corruption passes before a sweep.

use std::sync::Arc;

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::Metric;
use crate::interp::patching::Patcher;
use crate::interp::prompts::TestPromptOptions;
use crate::load::LoadOptions;
use crate::viz::Table;

/// The environment variable that picks the models: `embedded` (default; works offline) or
/// `source` (the models the source experiment used; needs the hub).
pub const MODEL_SET_VAR: &str = "CANDLELENS_MODEL_SET";

/// Whether notebooks should load the sources' models.
pub fn use_source_models() -> bool {
    std::env::var(MODEL_SET_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("source"))
}

/// `source` if `CANDLELENS_MODEL_SET=source`, else `embedded`; prints the choice.
pub fn pick_model<'a>(source: &'a str, embedded: &'a str) -> &'a str {
    let (name, why) = if use_source_models() {
        (source, format!("{MODEL_SET_VAR}=source"))
    } else {
        (
            embedded,
            format!(
                "embedded stand-in for the source's {source}; set {MODEL_SET_VAR}=source for it"
            ),
        )
    };
    println!("Using model {name} ({why})");
    name
}

/// Prints one of our numbers beside the one the source printed for the same step:
/// `"{what}: {ours}   (source: {source})"`. The source's value is for the source's model; with
/// an embedded stand-in the two agree only in kind.
pub fn vs_source(what: &str, ours: impl std::fmt::Display, source: &str) {
    println!("{what}: {ours}   (source: {source})");
}

/// Loads the model [`pick_model`] chooses (device and dtype from `CANDLELENS_DEVICE` /
/// `CANDLELENS_DTYPE`, default cpu / f32) and prints a one-line summary. The model comes shared
/// (an [`Arc`]): every `&HookedTransformer` method works on it as is, and values that keep the
/// model (a [`crate::patching::Patcher`]) clone the handle, not the weights, so they can live
/// in a notebook variable across cells.
///
/// # Errors
/// Loading errors.
pub fn load(source: &str, embedded: &str) -> Result<Arc<HookedTransformer>> {
    load_processed(source, embedded, crate::load::Processing::NONE)
}

/// [`load`] with TransformerLens's weight processing (for a source that loaded its model with
/// TransformerLens's `from_pretrained`, which processes by default:
/// [`Processing::transformer_lens_defaults`](crate::load::Processing::transformer_lens_defaults));
/// the summary says which steps applied.
///
/// # Errors
/// Loading errors; as [`HookedTransformer::process_weights`].
pub fn load_processed(
    source: &str,
    embedded: &str,
    processing: crate::load::Processing,
) -> Result<Arc<HookedTransformer>> {
    let name = pick_model(source, embedded);
    let device = std::env::var("CANDLELENS_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dtype = std::env::var("CANDLELENS_DTYPE").unwrap_or_else(|_| "f32".into());
    let mut opts = LoadOptions::parse(&device, &dtype)?;
    opts.processing = processing;
    let model = HookedTransformer::from_pretrained_with(name, &opts)?;
    if !processing.is_none() {
        println!(
            "weights processed as TransformerLens's: {}",
            model.cfg.processing.describe()
        );
    }
    let c = &model.cfg;
    println!(
        "{}: {} layers, d_model {}, {} heads ({} kv), d_vocab {}, {:.0}M parameters",
        c.architecture,
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.d_vocab,
        c.n_params() as f64 / 1e6
    );
    Ok(Arc::new(model))
}

/// Loads the model a notebook runs when the embedded stand-in is chosen by measurement: with
/// `CANDLELENS_MODEL_SET=source`, the source's model; otherwise every embedded candidate is
/// loaded and scored by `score` (higher is better; the string says what was measured), the
/// scores are printed side by side, and the best is kept (the others are dropped).
///
/// # Errors
/// Loading errors and whatever `score` returns; [`LensError::TooFew`] for no candidate.
pub fn load_best<F>(source: &str, candidates: &[&str], score: F) -> Result<Arc<HookedTransformer>>
where
    F: Fn(&HookedTransformer) -> Result<(f64, String)>,
{
    if use_source_models() {
        return load(source, source);
    }
    let mut best: Option<(f64, Arc<HookedTransformer>)> = None;
    for &name in candidates {
        let model = HookedTransformer::from_pretrained(name)?;
        let (s, what) = score(&model)?;
        println!("measured {name}: {what}");
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, Arc::new(model)));
        }
    }
    let (_, model) = best.ok_or_else(|| {
        LensError::too_few(
            "embedded candidates",
            1,
            0,
            "name at least one embedded model to measure",
        )
    })?;
    let c = &model.cfg;
    println!(
        "Using model {} (the embedded stand-in that measured best; set {MODEL_SET_VAR}=source for the source's {source})",
        c.name
    );
    Ok(model)
}

/// The prompt and answers as this model can score them as single next tokens. Where an answer
/// with a leading space is not one token but is one without it (Gemma and SmolLM2 write " 5"
/// as " " + "5"), the space moves to the end of the prompt; otherwise both stay as given.
/// Returns `(prompt, answers, note)`, the note saying what changed.
pub fn adapt_answers(
    model: &HookedTransformer,
    prompt: &str,
    answers: &[&str],
) -> (String, Vec<String>, Option<String>) {
    let given = || answers.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    if answers.iter().all(|a| model.to_single_token(a).is_ok()) {
        return (prompt.to_string(), given(), None);
    }
    let stripped: Vec<String> = answers
        .iter()
        .map(|a| a.trim_start_matches(' ').to_string())
        .collect();
    if answers.iter().all(|a| a.starts_with(' '))
        && stripped.iter().all(|a| model.to_single_token(a).is_ok())
    {
        let note = format!(
            "{:?} are not single tokens for this tokenizer: scoring {:?} after {:?}",
            answers,
            stripped,
            format!("{prompt} ")
        );
        return (format!("{prompt} "), stripped, Some(note));
    }
    (prompt.to_string(), given(), None)
}

/// Runs `test_prompt` on each `(prompt, answer, what the source printed)`, prints
/// TransformerLens's text for each, and returns one summary table: the answer's tokens and
/// ranks, its probability, our top three and the source's result beside them.
///
/// # Errors
/// As [`HookedTransformer::test_prompt`] (an empty prompt or answer, a prompt longer than the
/// model's context).
pub fn test_prompts(
    model: &HookedTransformer,
    cases: &[(&str, &str, &str)],
    opts: &TestPromptOptions,
    title: &str,
) -> Result<Table> {
    let mut summary = Table::new(
        title,
        [
            "prompt",
            "answer tokens",
            "ranks",
            "P(answer)",
            "our top-3",
            "source",
        ],
    );
    for (prompt, answer, source) in cases {
        let t = model.test_prompt(prompt, answer, opts)?;
        println!("{t}");
        let top3: Vec<String> = t.top_k[0]
            .iter()
            .take(3)
            .map(|x| format!("{:?} {:.1}%", x.token, 100.0 * x.prob))
            .collect();
        let ranks: Vec<String> = t.answer.iter().map(|a| a.rank.to_string()).collect();
        summary.row([
            format!("{prompt:?}"),
            format!("{:?}", t.answer_tokens),
            ranks.join(", "),
            format!("{:.2}%", 100.0 * t.answer_prob()),
            top3.join(", "),
            source.to_string(),
        ]);
    }
    Ok(summary)
}

/// A patcher for `clean` against `corrupt` under `metric`, if the corruption clearly removes the
/// clean answer by the one rule of [`Effect`](crate::interp::metrics::Effect): prints the clean and corrupted metric (beside
/// `source`'s values when given) and the verdict, and returns `None` for a corruption that is
/// not worth a sweep.
///
/// # Errors
/// As [`Patcher::new`].
pub fn checked_patcher(
    model: &Arc<HookedTransformer>,
    clean: &Tokens,
    corrupt: &Tokens,
    metric: Metric,
    source: Option<&str>,
) -> Result<Option<Patcher>> {
    let p = Patcher::new(model, clean, corrupt, metric)?;
    let ours = format!("{:.4}, {:.4}", p.corrupted_metric(), p.clean_metric());
    match source {
        Some(s) => vs_source("Corrupted, clean metric", ours, s),
        None => println!("Corrupted, clean metric: {ours}"),
    }
    let effect = p.effect();
    println!("verdict: {effect}");
    Ok(effect.is_clear().then_some(p))
}
