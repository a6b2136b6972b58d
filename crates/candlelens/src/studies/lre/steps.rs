//! The LRE notebooks' steps (seed 001), shared by the five per-model notebooks: each step runs
//! on states cached once ([`LreStates::collect`]), prints what the source printed for it (and
//! what this crate adds), and returns its results for the next step.

use std::fmt::Write;

use super::eval::{evaluate, layer_sweep, Causality, LreEval};
use super::operator::LreOperator;
use super::relation::Relation;
use super::sources::{SourceComparison, SourceTable};
use super::states::{Candidates, LreStates, ReadAt};
use crate::engine::hooks::layer_from_module_name;
use crate::engine::model::HookedTransformer;
use crate::error::Result;
use crate::viz::Figure;

/// The source's layers for one model notebook (its module names, e.g. `model.layers.15`, out of
/// `source_depth` layers) as layers of `model`: the same indices when the depths agree, the same
/// fractions of depth for a stand-in of another depth.
///
/// # Errors
/// [`crate::LensError::UnknownHook`] for a module name without a layer index.
pub fn source_layers(
    model: &HookedTransformer,
    modules: &[&str],
    source_depth: usize,
) -> Result<Vec<usize>> {
    modules
        .iter()
        .map(|m| {
            layer_from_module_name(m, source_depth).map(|l| l * model.cfg.n_layers / source_depth)
        })
        .collect()
}

/// The regression estimator's counts at one layer and one read position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceCount {
    /// The layer (`blocks.{layer}.hook_resid_post`).
    pub layer: usize,
    /// Where `h` is read.
    pub read_at: ReadAt,
    /// The source's count over the held-out subjects, `(k, n)` (its notebooks' `k/16`).
    pub held_out: (usize, usize),
    /// The same operator counted over all subjects, training ones included (its README's
    /// `28/38`).
    pub all: (usize, usize),
}

/// The source's evaluation: at every layer in `layers`, the regression operator is fitted on
/// `train` and evaluated on `test`, with `h` at the prompt's last token (the source's printed
/// runs; its per-subject table is printed) and at the subject's last token. Prints one count line
/// per layer and position: held out and over all subjects.
///
/// # Errors
/// As [`LreOperator::fit_regression`] and [`evaluate`].
pub fn source_evaluation(
    model: &HookedTransformer,
    train: &LreStates,
    test: &LreStates,
    layers: &[usize],
) -> Result<Vec<SourceCount>> {
    let mut counts = Vec::new();
    for &layer in layers {
        for read_at in [ReadAt::PromptLast, ReadAt::SubjectLast] {
            let (tr, te) = (train.read_at(read_at), test.read_at(read_at));
            let op = LreOperator::fit_regression(model, &tr, layer)?;
            let held = evaluate(model, &op, &te)?;
            if read_at == ReadAt::PromptLast {
                println!("{}", held.table());
            }
            let c = SourceCount {
                layer,
                read_at,
                held_out: held.source_count(),
                all: evaluate(model, &op, &tr.concat(&te)?)?.source_count(),
            };
            println!(
                "layer {layer}, h at {read_at}: Faithfulness {}/{} held out, {}/{} over all subjects",
                c.held_out.0, c.held_out.1, c.all.0, c.all.1
            );
            counts.push(c);
        }
        println!();
    }
    Ok(counts)
}

/// The source's train and test states under `template`: its split of `relation` (seed 42, 60 %
/// train), `h` at the prompt's last token, every layer from one forward per prompt set.
fn source_states(
    model: &HookedTransformer,
    relation: &Relation,
    template: &str,
) -> Result<(LreStates, LreStates)> {
    let (train, test) = relation.split_like_source(42, 0.6);
    let cands = Candidates::new(model, &relation.objects(), template)?;
    let train = LreStates::collect(model, &train, template, &cands)?.read_at(ReadAt::PromptLast);
    let test = LreStates::collect(model, &test, template, &cands)?.read_at(ReadAt::PromptLast);
    Ok((train, test))
}

/// The source's evaluation with one template at one layer, `h` at the prompt's last token, as
/// its notebooks ran it: collects the states of `train` and `test` under `template`, fits the
/// regression operator at `layer` and evaluates it on `test`.
///
/// # Errors
/// As [`LreStates::collect`], [`LreOperator::fit_regression`] and [`evaluate`].
pub fn source_run(
    model: &HookedTransformer,
    relation: &Relation,
    template: &str,
    layer: usize,
) -> Result<LreEval> {
    let (train, test) = source_states(model, relation, template)?;
    evaluate(
        model,
        &LreOperator::fit_regression(model, &train, layer)?,
        &test,
    )
}

/// Every evaluation of the source's transcribed `table` rerun on `model` ([`source_run`]; the
/// states of each template collected once, every layer read from them) and compared with it
/// subject by subject ([`SourceEvaluation::compare`](super::SourceEvaluation::compare)): prints
/// each side-by-side table and a summary line, and returns the comparisons in the table's order.
///
/// # Errors
/// As [`source_run`]; [`crate::LensError::UnknownHook`] for a module without a layer index;
/// [`crate::LensError::Mismatch`] for subjects that are not the source's.
pub fn versus_source_table(
    model: &HookedTransformer,
    relation: &Relation,
    table: &SourceTable,
    source_depth: usize,
) -> Result<Vec<SourceComparison>> {
    let mut states: Vec<(&str, (LreStates, LreStates))> = Vec::new();
    let mut out = Vec::new();
    for e in &table.evaluations {
        let layer = source_layers(model, &[e.module.as_str()], source_depth)?[0];
        if !states.iter().any(|(t, _)| *t == e.template) {
            states.push((&e.template, source_states(model, relation, &e.template)?));
        }
        let (_, (train, test)) = states
            .iter()
            .find(|(t, _)| *t == e.template)
            .expect("collected above");
        let ours = evaluate(
            model,
            &LreOperator::fit_regression(model, train, layer)?,
            test,
        )?;
        let c = e.compare(&ours)?;
        println!(
            "--- {} (blocks.{layer}.hook_resid_post), {:?} ---\n{}predicted word the source's for {}/{} subjects; the source's count {} (printed {}), ours {}/{}\n",
            e.module,
            e.template,
            c.table,
            c.agree,
            c.n,
            c.source_correct,
            e.printed_score,
            c.ours_correct,
            c.n
        );
        out.push(c);
    }
    Ok(out)
}

/// The source's count as a fraction.
fn rate(e: &LreEval) -> f32 {
    let (k, n) = e.source_count();
    k as f32 / n.max(1) as f32
}

/// Faithfulness per layer: the regression estimator at every layer, with `h` at both positions
/// (no further forward passes). Returns the sweep at the subject's last token and a line figure
/// of the source's count at both positions and of faithfulness to the model.
///
/// # Errors
/// As [`layer_sweep`].
pub fn faithfulness_per_layer(
    model: &HookedTransformer,
    train: &LreStates,
    test: &LreStates,
) -> Result<(Vec<LreEval>, Figure)> {
    let n = model.cfg.n_layers;
    let sweep = |at: ReadAt| layer_sweep(model, &train.read_at(at), &test.read_at(at), 0..n);
    let (at_prompt, at_subject) = (sweep(ReadAt::PromptLast)?, sweep(ReadAt::SubjectLast)?);
    let x: Vec<f32> = (0..n).map(|l| l as f32).collect();
    let figure = Figure::line(
        x,
        vec![
            (
                "Faithfulness (the source's count), h at the prompt's last token".into(),
                at_prompt.iter().map(rate).collect(),
            ),
            (
                "Faithfulness (the source's count), h at the subject's last token".into(),
                at_subject.iter().map(rate).collect(),
            ),
            (
                "LRE = the model's own answer, subject's last token".into(),
                at_subject.iter().map(|e| e.faithfulness() as f32).collect(),
            ),
        ],
        None,
        "LRE (regression) faithfulness per layer",
    )
    .axes("layer", "fraction of test subjects");
    Ok((at_subject, figure))
}

/// Everything [`observations`] reads.
pub struct Results<'a> {
    /// The held-out subjects' states.
    pub test: &'a LreStates,
    /// The relation's objects.
    pub candidates: &'a Candidates,
    /// [`faithfulness_per_layer`]'s sweep.
    pub sweep: &'a [LreEval],
    /// The mean-Jacobian operator's evaluation on `test`.
    pub jacobian: &'a LreEval,
    /// Its causality.
    pub causality: &'a Causality,
    /// The Jacobian and the regression operator on the capital relation.
    pub capitals: (&'a LreEval, &'a LreEval),
}

/// What a run shows, stated from its numbers (the notebooks' closing summary): the model's own
/// answers against the labels, the best regression layer against faithfulness to the model, the
/// Jacobian's faithfulness, causality against its random control, and the capitals.
pub fn observations(r: &Results) -> String {
    let mut out = String::new();
    let c = r.candidates;
    let n = r.test.len();
    let agree = r
        .test
        .items
        .iter()
        .filter(|s| c.objects[s.model_candidate()] == s.sample.object)
        .count();
    let answers: Vec<String> = c
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let k = r
                .test
                .items
                .iter()
                .filter(|s| s.model_candidate() == i)
                .count();
            format!("{o:?} for {k}")
        })
        .collect();
    let _ = writeln!(
        out,
        "the model's own answer: {} of the {n} test subjects; it agrees with the dataset's labels on {agree}/{n}",
        answers.join(", ")
    );
    if let Some(best) = r.sweep.iter().max_by(|a, b| rate(a).total_cmp(&rate(b))) {
        let (k, m) = best.source_count();
        let (f, _) = best.faithful();
        let _ = writeln!(
            out,
            "regression, best layer {}: Faithfulness {k}/{m} (the source's count), faithful to the model on {f}/{m}{}",
            best.layer,
            if f < k { ": it learns the labels more than the model's answers" } else { "" }
        );
    }
    let (f, m) = r.jacobian.faithful();
    let _ = writeln!(
        out,
        "mean Jacobian at layer {}: faithful to the model {f}/{m} over the candidates, {:.0}% over the vocabulary",
        r.jacobian.layer,
        100.0 * r.jacobian.vocab_faithfulness()
    );
    let (e, re) = (r.causality.efficacy(), r.causality.random_efficacy());
    let _ = writeln!(
        out,
        "causality at layer {}: the edit flips {:.0}% of answers, random edits of the same size {:.0}%{}",
        r.causality.layer,
        100.0 * e,
        100.0 * re,
        if e > re { "" } else { " — not established for this model" }
    );
    let _ = writeln!(
        out,
        "capitals never seen in training: the Jacobian operator names {:.0}% (as its top candidate), regression {:.0}%",
        100.0 * r.capitals.0.accuracy(),
        100.0 * r.capitals.1.accuracy()
    );
    out
}
