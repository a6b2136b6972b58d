// -*- coding: utf-8 -*-
// ---
// jupyter:
//   candlelens:
//     expect:
//     - image/svg+xml
//     - text/html
//   jupytext:
//     notebook_metadata_filter: candlelens
//     text_representation:
//       extension: .rs
//       format_name: percent
//       format_version: '1.3'
//       jupytext_version: 1.19.6
//   kernelspec:
//     display_name: Rust
//     language: rust
//     name: rust
// ---

// %% [markdown]
// # The entity-binding circuit: binding-ID vectors
//
// Reproduces `shared/seeds/004_92f6622c4bb0f849.txt` ("Exploring the Entity Binding Circuit with
// SAEs", the part that recreates the binding-ID results of Feng & Steinhardt, 2023, *How do language
// models bind entities in context?*). A context binds two entities to two attributes; the question
// asks for one entity's attribute:
//
// ```text
// Context: Leo lives in the capital city ofVietnam.
// Dean lives in the capital city ofPeru.
// Question: Which city does Dean live in?
// Answer: Dean lives in the city of          → " Lima"
// ```
//
// The binding-ID hypothesis: the residual stream at the entity `E_k` and at its attribute `A_k`
// carries a vector that depends only on `k`, and the model answers by matching the two. The
// difference of means `Δ_E[l] = mean resid_post_l[E_0] − mean resid_post_l[E_1]` (and `Δ_A` at the
// attributes) estimates that vector's change from pair 0 to pair 1 at every layer. The source
// subtracts `Δ_E`, `Δ_A` at `E_1`, `A_1` in every layer and measures the answer on the capital task
// and, with the same vectors, on a fruit task (transfer). This notebook adds the paper's controls:
// random vectors of the same norm, and swapping the binding IDs instead of subtracting.
//
// Models: the source ran Gemma 2 2B-it (`CANDLELENS_MODEL_SET=source`, gated: needs `HF_TOKEN`).
// Offline the stand-in is chosen by measurement: each embedded model runs the clean capital task and
// the one with the best greedy accuracy is kept (both are printed). The source's numbers are quoted
// next to ours; they can only match for the source's model. The prompts are the source's character for
// character — including its missing space in `"capital city of{country}"` (its countries have no
// leading space), which glues the country to "of".

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::binding::{self, BindingBatch, BindingLists, BindingMeans, Evaluation, Intervention, PyRandom, Task};
use candlelens::notebook;

// %%
// the source samples 100 prompts per task (CANDLELENS_BINDING_N overrides)
let n: usize = std::env::var("CANDLELENS_BINDING_N").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
println!("{n} prompts per task");
let all = BindingLists::from_file("../data/entity_binding/lists.json")?;
let model = notebook::load_best("gemma-2-2b-it", &["smollm2-135m", "gemma-3-270m"], |m| {
    let (lists, e) = binding::clean_capital(m, &all, n, 0)?;
    Ok((e.accuracy as f64 + 1e-3 * e.pair_accuracy as f64,
        format!("{} one-token country/capital pairs, capital task greedy accuracy {:.2}, two-way {:.2}, logit diff {:.3}",
            lists.countries.len(), e.accuracy, e.pair_accuracy, e.logit_diff)))
})?;

// %% [markdown]
// ## The lists, filtered to single tokens
//
// `data/entity_binding/lists.json` holds the source's four lists as written (50 names, 50 countries
// with their capitals, 34 fruits); capitals and fruits get a leading space, as in the source. The
// source keeps an entry only if it is one token for the model, and one token with a leading space
// too when it has none (countries and capitals are kept or dropped together). The source printed
// `(37, 37, 49, 29)` for Gemma 2 2B-it: countries, capitals, names, fruits. The source's name list
// has "Sage" twice; it is kept as in the source (a prompt can then name two "Sage"s).

// %%
let lists = all.one_token(&model)?;
println!("({}, {}, {}, {})", lists.countries.len(), lists.capitals.len(), lists.names.len(), lists.fruits.len());
println!("countries: {:?}", lists.countries);
println!("capitals:  {:?}", lists.capitals);
println!("names:     {:?}", lists.names);
println!("fruits:    {:?}", lists.fruits);

// %% [markdown]
// ## Prompts
//
// The source's `get_prompts`, with Python's `random` reproduced: `random.seed(0)` before the
// source's two calls gives exactly these prompts (the source itself was unseeded). Two pairs per
// prompt; the subject and the incorrect attribute are drawn as the source draws them.

// %%
let (capital, fruit) = {
    let mut rng = PyRandom::seed(0); // random.seed(0); then the source's two get_prompts calls
    let c = binding::sample_prompts(&mut rng, n, &lists.names, &lists.countries, Task::Capital, Some(&lists.capitals), 2)?;
    let f = binding::sample_prompts(&mut rng, n, &lists.names, &lists.fruits, Task::Fruit, None, 2)?;
    (BindingBatch::new(&model, c)?, BindingBatch::new(&model, f)?)
};
println!("capital: [{}, {}] tokens (the source, with Gemma's tokenizer and BOS: [100, 56])", capital.tokens.batch(), capital.tokens.max_len());
println!("fruit:   [{}, {}] tokens (the source: [100, 47])", fruit.tokens.batch(), fruit.tokens.max_len());
println!("prompts naming the same entity twice: capital {}, fruit {}",
    capital.prompts.iter().filter(|p| p.entities[0] == p.entities[1]).count(),
    fruit.prompts.iter().filter(|p| p.entities[0] == p.entities[1]).count());
println!("\n{}\n  correct {:?}, incorrect {:?}", capital.prompts[1].text.text, capital.prompts[1].correct, capital.prompts[1].incorrect);
println!("\n{}\n  correct {:?}, incorrect {:?}", fruit.prompts[1].text.text, fruit.prompts[1].correct, fruit.prompts[1].incorrect);

// %% [markdown]
// ## Entity and attribute positions
//
// The source hard-codes positions for Gemma's tokenizer (`E_0, A_0, E_1, A_1` = 18, 25, 28, 35 on
// the capital prompts, 18, 22, 24, 28 on the fruit prompts) and prints the tokens there
// (` Leo Vietnam Dean Peru`, ` Hope  kiwi  Seth  apple`). Here each prompt's positions come from
// the tokenizer's offsets: the token that spans exactly the entry (an entry split into pieces or
// merged with a neighbour is an error naming it). The check prints the tokens found.

// %%
for (name, batch) in [("capital", &capital), ("fruit", &fruit)] {
    println!("{name} prompt 1: {}", batch.describe_positions(&model, 1)?);
    let mut distinct: Vec<&candlelens::binding::BindingPositions> = Vec::new();
    for p in &batch.positions { if !distinct.contains(&p) { distinct.push(p); } }
    println!("  {} distinct position sets over {} prompts", distinct.len(), batch.len());
}
println!("{:?}", model.ids_to_str_tokens(fruit.tokens.row(1)?)?);

// %% [markdown]
// ## Before the intervention
//
// The source: greedy accuracy of the first generated token on the capital task `0.9900`, mean logit
// difference (correct − incorrect answer) on the fruit task `11.4252` (it printed neither the capital
// task's logit difference nor the fruit task's accuracy). "Two-way" is the share of prompts whose
// correct answer outscores the incorrect one; "other answer" the share whose greedy token is the
// incorrect answer. One forward of the capital prompts also records the mean `resid_post` at
// `E_0, A_0, E_1, A_1` in every layer.

// %%
let (means, capital_clean) = BindingMeans::collect(&model, &capital)?;
let fruit_clean = binding::evaluate(&model, &fruit, &mut Hooks::new())?;
// what the model actually says first, for a few prompts
for i in 0..5.min(capital.len()) {
    let p = &capital.prompts[i];
    println!("capital prompt {i}: asks about {:?} ({:?}) -> greedy {:?}; correct {:?}",
        p.entities[p.subject], p.attributes[p.subject],
        model.ids_to_str_tokens(&[capital_clean.predictions[i]])?[0], p.correct);
}
println!("capital task: {capital_clean}");
println!("fruit task:   {fruit_clean}");
/// A plain statement of whether the model does a task, from its clean run: each prompt has two
/// candidate answers, so picking the right one half the time is chance.
fn verdict(task: &str, e: &Evaluation) -> String {
    if e.pair_accuracy >= 0.75 && e.accuracy >= 0.5 {
        format!("this model does the {task} task: greedy accuracy {:.2}, two-way {:.2}", e.accuracy, e.pair_accuracy)
    } else if e.pair_accuracy >= 0.75 {
        format!("this model prefers the right {task} answer over the wrong one (two-way {:.2}) but rarely says it first (greedy accuracy {:.2})", e.pair_accuracy, e.accuracy)
    } else {
        format!("this model cannot do the {task} task: it picks the right one of the two answers at chance (two-way {:.2}; chance 0.5), greedy accuracy {:.2}, other answer {:.2}, logit diff {:.3} — the interventions below probe a model that does not bind",
            e.pair_accuracy, e.accuracy, e.swapped, e.logit_diff)
    }
}
println!("{}", verdict("capital", &capital_clean));
println!("{}", verdict("fruit", &fruit_clean));

// %% [markdown]
// ### Which pair does the model answer?
//
// Accuracy split by which entity the question asks about: a model that binds answers both; one that
// always takes the last pair scores 0 for `E_0` and 1 for `E_1`. The capital prompts are also scored
// with the *country* written in the context as the answer instead of its capital, in case the model
// copies the bound attribute without looking its capital up.

// %%
let capital_countries = capital.attribute_answers(&model)?;
let capital_clean_country = capital_clean.rescore(&capital_countries)?;
println!("capital prompts, country as the answer: {capital_clean_country}");
let mut t = Table::new("Clean runs by the subject's pair", ["task (answer)", "subject", "prompts", "accuracy", "two-way", "other answer", "logit diff"]);
for (name, batch, eval, answers) in [("capital (capital)", &capital, &capital_clean, &capital.answers),
                                     ("capital (country)", &capital, &capital_clean_country, &capital_countries),
                                     ("fruit (fruit)", &fruit, &fruit_clean, &fruit.answers)] {
    for (k, e) in eval.by_subject(batch, answers)?.iter().enumerate() {
        t.row([name.to_string(), format!("E_{k}"), e.per_prompt.len().to_string(), format!("{:.2}", e.accuracy),
               format!("{:.2}", e.pair_accuracy), format!("{:.2}", e.swapped), format!("{:.3}", e.logit_diff)]);
    }
}
t.evcxr_display();

// %% [markdown]
// ## Binding-ID difference vectors
//
// `Δ_E[l]`, `Δ_A[l]`: `[n_layers, d_model]` (the source: `[26, 2304]` for Gemma 2 2B). Their norm per
// layer, and relative to the norm of the mean residual stream at `E_1` / `A_1`.

// %%
let vectors = means.vectors()?;
let (ne, na) = vectors.norms()?;
println!("Δ_E: {:?}, Δ_A: {:?}", vectors.entity.dims(), vectors.attribute.dims());
fn relative(d: &[f32], means: &Tensor) -> candlelens::Result<Vec<f32>> {
    // |Δ[l]| / |mean resid_post at pair 1|
    let base: Vec<f32> = means.i(1)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    Ok(d.iter().zip(&base).map(|(a, b)| a / b).collect())
}
let (re, ra) = (relative(&ne, &means.entity)?, relative(&na, &means.attribute)?);
for l in (0..model.cfg.n_layers).step_by(4.max(model.cfg.n_layers / 6)) {
    println!("layer {l:>2}: |Δ_E| {:8.2} ({:.2} of |E_1|), |Δ_A| {:8.2} ({:.2} of |A_1|)", ne[l], re[l], na[l], ra[l]);
}
let x: Vec<f32> = (0..ne.len()).map(|l| l as f32).collect();
Figure::line(x, vec![("|Δ_E| / |mean resid at E_1|".into(), re.clone()), ("|Δ_A| / |mean resid at A_1|".into(), ra.clone())], None,
    "Relative norm of the binding-ID difference vectors per layer").axes("layer (resid_post)", "relative norm").evcxr_display();

// %% [markdown]
// ## The source's intervention
//
// At every layer `l`: `resid_post_l[E_1] -= Δ_E[l]`, `resid_post_l[A_1] -= Δ_A[l]`. Since
// `Δ = mean[·_0] − mean[·_1]`, this moves the second pair one step further *away* from the first
// pair's binding IDs; entity and attribute move alike. The fruit task reuses the capital task's
// vectors at its own `E_1`, `A_1` positions. The source: capital logit difference `2.8369` after the
// intervention; fruit `Accuracy: 0.62` (two-way) and logit difference `6.7398`.

// %%
let capital_sub = binding::intervene(&model, &capital, &vectors, &Intervention::subtract())?;
let fruit_sub = binding::intervene(&model, &fruit, &vectors, &Intervention::subtract())?;
println!("capital, subtracted: {capital_sub}");
println!("fruit, subtracted (transfer): {fruit_sub}");
println!("Accuracy: {}", fruit_sub.pair_accuracy);
fn f4(x: f32) -> String { format!("{x:.4}") }
// the source's 100 prompts were drawn unseeded; ours are seed 0's: the same recipe, other draws
let mut four = Table::new("The source's printed numbers", ["measurement", "source (Gemma 2 2B-it, n = 100, unseeded prompts)", "this model (seed 0)"]);
four.row(["capital: greedy accuracy, clean".to_string(), "0.9900".into(), f4(capital_clean.accuracy)]);
four.row(["fruit: logit diff, clean".to_string(), "11.4252".into(), f4(fruit_clean.logit_diff)]);
four.row(["capital: logit diff, clean".to_string(), "not printed".into(), f4(capital_clean.logit_diff)]);
four.row(["capital: logit diff, Δ subtracted at E_1, A_1".to_string(), "2.8369".into(), f4(capital_sub.logit_diff)]);
four.row(["capital: logit diff, change from clean".to_string(), "cannot be read (no clean value)".into(), f4(capital_sub.logit_diff - capital_clean.logit_diff)]);
four.row(["fruit: two-way accuracy, capital's Δ subtracted".to_string(), "0.62".into(), f4(fruit_sub.pair_accuracy)]);
four.row(["fruit: logit diff, capital's Δ subtracted".to_string(), "6.7398".into(), f4(fruit_sub.logit_diff)]);
four.evcxr_display();

// %% [markdown]
// ## Controls
//
// - **Random vectors**: at every layer a random direction with the norm of `Δ_E[l]` (`Δ_A[l]`),
//   subtracted the same way. If the binding vectors matter through their direction, this should
//   hurt less than `Δ` (or differently).
// - **Swaps** (the paper's test): `E_0 −= Δ_E, E_1 += Δ_E` exchanges the entities' binding IDs, so
//   the question about `E_k` should get the *other* attribute (accuracy falls, "other answer"
//   rises, the logit difference turns negative); likewise for the attributes; swapping both keeps
//   every pair matched, so the answer should stay.

// %%
let random = vectors.random_like(1)?;
let capital_rand = binding::intervene(&model, &capital, &random, &Intervention::subtract())?;
let fruit_rand = binding::intervene(&model, &fruit, &random, &Intervention::subtract())?;
let capital_swap_e = binding::intervene(&model, &capital, &vectors, &Intervention::swap_entities())?;
let capital_swap_a = binding::intervene(&model, &capital, &vectors, &Intervention::swap_attributes())?;
let capital_swap_b = binding::intervene(&model, &capital, &vectors, &Intervention::swap_both())?;
let capital_runs: Vec<(String, Evaluation)> = vec![
    ("none".into(), capital_clean.clone()), ("subtract Δ at E_1, A_1".into(), capital_sub.clone()),
    ("subtract random vectors, same norms".into(), capital_rand), ("swap entity IDs".into(), capital_swap_e),
    ("swap attribute IDs".into(), capital_swap_a), ("swap both".into(), capital_swap_b),
];
let fruit_runs: Vec<(String, Evaluation)> = vec![
    ("none".into(), fruit_clean.clone()), ("subtract capital's Δ at E_1, A_1".into(), fruit_sub.clone()),
    ("subtract random vectors, same norms".into(), fruit_rand),
];
let mut t = Table::new("Interventions and controls", ["task", "intervention", "accuracy", "two-way", "other answer", "logit diff"]);
for (task, runs) in [("capital", &capital_runs), ("fruit", &fruit_runs)] {
    for (name, e) in runs.iter() {
        t.row([task.to_string(), name.clone(), format!("{:.2}", e.accuracy), format!("{:.2}", e.pair_accuracy), format!("{:.2}", e.swapped), format!("{:.3}", e.logit_diff)]);
    }
}
t.evcxr_display();

// %% [markdown]
// The capital runs scored with the country in the context as the answer (no new forward passes):

// %%
let mut t = Table::new("Capital prompts, the country as the answer", ["intervention", "accuracy", "two-way", "other answer", "logit diff"]);
for (name, e) in capital_runs.iter() {
    let c = e.rescore(&capital_countries)?;
    t.row([name.to_string(), format!("{:.2}", c.accuracy), format!("{:.2}", c.pair_accuracy), format!("{:.2}", c.swapped), format!("{:.3}", c.logit_diff)]);
}
t.evcxr_display();

// %% [markdown]
// ## What the numbers show
//
// Computed from the runs above, for the model actually run (`random.seed(0)`, CPU f32: a re-run
// prints the same numbers).

// %%
{
    println!("lists: {} country/capital pairs, {} names, {} fruits are one token for this tokenizer (the source: 37, 49, 29)",
        lists.countries.len(), lists.names.len(), lists.fruits.len());
    println!("{}", verdict("capital", &capital_clean));
    println!("{}", verdict("fruit", &fruit_clean));
    let by = capital_clean_country.by_subject(&capital, &capital_countries)?;
    if capital_clean.accuracy < 0.5 {
        println!("on the capital prompts it names a country from the context {:.0}% of the time (right one {:.2}, other {:.2}); by the pair asked about: {}",
            100.0 * (capital_clean_country.accuracy + capital_clean_country.swapped), capital_clean_country.accuracy, capital_clean_country.swapped,
            by.iter().enumerate().map(|(k, e)| format!("E_{k} {:.2}", e.accuracy)).collect::<Vec<_>>().join(", "));
    }
    let d = |a: &Evaluation, b: &Evaluation| format!("logit diff {:.2} → {:.2}, greedy accuracy {:.2} → {:.2}, two-way {:.2} → {:.2}",
        a.logit_diff, b.logit_diff, a.accuracy, b.accuracy, a.pair_accuracy, b.pair_accuracy);
    println!("subtracting Δ, capital: {} (the source after: logit diff 2.84)", d(&capital_runs[0].1, &capital_runs[1].1));
    println!("subtracting Δ, fruit (transfer): {} (the source: 11.43 → 6.74, two-way 0.62 after)", d(&fruit_runs[0].1, &fruit_runs[1].1));
    println!("random vectors of the same norms, capital: {}; fruit: {}", d(&capital_runs[0].1, &capital_runs[2].1), d(&fruit_runs[0].1, &fruit_runs[2].1));
    let rel: Vec<f32> = re.iter().chain(&ra).copied().collect();
    println!("|Δ| is {:.0}–{:.0}% of the residual norm across layers", 100.0 * rel.iter().copied().fold(f32::INFINITY, f32::min), 100.0 * rel.iter().copied().fold(0.0, f32::max));
    let (c0, ce) = (capital_clean_country.clone(), capital_runs[3].1.rescore(&capital_countries)?);
    println!("swapping entity IDs (country as the answer): accuracy {:.2} → {:.2}, other answer {:.2} → {:.2}, logit diff {:.2} → {:.2}{}",
        c0.accuracy, ce.accuracy, c0.swapped, ce.swapped, c0.logit_diff, ce.logit_diff,
        if ce.logit_diff < c0.logit_diff && ce.swapped > c0.swapped { " — towards the other pair, as the binding-ID hypothesis predicts" } else { " — not the predicted swap" });
    let both = capital_runs[5].1.rescore(&capital_countries)?;
    println!("swapping both (should keep the answer): country accuracy {:.2} → {:.2}", c0.accuracy, both.accuracy);
};

// %% [markdown]
// **A confound in the source's capital template.** `E_0` follows "Context: " and is the spaced token
// (the source's " Leo"), while `E_1` follows a newline and is the unspaced one (the source's "Dean").
// `Δ_E` therefore mixes the binding-ID difference with the difference between the two spellings'
// embeddings, and the fruit template, where both entities are spaced, receives that mixture on
// transfer. A cleaner estimate would put the same spelling in both places.
//
// `CANDLELENS_MODEL_SET=source` runs the same cells on Gemma 2 2B-it. Those numbers can be set beside
// the source's 0.99 / 11.43 / 2.84 / 0.62 and 6.74; they will not equal them exactly, because the
// source's prompts were unseeded.
