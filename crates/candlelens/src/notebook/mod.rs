//! Helpers for notebooks: which model to load (the source's or the embedded stand-in), and
//! errors shown in a form the headless runner recognises.

use std::sync::Arc;

use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};
use crate::load::LoadOptions;

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
    let name = pick_model(source, embedded);
    let device = std::env::var("CANDLELENS_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dtype = std::env::var("CANDLELENS_DTYPE").unwrap_or_else(|_| "f32".into());
    let model =
        HookedTransformer::from_pretrained_with(name, &LoadOptions::parse(&device, &dtype)?)?;
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
    let (_, model) = best.ok_or_else(|| LensError::TooFew {
        what: "embedded candidates".into(),
        need: 1,
        got: 0,
        fix: "name at least one embedded model to measure".into(),
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
