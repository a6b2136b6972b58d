"""Writes the notebooks under notebooks/ from the cell sources below (kept in Python so the
notebooks' JSON stays tidy and reviewable). Run by hand after editing: python3 scripts/make_notebooks.py"""

import json
from pathlib import Path

md = lambda s: {"cell_type": "markdown", "metadata": {}, "source": s.strip("\n")}
code = lambda s: {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s.strip("\n")}

TOUR = [
    md("""
# A tour of Candlelens

The TransformerLens workflow in Rust: load a model, look at its predictions, cache every
activation, read the residual stream through the logit lens, patch activations, and look at
attention patterns. This notebook runs offline on an embedded model (Gemma 3 270M) and doubles as
the project's smoke test. The prompt is the pet analogy of the patching study
(`notebooks/pet-analogy-patching.ipynb` reproduces it in full).

Set `CANDLELENS_MODEL_SET=source` to run GPT-2 small instead (needs the Hugging Face hub).
"""),
    code("""
:dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::metrics;
"""),
    md("""
## Load a model

`notebook::load` picks the source's model or the embedded stand-in and prints which it used.
"""),
    code("""
let model = candlelens::notebook::load("gpt2", "gemma-3-270m")?;
const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
println!("{:?}", model.to_str_tokens(PET, None)?);
"""),
    md("""
## What does the model predict?

`test_prompt` shows the answer's rank and the top-10 next tokens, as TransformerLens prints them.
The right answer is " Peb" (the first token of " Pebbles"); the distractor is " Rachel".
"""),
    code("""
model.test_prompt(PET, " Peb", None, false, 10)?.evcxr_display();
"""),
    md("""
## Cache every activation and read the logit lens

`run_with_cache` keeps every hook point under its TransformerLens name. The logit lens projects
the residual stream, as it accumulates layer by layer, onto the direction
`W_U[" Peb"] - W_U[" Rachel"]` (through the final norm, with its scale frozen at the cached value):
where does the model decide?
"""),
    code("""
let tokens = model.to_tokens(PET, None)?;
let pairs = [(model.to_single_token(" Peb")?, model.to_single_token(" Rachel")?)];
let (logits, cache) = model.run_with_cache(&tokens, None)?;
let diff = metrics::logit_diff(&model.gather_last(&logits, &tokens)?, &pairs)?;
println!("logit difference ' Peb' - ' Rachel': {:.4}", diff[0]);
println!("blocks.0.attn.hook_pattern: {:?}", cache.get("blocks.0.attn.hook_pattern")?.dims());
let dirs = model.logit_diff_directions(&pairs)?;
let acc = cache.accumulated_resid(None, true, Pos::Last)?;
let lens = model.logit_attribution(&cache, &acc, Pos::Last, &dirs)?;
let x: Vec<f32> = (0..lens.values.len()).map(|i| i as f32 / 2.0).collect();
Figure::line(x, vec![("logit diff".into(), lens.values.clone())], Some(lens.labels.clone()),
    "Logit difference from the accumulated residual stream")
    .axes("layer", "logit diff").evcxr_display();
"""),
    md("""
## Activation patching

Swap the last two sentences ("Pebbles is a cat. Rachel is a human.") to corrupt the prompt, then put
the clean residual stream back one (layer, position) at a time. 1 means the clean logit difference
is fully restored, 0 means no effect. The sweep is exact and only recomputes what a patch can change.
"""),
    code("""
const SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";
let corrupt = model.to_tokens(SWAPPED, None)?;
let metric_pairs = pairs.to_vec();
let metric: candlelens::patching::Metric = Box::new(move |l| Ok(metrics::mean(&metrics::logit_diff(l, &metric_pairs)?)));
let grid = Patcher::new(&model, &tokens, &corrupt, metric)?.sweep(PatchTarget::ResidPre)?;
println!("clean {:.3}, corrupted {:.3}; sweep {:.1} s ({:.0} forward-equivalents instead of {})",
    grid.clean, grid.corrupted, grid.seconds, grid.forward_equivalents, grid.naive_forwards);
let labels: Vec<String> = model.ids_to_str_tokens(tokens.row(0))?.iter().enumerate()
    .map(|(i, t)| format!("{t}_{i}")).collect();
Figure::heatmap(grid.values.clone(), labels, grid.row_labels.clone(), "Logit Difference From Patched Residual Stream")
    .axes("Position", "Layer").evcxr_display();
"""),
    md("""
## Attention patterns

Which heads write the answer? Per-head direct logit attribution ranks them; the viewer shows the
patterns of the top three (pick a head, hover a cell).
"""),
    code("""
let heads = cache.stack_head_results(&model, None, Pos::Last)?;
let attr = model.logit_attribution(&cache, &heads, Pos::Last, &dirs)?;
let mut order: Vec<usize> = (0..attr.values.len()).collect();
order.sort_by(|&a, &b| attr.values[b].total_cmp(&attr.values[a]));
let top: Vec<usize> = order.into_iter().take(3).collect();
for &i in &top { println!("{}: {:+.3}", attr.labels[i], attr.values[i]); }
let str_tokens = model.ids_to_str_tokens(tokens.row(0))?;
let mut patterns = Vec::new();
for &i in &top {
    let (l, h) = (i / model.cfg.n_heads, i % model.cfg.n_heads);
    let p = cache.at(HookPoint::Pattern(l))?.i((0, h))?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    patterns.push(p);
}
let labels: Vec<String> = top.iter().map(|&i| attr.labels[i].clone()).collect();
AttentionView::new("Top heads by direct logit attribution", str_tokens, patterns, labels)?.evcxr_display();
"""),
    md("""
## Where next

- `notebooks/` holds one notebook per source experiment.
- `cargo doc --open -p candlelens` documents every function with TransformerLens's names and shapes.
"""),
]



PET = [
    md("""
# The pet-analogy patching study

Reproduces `shared/seeds/002_a10da29a1469ef09.txt` ("Analyze GPT-2-Small / GPT-2-Large"): the
model's loss on a number sequence, `test_prompt` on every prompt the source tries, the logit
difference and its logit lens, direct logit attribution per layer and per head, the attention
patterns of the heads that matter most, and activation patching of the residual stream for four
corruptions.

Models: the source ran GPT-2 small and GPT-2 large. Offline this notebook runs the embedded
Gemma 3 270M; `CANDLELENS_MODEL_SET=source` runs GPT-2 small, and
`CANDLELENS_PET_SOURCE=gpt2-large` picks the large one. Numbers the source printed are quoted
next to ours; they match only for the source's model.
"""),
    code("""
:dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::{metrics, notebook};
"""),
    code("""
let source = std::env::var("CANDLELENS_PET_SOURCE").unwrap_or_else(|_| "gpt2".to_string());
let model = notebook::load(&source, "gemma-3-270m")?;
"""),
    md("""
## Loss

The source: `Model loss: 2.1871` (GPT-2 small) and `2.5091` (GPT-2 large) on "1 2 3 4", with BOS.
"""),
    code("""
let loss = model.loss(&model.to_tokens("1 2 3 4", Some(true))?)?;
println!("Model loss: {loss:.4}");
"""),
    md("""
## Test prompts

Every prompt the source tries, with its answer. Where an answer like `" 5"` is two tokens for this
tokenizer (Gemma writes digits one by one), the space moves into the prompt and the digit is the
answer; the note says so. The full TransformerLens-style output is printed; the table sums it up.
"""),
    code("""
let tests: &[(&str, &str)] = &[
    ("1 2 3 4", " 5"),
    ("2 4", " 6"),
    ("2 4 6", " 8"),
    ("2 4 6 8", " 10"),
    ("Monday Tuesday Wednesday", " Thursday"),
    ("Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is", " Peb"),
    ("Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is", " Peb"),
    ("When John and Mary went to the shops, John gave the bag to", " Mary"),
    ("When Mary and John went to the shops, John gave the bag to", " Mary"),
    ("Mary is a teacher. Fido is a student. The child is Fido. Pebbles is a student. Rachel is a teacher. The child is", " Peb"),
    ("Mary. Fido. Fido. Pebbles. Rachel. ", " Rachel"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is Y. Rachel is X. Z is ", " Peb"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is Y. Rachel is X. Z is", " Peb"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is X. Rachel is Y. Z is", " Peb"),
    ("Mary is the hero. Fido is the mentor. The main character is Mary. Pebbles is the hero. Rachel is the mentor. The main character is", " Peb"),
    ("Mary is X. Fido is Y. Z is Fido. John is Y. Larry is X. Z is John. Pebbles is X. Rachel is Y. Z is", " Peb"),
    ("The human is Mary. The dog is Fido. The pet is Fido. The dog is Pebbles. The human is Rachel. The pet is", " Peb"),
    ("The human is Mary. The dog is Fido. The pet is Fido. The human is Rachel. The dog is Pebbles. The pet is", " Peb"),
];
let mut summary = Table::new("test_prompt summary", ["prompt", "answer", "rank", "prob", "top-3"]);
for (prompt, answer) in tests {
    let (p, a, note) = notebook::adapt_answers(&model, prompt, &[answer]);
    if let Some(n) = note { println!("note: {n}"); }
    let t = model.test_prompt(&p, &a[0], Some(true), true, 10)?;
    println!("{t}");
    let top3: Vec<String> = t.top_k[0].iter().take(3).map(|x| format!("{:?}", x.token)).collect();
    summary.row([format!("{p:?}"), format!("{:?}", t.answer_tokens.concat()), t.answer[0].rank.to_string(),
                 format!("{:.1}%", t.answer[0].prob * 100.0), top3.join(" ")]);
}
summary.evcxr_display();
"""),
    md("""
## Number sequence: logit difference and logit lens

The source compares `" 5"` with `" Next"` after "1 2 3 4" (GPT-2 small: `5.4894`). The logit lens
reads the accumulated residual stream, final norm applied with its cached scale, along
`W_U[correct] - W_U[incorrect]`.
"""),
    code("""
/// Logit difference, logit lens and the attributions one analysis section needs.
struct Analysis { tokens: Tokens, cache: ActivationCache, pairs: Vec<(u32, u32)>, dirs: Tensor }

fn analyse(model: &HookedTransformer, prompts: &[&str], answers: &[(&str, &str)]) -> candlelens::Result<Analysis> {
    let tokens = model.to_tokens(prompts, Some(true))?;
    let pairs = answers.iter()
        .map(|(c, i)| Ok((model.to_single_token(c)?, model.to_single_token(i)?)))
        .collect::<candlelens::Result<Vec<_>>>()?;
    let (logits, cache) = model.run_with_cache(&tokens, None)?;
    let per_prompt = metrics::logit_diff(&model.gather_last(&logits, &tokens)?, &pairs)?;
    println!("Per prompt logit difference: {per_prompt:?}");
    println!("Average logit difference: {:.4}", metrics::mean(&per_prompt));
    let dirs = model.logit_diff_directions(&pairs)?;
    Ok(Analysis { tokens, cache, pairs, dirs })
}

fn logit_lens(model: &HookedTransformer, a: &Analysis, title: &str) -> candlelens::Result<Figure> {
    let acc = a.cache.accumulated_resid(None, true, Pos::Last)?;
    let lens = model.logit_attribution(&a.cache, &acc, Pos::Last, &a.dirs)?;
    if let Some(n) = &lens.note { println!("note: {n}"); }
    let x: Vec<f32> = (0..lens.values.len()).map(|i| i as f32 / 2.0).collect();
    Ok(Figure::line(x, vec![("logit diff".into(), lens.values)], Some(lens.labels), title).axes("layer", "logit diff"))
}

let (seq_prompt, seq_answers, note) = notebook::adapt_answers(&model, "1 2 3 4", &[" 5", " Next"]);
if let Some(n) = note { println!("note: {n}"); }
let seq = analyse(&model, &[seq_prompt.as_str()], &[(seq_answers[0].as_str(), seq_answers[1].as_str())])?;
logit_lens(&model, &seq, "Logit Difference From Accumulate Residual Stream")?.evcxr_display();
"""),
    md("""
### Per-layer attribution

Each attention and MLP layer's direct contribution to the logit difference (`decompose_resid`).
"""),
    code("""
fn per_layer(model: &HookedTransformer, a: &Analysis, title: &str) -> candlelens::Result<Figure> {
    let dec = a.cache.decompose_resid(None, true, Pos::Last)?;
    let attr = model.logit_attribution(&a.cache, &dec, Pos::Last, &a.dirs)?;
    for (label, _, v) in attr.top(3) { println!("largest: {label} {v:+.3}"); }
    for (label, _, v) in attr.bottom(2) { println!("most negative: {label} {v:+.3}"); }
    Ok(Figure::bar(attr.labels, attr.values, title).axes("", "logit diff"))
}
per_layer(&model, &seq, "Logit Difference From Each Layer")?.evcxr_display();
"""),
    md("""
### Per-head attribution
"""),
    code("""
fn per_head(model: &HookedTransformer, a: &Analysis) -> candlelens::Result<candlelens::analysis::Attribution> {
    let heads = a.cache.stack_head_results(model, None, Pos::Last)?;
    model.logit_attribution(&a.cache, &heads, Pos::Last, &a.dirs)
}
fn head_heatmap(model: &HookedTransformer, attr: &candlelens::analysis::Attribution) -> candlelens::Result<Figure> {
    let heads: Vec<String> = (0..model.cfg.n_heads).map(|h| h.to_string()).collect();
    let layers: Vec<String> = (0..model.cfg.n_layers).map(|l| l.to_string()).collect();
    Ok(Figure::heatmap(attr.grid(model.cfg.n_layers, model.cfg.n_heads)?, heads, layers, "Logit Difference From Each Head").axes("Head", "Layer"))
}
let seq_heads = per_head(&model, &seq)?;
head_heatmap(&model, &seq_heads)?.evcxr_display();
"""),
    md("""
### Attention patterns of the top heads

The three heads with the largest positive and the three with the most negative direct logit
attribution (pick a head, hover a cell).
"""),
    code("""
fn head_ids(model: &HookedTransformer, picked: &[(String, usize, f32)]) -> Vec<(usize, usize)> {
    picked.iter().map(|(_, i, _)| (i / model.cfg.n_heads, i % model.cfg.n_heads)).collect()
}
println!("top positive: {:?}", seq_heads.top(3));
AttentionView::from_cache(&model, &seq.cache, 0, &head_ids(&model, &seq_heads.top(3)), "Top 3 Positive Logit Attribution Heads")?.evcxr_display();
"""),
    code("""
println!("top negative: {:?}", seq_heads.bottom(3));
AttentionView::from_cache(&model, &seq.cache, 0, &head_ids(&model, &seq_heads.bottom(3)), "Top 3 Negative Logit Attribution Heads")?.evcxr_display();
"""),
    md("""
## The pet analogy

"... Rachel is a human. Pebbles is a cat. The pet of this family is" → `" Peb"` rather than
`" Rachel"` (the source: GPT-2 small `5.5811`, GPT-2 large `4.5368`).
"""),
    code("""
const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
let pet = analyse(&model, &[PET], &[(" Peb", " Rachel")])?;
logit_lens(&model, &pet, "Logit Difference From Accumulate Residual Stream")?.evcxr_display();
"""),
    code("""
per_layer(&model, &pet, "Logit Difference From Each Layer")?.evcxr_display();
"""),
    code("""
let pet_heads = per_head(&model, &pet)?;
head_heatmap(&model, &pet_heads)?.evcxr_display();
"""),
    code("""
println!("top positive: {:?}", pet_heads.top(3));
AttentionView::from_cache(&model, &pet.cache, 0, &head_ids(&model, &pet_heads.top(3)), "Top 3 Positive Logit Attribution Heads")?.evcxr_display();
"""),
    code("""
println!("top negative: {:?}", pet_heads.bottom(3));
AttentionView::from_cache(&model, &pet.cache, 0, &head_ids(&model, &pet_heads.bottom(3)), "Top 3 Negative Logit Attribution Heads")?.evcxr_display();
"""),
    md("""
## Activation patching of the residual stream

Run the corrupted prompt, put the clean `resid_pre` back at one (layer, position), and measure
`(patched - corrupted) / (clean - corrupted)` of the logit difference: 1 = the clean answer is
fully restored, 0 = no effect. The sweep is exact (tested equal to one forward per cell).

### Corrupt by swapping sentences

"Pebbles is a cat. Rachel is a human." — the source (GPT-2 large): corrupted `-2.9183`, clean
`4.5368`; "early and middle layers attend negatively to Rachel, positively to Pebbles (esp
'bles'), and then attention moves so that later layers attend to the last token 'is'".
"""),
    code("""
fn patch_resid(model: &HookedTransformer, clean: &[&str], corrupt: &[&str], answers: &[(&str, &str)], title: &str) -> candlelens::Result<Figure> {
    let clean_t = model.to_tokens(clean, Some(true))?;
    let corrupt_t = model.to_tokens(corrupt, Some(true))?;
    let pairs = answers.iter()
        .map(|(c, i)| Ok((model.to_single_token(c)?, model.to_single_token(i)?)))
        .collect::<candlelens::Result<Vec<_>>>()?;
    let metric: candlelens::patching::Metric = Box::new(move |l| Ok(metrics::mean(&metrics::logit_diff(l, &pairs)?)));
    let grid = Patcher::new(model, &clean_t, &corrupt_t, metric)?.sweep(PatchTarget::ResidPre)?;
    println!("Corrupted Average Logit Diff {:.4}", grid.corrupted);
    println!("Clean Average Logit Diff {:.4}", grid.clean);
    if (grid.clean - grid.corrupted).abs() < 0.1 * grid.clean.abs().max(1.0) {
        println!("warning: this corruption barely moves the logit difference for this model, so the normalised scores divide by a small number and are not meaningful");
    }
    let labels: Vec<String> = model.ids_to_str_tokens(clean_t.row(0))?.iter().enumerate().map(|(i, t)| format!("{t}_{i}")).collect();
    let strongest: Vec<String> = grid.strongest(5).iter()
        .map(|(l, p, v)| format!("layer {l} at {}: {v:+.2}", labels[p.parse::<usize>().unwrap_or(0)])).collect();
    println!("strongest cells: {}", strongest.join("; "));
    println!("sweep {:.1} s, {:.0} forward-equivalents instead of {}", grid.seconds, grid.forward_equivalents, grid.naive_forwards);
    Ok(grid.figure(title, Some(labels)))
}
patch_resid(&model, &[PET],
    &["Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is"],
    &[(" Peb", " Rachel")], "Logit Difference From Patched Residual Stream (sentence swap)")?.evcxr_display();
"""),
    md("""
### Corrupt by switching words

"Rachel is a cat. Pebbles is a human." — the words swap, the sentence order stays.
"""),
    code("""
patch_resid(&model, &[PET],
    &["Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a cat. Pebbles is a human. The pet of this family is"],
    &[(" Peb", " Rachel")], "Logit Difference From Patched Residual Stream (word swap)")?.evcxr_display();
"""),
    md("""
### The IOI batch the source's patching demo came from

Eight prompts, each corrupted by swapping the subject's name with its partner's. Names that are
several tokens for this tokenizer would break the pairing, so they are checked first.
"""),
    code("""
let formats = ["When John and Mary went to the shops,{} gave the bag to", "When Tom and James went to the park,{} gave the ball to",
               "When Dan and Sid went to the shops,{} gave an apple to", "After Martin and Amy went to the park,{} gave a drink to"];
let names = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")];
let mut ioi_prompts = Vec::new();
let mut ioi_answers = Vec::new();
for (f, (a, b)) in formats.iter().zip(names) {
    for (c, i) in [(a, b), (b, a)] {
        ioi_answers.push((c, i));
        ioi_prompts.push(f.replace("{}", i));
    }
}
let mut ioi_corrupt = Vec::new();
for pair in ioi_prompts.chunks(2) { ioi_corrupt.push(pair[1].clone()); ioi_corrupt.push(pair[0].clone()); }
println!("{ioi_prompts:?}");
println!("{ioi_answers:?}");
{
    // borrowed views live only inside this block (evcxr keeps a cell's variables across cells)
    let p: Vec<&str> = ioi_prompts.iter().map(|s| s.as_str()).collect();
    let c: Vec<&str> = ioi_corrupt.iter().map(|s| s.as_str()).collect();
    patch_resid(&model, &p, &c, &ioi_answers, "Logit Difference From Patched Residual Stream (IOI, names swapped)")?.evcxr_display();
}
"""),
    md("""
### Number sequence "1 2 3 5"

The source: corrupted `-2.7137`, clean `7.3265` (GPT-2 large); "all the layers outputting to the
residual stream attend highly to the last token, the one that was changed".
"""),
    code("""
let (p1, a1, _) = notebook::adapt_answers(&model, "1 2 3 4", &[" 5", " Next"]);
let (p2, _, _) = notebook::adapt_answers(&model, "1 2 3 5", &[" 5", " Next"]);
patch_resid(&model, &[p1.as_str()], &[p2.as_str()], &[(a1[0].as_str(), a1[1].as_str())],
    "Logit Difference From Patched Residual Stream (1 2 3 5)")?.evcxr_display();
"""),
    md("""
## Reading the figures

The printed "strongest cells" lines say, for the model actually run, where patching restores the
answer: compare them with the source's reading for GPT-2 quoted above each heatmap. A cell near 1
at an early layer and the position of " Peb"/"bles" means the information still sits at that token;
cells near 1 at the final position in late layers mean it has moved to where the prediction is made.
"""),
]


PARIS = [
    md("""
# Factual knowledge about Paris: yes/no questions with answer-token groups

Reproduces `shared/seeds/003_6a5a87dcc1444d58.txt`. Yes/no questions about Paris are answered by
*groups* of tokens ("Yes", "Sure", "Correct", ... against "No", "Nope", "Wrong", ...), so the
metrics compare groups: the mean logit over the correct group minus the mean over the incorrect
group (nats), and the total probability of the correct group minus the incorrect one. Then the
logit lens along the group direction, per-layer and per-head attribution, the top heads'
attention, and activation patching with the source's corrupted questions.

Models: the source ran Gemma 2B-it (`CANDLELENS_MODEL_SET=source`, gated: needs `HF_TOKEN`);
offline this runs the embedded Gemma 3 270M (a base model: expect it to be far less sure).
"""),
    code("""
:dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::{data, metrics, notebook};
"""),
    code("""
let model = notebook::load("gemma-2b-it", "gemma-3-270m")?;
"""),
    md("""
## Data and answer groups

`data/fk_samples.csv` is the source's final question set; `data/answer_map.json` its token groups.
Words that are not one token for this tokenizer are reported and left out of the group.
"""),
    code("""
let rows = data::read_csv("../data/fk_samples.csv")?;
let questions: Vec<String> = rows.iter().map(|r| r["question"].clone()).collect();
let labels: Vec<bool> = rows.iter().map(|r| r["answer"] == "True").collect();
let (true_words, false_words) = {
    let answer_map = data::read_json("../data/answer_map.json")?;
    let words = |k: &str| -> Vec<String> {
        answer_map[k].as_array().map(|a| a.iter().filter_map(|w| w.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    (words("True"), words("False"))
};
let (true_ids, dropped_t) = metrics::resolve_group_lenient(&model, &true_words.iter().map(|s| s.as_str()).collect::<Vec<_>>());
let (false_ids, dropped_f) = metrics::resolve_group_lenient(&model, &false_words.iter().map(|s| s.as_str()).collect::<Vec<_>>());
println!("True group: {} tokens; not single tokens here: {dropped_t:?}", true_ids.len());
println!("False group: {} tokens; not single tokens here: {dropped_f:?}", false_ids.len());
fn groups_for(labels: &[bool], t: &[u32], f: &[u32]) -> Vec<TokenGroups> {
    labels.iter().map(|&l| if l { TokenGroups { correct: t.to_vec(), incorrect: f.to_vec() } }
                            else { TokenGroups { correct: f.to_vec(), incorrect: t.to_vec() } }).collect()
}
let mut q = Table::new("Questions", ["#", "question", "answer"]);
for (i, (qq, l)) in questions.iter().zip(&labels).enumerate() { q.row([i.to_string(), format!("{qq:?}"), l.to_string()]); }
q.evcxr_display();
"""),
    md("""
## One question

The source (Gemma 2B-it): "Sure" 55.63 %, "Yes" 35.34 %, "No" 4.22 %.
"""),
    code("""
model.test_prompt("Is Paris the capital of France?\n", "Yes", Some(true), false, 10)?.evcxr_display();
"""),
    md("""
## The group metrics

The source: a group logit difference of 4.99 nats on the first question; per prompt
`[3.594, 2.368, 8.989, 5.640, 4.428, -1.190, 5.244, 3.644, 6.026, 0.829]` (mean 3.96) and
probability differences `[0.594, 0.205, 0.895, 0.994, 0.827, 0.409, 0.747, 0.988, 0.848, 0.890]`
(mean 0.74) on its 10 generated questions, before it dropped the one it was unsure about.
"""),
    code("""
let tokens = {
    let qs: Vec<&str> = questions.iter().map(|s| s.as_str()).collect();
    model.to_tokens(qs.as_slice(), Some(true))?
};
let groups = groups_for(&labels, &true_ids, &false_ids);
let last = model.last_logits(&tokens)?;
let ld = metrics::group_logit_diff(&last, &groups)?;
let pd = metrics::group_prob_diff(&last, &groups)?;
println!("Per prompt logit difference: {:?}", ld.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>());
println!("Average logit difference: {:.2}", metrics::mean(&ld));
println!("Per prompt probability difference: {:?}", pd.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>());
println!("Average probability difference: {:.2}", metrics::mean(&pd));
let mut t = Table::new("Per question", ["#", "question", "answer", "group logit diff", "prob diff"]);
for i in 0..questions.len() { t.row([i.to_string(), format!("{:?}", questions[i]), labels[i].to_string(), format!("{:.3}", ld[i]), format!("{:.3}", pd[i])]); }
t.evcxr_display();
"""),
    md("""
## Filtering unsure questions

The source dropped the question its model was unsure about (probability difference 0.41 with a
negative logit difference). The same rule as code: keep a question only if the model puts at
least half its probability margin on the right group and the logit difference agrees in sign.
"""),
    code("""
let keep: Vec<usize> = (0..questions.len()).filter(|&i| pd[i] >= 0.5 && ld[i] > 0.0).collect();
{
    let dropped: Vec<&str> = (0..questions.len()).filter(|i| !keep.contains(i)).map(|i| questions[i].trim_end()).collect();
    println!("kept {} of {} questions; dropped: {dropped:?}", keep.len(), questions.len());
}
// with no confident question (a small base model may have none), analyse them all
let keep: Vec<usize> = if keep.is_empty() { println!("none is confident: analysing all"); (0..questions.len()).collect() } else { keep };
let kept_q: Vec<String> = keep.iter().map(|&i| questions[i].clone()).collect();
let kept_l: Vec<bool> = keep.iter().map(|&i| labels[i]).collect();
"""),
    md("""
## Logit lens along the group direction

The direction is the mean unembedding of the correct group minus that of the incorrect group (the
source's sum divided by the group size), through the final norm. The source saw the group logit
difference rise mostly in MLP layers: "Summed increase in self-attention layer after layer 1:
-0.55; in MLP layer after layer 1: 4.12".
"""),
    code("""
let ktokens = {
    let kq: Vec<&str> = kept_q.iter().map(|s| s.as_str()).collect();
    model.to_tokens(kq.as_slice(), Some(true))?
};
let kgroups = groups_for(&kept_l, &true_ids, &false_ids);
let (_, cache) = model.run_with_cache(&ktokens, None)?;
let dirs = model.group_diff_directions(&kgroups)?;
let acc = cache.accumulated_resid(None, true, Pos::Last)?;
let lens = model.logit_attribution(&cache, &acc, Pos::Last, &dirs)?;
let (mut attn_up, mut mlp_up) = (0f32, 0f32);
for l in 1..model.cfg.n_layers {
    attn_up += lens.values[2 * l + 1] - lens.values[2 * l];
    mlp_up += lens.values[2 * l + 2] - lens.values[2 * l + 1];
}
println!("Summed increase in self-attention layer after layer 1: {attn_up:.2}");
println!("Summed increase in MLP layer after layer 1: {mlp_up:.2}");
let x: Vec<f32> = (0..lens.values.len()).map(|i| i as f32 / 2.0).collect();
Figure::line(x, vec![("group logit diff".into(), lens.values.clone())], Some(lens.labels.clone()),
    "Logit Difference From Accumulate Residual Stream").axes("layer", "logit diff").evcxr_display();
"""),
    md("""
## Layer attribution
"""),
    code("""
let dec = cache.decompose_resid(None, true, Pos::Last)?;
let per_layer = model.logit_attribution(&cache, &dec, Pos::Last, &dirs)?;
for (l, _, v) in per_layer.top(3) { println!("largest: {l} {v:+.3}"); }
Figure::bar(per_layer.labels.clone(), per_layer.values.clone(), "Logit Difference From Each Layer").axes("", "logit diff").evcxr_display();
"""),
    md("""
## Head attribution
"""),
    code("""
let heads = cache.stack_head_results(&model, None, Pos::Last)?;
let per_head = model.logit_attribution(&cache, &heads, Pos::Last, &dirs)?;
let head_labels: Vec<String> = (0..model.cfg.n_heads).map(|h| h.to_string()).collect();
let layer_labels: Vec<String> = (0..model.cfg.n_layers).map(|l| l.to_string()).collect();
Figure::heatmap(per_head.grid(model.cfg.n_layers, model.cfg.n_heads)?, head_labels, layer_labels, "Logit Difference From Each Head")
    .axes("Head", "Layer").evcxr_display();
"""),
    md("""
## Attention of the top heads

For the question at `batch_index = 1` of the kept set, as in the source.
"""),
    code("""
let batch_index = 1.min(kept_q.len() - 1);
let top: Vec<(usize, usize)> = per_head.top(3).iter().map(|(_, i, _)| (i / model.cfg.n_heads, i % model.cfg.n_heads)).collect();
println!("top positive heads: {:?}", per_head.top(3));
AttentionView::from_cache(&model, &cache, batch_index, &top, "Top 3 Positive Logit Attribution Heads")?.evcxr_display();
"""),
    md("""
## Activation patching

`data/fk_patching.csv` holds the source's patching questions; only two are really corrupted:
"... capital of France?" → "... capital of UK?" and "... City of Light?" → "... City of Dark?".
The metric is the group logit difference; each heatmap is normalised
`(patched - corrupted) / (clean - corrupted)`.
"""),
    code("""
let patch_rows = data::read_csv("../data/fk_patching.csv")?;
let pairs: Vec<(String, String, bool)> = {
    let mut v: Vec<(String, String, bool)> = Vec::new();
    for r in &patch_rows {
        let item = (r["question"].clone(), r["corrupted_question"].clone(), r["answer"] == "True");
        if item.0 != item.1 && !v.contains(&item) { v.push(item); }
    }
    v
};
fn group_patch(model: &HookedTransformer, clean: &str, corrupt: &str, g: TokenGroups, target: PatchTarget) -> candlelens::Result<PatchGrid> {
    let c = model.to_tokens(clean, Some(true))?;
    let k = model.to_tokens(corrupt, Some(true))?;
    let metric: candlelens::patching::Metric = Box::new(move |l| Ok(metrics::mean(&metrics::group_logit_diff(l, std::slice::from_ref(&g))?)));
    let grid = Patcher::new(model, &c, &k, metric)?.sweep(target)?;
    println!("{clean:?} vs {corrupt:?}: clean {:.3}, corrupted {:.3}", grid.clean, grid.corrupted);
    if (grid.clean - grid.corrupted).abs() < 0.1 * grid.clean.abs().max(1.0) {
        println!("warning: the corruption barely moves the metric for this model: normalised scores are not meaningful");
    }
    println!("strongest cells: {:?}", grid.strongest(4));
    Ok(grid)
}
let (clean0, corrupt0, label0) = pairs[0].clone();
let g0 = groups_for(&[label0], &true_ids, &false_ids).remove(0);
let grid0 = group_patch(&model, &clean0, &corrupt0, g0.clone(), PatchTarget::ResidPre)?;
let pos0: Vec<String> = model.to_str_tokens(&clean0, Some(true))?.iter().enumerate().map(|(i, t)| format!("{t}_{i}")).collect();
grid0.figure("Logit Difference From Patched Residual Stream", Some(pos0)).evcxr_display();
"""),
    code("""
let grid0h = group_patch(&model, &clean0, &corrupt0, g0.clone(), PatchTarget::HeadsAllPos)?;
grid0h.figure("Logit Difference From Patched Attention Heads", None).evcxr_display();
"""),
    code("""
if let Some((clean1, corrupt1, label1)) = pairs.get(1).cloned() {
    let g1 = groups_for(&[label1], &true_ids, &false_ids).remove(0);
    let grid1 = group_patch(&model, &clean1, &corrupt1, g1, PatchTarget::ResidPre)?;
    let pos1: Vec<String> = model.to_str_tokens(&clean1, Some(true))?.iter().enumerate().map(|(i, t)| format!("{t}_{i}")).collect();
    grid1.figure("Logit Difference From Patched Residual Stream", Some(pos1)).evcxr_display();
}
"""),
    md("""
## Reading the results

The printed lines state, for the model actually run, how sure it is (group metrics), which
questions survive the filter, whether attention or MLP layers raise the group logit difference
(compare with the source's -0.55 / 4.12), and where patching the clean residual stream restores
the answer (the "strongest cells"). For Gemma 3 270M, a small base model, many answers hover near
zero; `CANDLELENS_MODEL_SET=source` runs the source's Gemma 2B-it.
"""),
]


ENTITY = [
    md("""
# The entity-binding circuit: binding-ID vectors

Reproduces `shared/seeds/004_92f6622c4bb0f849.txt` ("Exploring the Entity Binding Circuit with
SAEs", the part that recreates the binding-ID results of Feng & Steinhardt, 2023, *How do language
models bind entities in context?*). A context binds two entities to two attributes; the question
asks for one entity's attribute:

```text
Context: Leo lives in the capital city ofVietnam.
Dean lives in the capital city ofPeru.
Question: Which city does Dean live in?
Answer: Dean lives in the city of          → " Lima"
```

The binding-ID hypothesis: the residual stream at the entity `E_k` and at its attribute `A_k`
carries a vector that depends only on `k`, and the model answers by matching the two. The
difference of means `Δ_E[l] = mean resid_post_l[E_0] − mean resid_post_l[E_1]` (and `Δ_A` at the
attributes) estimates that vector's change from pair 0 to pair 1 at every layer. The source
subtracts `Δ_E`, `Δ_A` at `E_1`, `A_1` in every layer and measures the answer on the capital task
and, with the same vectors, on a fruit task (transfer). This notebook adds the paper's controls:
random vectors of the same norm, and swapping the binding IDs instead of subtracting.

Models: the source ran Gemma 2 2B-it (`CANDLELENS_MODEL_SET=source`, gated: needs `HF_TOKEN`).
Offline this runs the embedded SmolLM2-135M-Instruct. The source's numbers are quoted next to
ours; they can only match for the source's model. The prompts are the source's character for
character — including its missing space in `"capital city of{country}"` (its countries have no
leading space), which glues the country to "of".
"""),
    code("""
:dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::binding::{self, BindingBatch, BindingLists, BindingMeans, Evaluation, Intervention, PyRandom, Task};
use candlelens::notebook;
"""),
    code("""
let model = notebook::load("gemma-2-2b-it", "smollm2-135m")?;
// the source samples 100 prompts per task; the embedded stand-in runs 50 to keep the notebook
// to a few minutes on a CPU (CANDLELENS_BINDING_N overrides)
let n: usize = std::env::var("CANDLELENS_BINDING_N").ok().and_then(|s| s.parse().ok())
    .unwrap_or(if notebook::use_source_models() { 100 } else { 50 });
println!("{n} prompts per task");
"""),
    md("""
## The lists, filtered to single tokens

`data/entity_binding/lists.json` holds the source's four lists as written (50 names, 50 countries
with their capitals, 34 fruits); capitals and fruits get a leading space, as in the source. The
source keeps an entry only if it is one token for the model, and one token with a leading space
too when it has none (countries and capitals are kept or dropped together). The source printed
`(37, 37, 49, 29)` for Gemma 2 2B-it: countries, capitals, names, fruits. The source's name list
has "Sage" twice; it is kept as in the source (a prompt can then name two "Sage"s).
"""),
    code("""
let all = BindingLists::from_file("../data/entity_binding/lists.json")?;
let lists = all.one_token(&model)?;
println!("({}, {}, {}, {})", lists.countries.len(), lists.capitals.len(), lists.names.len(), lists.fruits.len());
println!("countries: {:?}", lists.countries);
println!("capitals:  {:?}", lists.capitals);
println!("names:     {:?}", lists.names);
println!("fruits:    {:?}", lists.fruits);
"""),
    md("""
## Prompts

The source's `get_prompts`, with Python's `random` reproduced: `random.seed(0)` before the
source's two calls gives exactly these prompts (the source itself was unseeded). Two pairs per
prompt; the subject and the incorrect attribute are drawn as the source draws them.
"""),
    code("""
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
println!("\\n{}\\n  correct {:?}, incorrect {:?}", capital.prompts[1].text.text, capital.prompts[1].correct, capital.prompts[1].incorrect);
println!("\\n{}\\n  correct {:?}, incorrect {:?}", fruit.prompts[1].text.text, fruit.prompts[1].correct, fruit.prompts[1].incorrect);
"""),
    md("""
## Entity and attribute positions

The source hard-codes positions for Gemma's tokenizer (`E_0, A_0, E_1, A_1` = 18, 25, 28, 35 on
the capital prompts, 18, 22, 24, 28 on the fruit prompts) and prints the tokens there
(` Leo Vietnam Dean Peru`, ` Hope  kiwi  Seth  apple`). Here each prompt's positions come from
the tokenizer's offsets: the token that spans exactly the entry (an entry split into pieces or
merged with a neighbour is an error naming it). The check prints the tokens found.
"""),
    code("""
for (name, batch) in [("capital", &capital), ("fruit", &fruit)] {
    println!("{name} prompt 1: {}", batch.describe_positions(&model, 1)?);
    let mut distinct: Vec<&candlelens::binding::BindingPositions> = Vec::new();
    for p in &batch.positions { if !distinct.contains(&p) { distinct.push(p); } }
    println!("  {} distinct position sets over {} prompts", distinct.len(), batch.len());
}
println!("{:?}", model.ids_to_str_tokens(fruit.tokens.row(1))?);
"""),
    md("""
## Before the intervention

The source: greedy accuracy of the first generated token on the capital task `0.9900`, mean logit
difference (correct − incorrect answer) on the fruit task `11.4252` (it printed neither the capital
task's logit difference nor the fruit task's accuracy). "Two-way" is the share of prompts whose
correct answer outscores the incorrect one; "other answer" the share whose greedy token is the
incorrect answer. One forward of the capital prompts also records the mean `resid_post` at
`E_0, A_0, E_1, A_1` in every layer.
"""),
    code("""
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
"""),
    md("""
### Which pair does the model answer?

Accuracy split by which entity the question asks about: a model that binds answers both; one that
always takes the last pair scores 0 for `E_0` and 1 for `E_1`. The capital prompts are also scored
with the *country* written in the context as the answer instead of its capital, in case the model
copies the bound attribute without looking its capital up.
"""),
    code("""
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
"""),
    md("""
## Binding-ID difference vectors

`Δ_E[l]`, `Δ_A[l]`: `[n_layers, d_model]` (the source: `[26, 2304]` for Gemma 2 2B). Their norm per
layer, and relative to the norm of the mean residual stream at `E_1` / `A_1`.
"""),
    code("""
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
"""),
    md("""
## The source's intervention

At every layer `l`: `resid_post_l[E_1] -= Δ_E[l]`, `resid_post_l[A_1] -= Δ_A[l]`. Since
`Δ = mean[·_0] − mean[·_1]`, this moves the second pair one step further *away* from the first
pair's binding IDs; entity and attribute move alike. The fruit task reuses the capital task's
vectors at its own `E_1`, `A_1` positions. The source: capital logit difference `2.8369` after the
intervention; fruit `Accuracy: 0.62` (two-way) and logit difference `6.7398`.
"""),
    code("""
let capital_sub = binding::intervene(&model, &capital, &vectors, &Intervention::subtract())?;
let fruit_sub = binding::intervene(&model, &fruit, &vectors, &Intervention::subtract())?;
println!("capital, subtracted: {capital_sub}");
println!("fruit, subtracted (transfer): {fruit_sub}");
println!("Accuracy: {}", fruit_sub.pair_accuracy);
fn f4(x: f32) -> String { format!("{x:.4}") }
let mut four = Table::new("The source's printed numbers", ["measurement", "source (Gemma 2 2B-it, n = 100)", "this model"]);
four.row(["capital: greedy accuracy, clean".to_string(), "0.9900".into(), f4(capital_clean.accuracy)]);
four.row(["fruit: logit diff, clean".to_string(), "11.4252".into(), f4(fruit_clean.logit_diff)]);
four.row(["capital: logit diff, Δ subtracted at E_1, A_1".to_string(), "2.8369".into(), f4(capital_sub.logit_diff)]);
four.row(["fruit: two-way accuracy, capital's Δ subtracted".to_string(), "0.62".into(), f4(fruit_sub.pair_accuracy)]);
four.row(["fruit: logit diff, capital's Δ subtracted".to_string(), "6.7398".into(), f4(fruit_sub.logit_diff)]);
four.evcxr_display();
"""),
    md("""
## Controls

- **Random vectors**: at every layer a random direction with the norm of `Δ_E[l]` (`Δ_A[l]`),
  subtracted the same way. If the binding vectors matter through their direction, this should
  hurt less than `Δ` (or differently).
- **Swaps** (the paper's test): `E_0 −= Δ_E, E_1 += Δ_E` exchanges the entities' binding IDs, so
  the question about `E_k` should get the *other* attribute (accuracy falls, "other answer"
  rises, the logit difference turns negative); likewise for the attributes; swapping both keeps
  every pair matched, so the answer should stay.
"""),
    code("""
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
"""),
    md("""
The capital runs scored with the country in the context as the answer (no new forward passes):
"""),
    code("""
let mut t = Table::new("Capital prompts, the country as the answer", ["intervention", "accuracy", "two-way", "other answer", "logit diff"]);
for (name, e) in capital_runs.iter() {
    let c = e.rescore(&capital_countries)?;
    t.row([name.to_string(), format!("{:.2}", c.accuracy), format!("{:.2}", c.pair_accuracy), format!("{:.2}", c.swapped), format!("{:.3}", c.logit_diff)]);
}
t.evcxr_display();
"""),
    md("""
## What the numbers show

For **SmolLM2-135M** (the embedded stand-in, 50 prompts per task, `random.seed(0)`; CPU f32, so a
re-run prints the same numbers):

- **The lists shrink.** Only 5 of the 50 country/capital pairs and 11 of the 50 names are one
  token both with and without a leading space for SmolLM2's BPE ("Dean" is "De" + "an"), against
  the source's 37 and 49 for Gemma 2. The prompts recombine few entries.
- **SmolLM2 does not do the source's task.** Its first token on the capital prompts is never the
  capital: greedy accuracy 0.00 against the source's 0.99. It names a country from the context
  instead (scored on the country, accuracy 0.58 and "other answer" 0.42: always one of the two).
  Which one depends mostly on position, not on binding: 0.81 when the question asks about the
  second pair, 0.41 when it asks about the first — it prefers the pair it read last. The fruit
  task is the same story: accuracy 0.62, mean logit difference 0.60 against the source's 11.43.
- **So the interventions probe a model that barely binds, and 50 prompts are noisy.** With that
  caveat: the source's subtraction does not destroy the answer. On the capital prompts the logit
  difference goes from 0.48 to 1.65 (the source: 2.84 after, and it did not print the value
  before), and the country is still named about as often (0.54 against 0.58). Carried over to the fruit prompts, the
  capital task's vectors lower the two-way accuracy from 0.62 to 0.52 (the source: 0.62 after)
  and greedy accuracy from 0.62 to 0.34. The logit difference goes from 0.60 to 1.00 (the source:
  11.43 to 6.74). Random vectors of the same norms move the numbers the same way, only less
  (capital logit difference 0.92; fruit greedy accuracy 0.44, logit difference 0.60). `|Δ|` is
  14–44 % of the residual norm at the layers printed, so any vector that large is a big edit.
  With this model and 50 prompts, the binding direction is not clearly separated from a random
  one.
- **The swaps.** Swapping the entities' binding IDs pushes the answer towards the other pair, as
  the binding-ID hypothesis predicts. The effect is weak: country accuracy goes from 0.58 to 0.32,
  "other answer" from 0.42 to 0.52 and the logit difference from 0.72 to −0.21. Swapping the
  attributes' IDs, or both, does not keep the answer. The model then names neither country
  (accuracy and "other answer" 0.00): moving the attribute positions by `Δ_A` breaks the copying
  of the attribute token itself. The "both" control, which should leave the answer unchanged,
  fails for this model.
- **A confound in the source's capital template.** `E_0` follows "Context: " and is the spaced
  token (" Grant"; the source's " Leo"), while `E_1` follows a newline and is the unspaced one
  ("Stone"; the source's "Dean"). `Δ_E` therefore mixes the binding-ID difference with the
  difference between the two spellings' embeddings. The fruit template, where both entities are
  spaced, then receives that mixture on transfer. A cleaner estimate would put the same spelling
  in both places.

`CANDLELENS_MODEL_SET=source` runs the same cells on Gemma 2 2B-it with 100 prompts. Those numbers
can be set beside the source's 0.99 / 11.43 / 2.84 / 0.62 and 6.74. They will not equal them
exactly, because the source's prompts were unseeded.
"""),
]


def write(name, cells, expect):
    nb = {
        "cells": [dict(c, id=f"cell-{i}") for i, c in enumerate(cells)],
        "metadata": {
            "kernelspec": {"display_name": "Rust", "language": "rust", "name": "rust"},
            "language_info": {"name": "Rust", "file_extension": ".rs", "mimetype": "text/rust"},
            "candlelens": {"expect": expect},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    out = Path(__file__).resolve().parent.parent / "notebooks" / f"{name}.ipynb"
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


write("00-tour", TOUR, ["image/svg+xml", "text/html"])
write("pet-analogy-patching", PET, ["image/svg+xml", "text/html"])
write("paris-factual-qa", PARIS, ["image/svg+xml", "text/html"])

# LRE (seed 001): five per-model notebooks from one template, and the layer-inspection utility
import notebooks_lre  # noqa: E402  (scripts/notebooks_lre.py)

for _name, _cells, _expect in notebooks_lre.notebooks(md, code):
    write(_name, _cells, _expect)
write("entity-binding", ENTITY, ["image/svg+xml", "text/html"])
