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
// # Factual knowledge about Paris: yes/no questions with answer-token groups
//
// Reproduces `shared/seeds/003_6a5a87dcc1444d58.txt`. Yes/no questions about Paris are answered by
// *groups* of tokens ("Yes", "Sure", "Correct", ... against "No", "Nope", "Wrong", ...), so the
// metrics compare groups: the mean logit over the correct group minus the mean over the incorrect
// group (nats), and the total probability of the correct group minus the incorrect one. Then the
// source's decision on which question to drop, the logit lens along the group direction, per-layer
// and per-head attribution, and the top and bottom heads' attention. The source prepared activation
// patching but never ran it; the patching section at the end goes beyond it.
//
// Models: the source ran Gemma 2B-it (`CANDLELENS_MODEL_SET=source`, gated: needs `HF_TOKEN`);
// offline this runs the embedded Gemma 3 270M, a base model. Every number the source printed is
// printed beside ours as `(source: …)`.

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::{data, metrics, notebook};
use candlelens::notebook::vs_source;

// %%
let model = notebook::load("gemma-2b-it", "gemma-3-270m")?;

// %% [markdown]
// ## Data and answer groups
//
// The source generated its questions with an external API (a step not reproduced here: it needs the
// API and its output is not seeded); what it evaluated is its final set. It evaluated ten
// questions, then dropped one. `data/fk_samples.csv` is the nine it kept
// (the file it saved); the tenth, "Is Paris the largest city in Europe?" (False), stood at index 5
// of the ten (its `drop_idx = [5]`), so the ten are rebuilt here in the source's order.
// `data/answer_map.json` holds its token groups; words that are not one token for this tokenizer are
// reported and left out of their group.

// %%
let kept_rows = data::read_csv("../data/fk_samples.csv")?;
let mut questions: Vec<String> = kept_rows.iter().map(|r| r["question"].clone()).collect();
let mut labels: Vec<bool> = kept_rows.iter().map(|r| r["answer"] == "True").collect();
const DROPPED: &str = "Is Paris the largest city in Europe?\n";
questions.insert(5, DROPPED.to_string());
labels.insert(5, false);
let (true_words, false_words) = {
    let answer_map = data::read_json("../data/answer_map.json")?;
    let words = |k: &str| -> Vec<String> {
        answer_map[k].as_array().map(|a| a.iter().filter_map(|w| w.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    (words("True"), words("False"))
};
let (true_ids, dropped_t) = metrics::resolve_group_lenient(&model, &true_words.iter().map(|s| s.as_str()).collect::<Vec<_>>());
let (false_ids, dropped_f) = metrics::resolve_group_lenient(&model, &false_words.iter().map(|s| s.as_str()).collect::<Vec<_>>());
println!("True group: {} of {} words are single tokens; not: {dropped_t:?}", true_ids.len(), true_words.len());
println!("False group: {} of {} words are single tokens; not: {dropped_f:?}", false_ids.len(), false_words.len());
if true_ids.len() != false_ids.len() {
    println!("note: the groups differ in size here, so the mean-over-group difference is not the source's (sum_T - sum_F) / 8; both are printed below");
}
let mut q = Table::new("The source's ten questions", ["#", "question", "answer"]);
for (i, (qq, l)) in questions.iter().zip(&labels).enumerate() { q.row([i.to_string(), format!("{qq:?}"), l.to_string()]); }
q.evcxr_display();

// %% [markdown]
// ## One question
//
// `test_prompt("Is Paris the capital of France?\n", "Yes", prepend_bos=True, prepend_space_to_answer=False)`.

// %%
let one = model.test_prompt("Is Paris the capital of France?\n", "Yes",
    &TestPromptOptions { prepend_bos: Some(true), prepend_space_to_answer: false, ..Default::default() })?;
let top3: Vec<String> = one.top_k[0].iter().take(3).map(|t| format!("{:?} {:.2}%", t.token, 100.0 * t.prob)).collect();
vs_source("top 3", top3.join(", "), "\"Sure\" 55.63%, \"Yes\" 35.34%, \"No\" 4.22%");
one.evcxr_display();

// %% [markdown]
// ## The group metrics on the ten questions

// %%
let tokens = {
    let qs: Vec<&str> = questions.iter().map(|s| s.as_str()).collect();
    model.to_tokens(qs.as_slice(), Some(true))?
};
let groups = TokenGroups::for_labels(&labels, &true_ids, &false_ids);
let last = model.last_logits(&tokens)?;
let ld = metrics::group_logit_diff(&last, &groups)?;
let pd = metrics::group_prob_diff(&last, &groups)?;
{
    let alone = model.last_logits(&model.to_tokens(questions[0].as_str(), Some(true))?)?;
    let ld0 = metrics::group_logit_diff(&alone, &groups[..1])?[0];
    vs_source("group logit difference, question 0 alone", format!("{ld0:.2} nats"), "4.99 nats");
}
vs_source("Per prompt logit difference", format!("{ld:.3?}"), "[3.594, 2.368, 8.989, 5.64, 4.428, -1.19, 5.244, 3.644, 6.026, 0.829]");
vs_source("Average logit difference", format!("{:.2}", metrics::mean(&ld)), "3.96");
{
    // the source's own definition: each group's logits summed and divided by its 8 words; with a
    // word that is not one token here, its sum has fewer terms but is still divided by 8
    let rows: Vec<Vec<f32>> = last.to_dtype(DType::F32)?.to_vec2()?;
    let sum = |r: &[f32], ids: &[u32]| ids.iter().map(|&i| r[i as usize]).sum::<f32>();
    let by_eight: Vec<f32> = rows.iter().zip(&groups).map(|(r, g)| (sum(r, &g.correct) - sum(r, &g.incorrect)) / 8.0).collect();
    vs_source("Per prompt logit difference, the source's (sum_T − sum_F) / 8", format!("{by_eight:.3?}"),
        "[3.594, 2.368, 8.989, 5.64, 4.428, -1.19, 5.244, 3.644, 6.026, 0.829]");
    vs_source("Average logit difference, (sum_T − sum_F) / 8", format!("{:.2}", metrics::mean(&by_eight)), "3.96");
};
vs_source("Per prompt probability difference", format!("{pd:.3?}"), "[0.594, 0.205, 0.895, 0.994, 0.827, 0.409, 0.747, 0.988, 0.848, 0.89]");
vs_source("Average probability difference", format!("{:.2}", metrics::mean(&pd)), "0.74");
{
    let right = ld.iter().filter(|&&x| x > 0.0).count();
    let same_answer = labels.iter().filter(|&&l| l).count().max(labels.iter().filter(|&&l| !l).count());
    vs_source("questions where the right group leads", format!("{right}/{}", ld.len()), "9/10");
    if right <= same_answer {
        println!("this model does no better than answering every question the same way ({same_answer}/{}): it cannot do this task, so the attributions below describe its bias, not factual recall", ld.len());
    }
}
let mut t = Table::new("Per question", ["#", "question", "answer", "group logit diff", "prob diff"]);
for i in 0..questions.len() { t.row([i.to_string(), format!("{:?}", questions[i]), labels[i].to_string(), format!("{:.3}", ld[i]), format!("{:.3}", pd[i])]); }
t.evcxr_display();

// %% [markdown]
// ## The two questions the source inspected
//
// `test_prompt(questions[i], str(label))` for i = 5 and 9, both False: the answer scored is the word
// "False", without a leading space.

// %%
let opts = TestPromptOptions { prepend_bos: Some(true), prepend_space_to_answer: false, ..Default::default() };
for (i, source) in [(5, "\"No\" 51.47%, \"Sure\" 30.36%, \"Yes\" 10.51%"), (9, "\"No\" 95.16%, \"The\" 1.59%, \"Sure\" 1.26%")] {
    let t = model.test_prompt(&questions[i], if labels[i] { "True" } else { "False" }, &opts)?;
    println!("{t}");
    let top3: Vec<String> = t.top_k[0].iter().take(3).map(|x| format!("{:?} {:.2}%", x.token, 100.0 * x.prob)).collect();
    vs_source(&format!("question {i}, top 3"), top3.join(", "), source);
};

// %% [markdown]
// ## The source's decision: drop question 5
//
// The source judged its model "unsure about this case" for question 5 and dropped it (`drop_idx =
// [5]`), keeping nine. The same question is dropped here, by content; this model's scores for it are
// printed for information.

// %%
assert_eq!(questions[5], DROPPED, "question 5 is the one the source dropped");
println!("dropped (the source's decision): {:?}; this model: group logit diff {:.3}, prob diff {:.3}", DROPPED.trim_end(), ld[5], pd[5]);
let keep: Vec<usize> = (0..questions.len()).filter(|&i| i != 5).collect();
let kept_q: Vec<String> = keep.iter().map(|&i| questions[i].clone()).collect();
let kept_l: Vec<bool> = keep.iter().map(|&i| labels[i]).collect();
let saved: Vec<String> = kept_rows.iter().map(|r| r["question"].clone()).collect();
println!("the nine kept equal the source's saved data/fk_samples.csv: {}", kept_q == saved);

// %% [markdown]
// ## Logit lens along the group direction
//
// The direction is the mean unembedding of the correct group minus that of the incorrect group (the
// source's sum divided by the group size), through the final norm. The source then sums, from layer
// 1 on, how much each attention and each MLP layer raises the group logit difference.

// %%
let ktokens = {
    let kq: Vec<&str> = kept_q.iter().map(|s| s.as_str()).collect();
    model.to_tokens(kq.as_slice(), Some(true))?
};
let kgroups = TokenGroups::for_labels(&kept_l, &true_ids, &false_ids);
let (_, cache) = model.run_with_cache(&ktokens, None)?;
let dirs = model.group_diff_directions(&kgroups)?;
let acc = cache.accumulated_resid(None, true, Pos::Last)?;
let lens = model.logit_attribution(&cache, &acc, &dirs)?;
let (mut attn_up, mut mlp_up) = (0f32, 0f32);
for l in 1..model.cfg.n_layers {
    attn_up += lens.values[2 * l + 1] - lens.values[2 * l];
    mlp_up += lens.values[2 * l + 2] - lens.values[2 * l + 1];
}
vs_source("Summed increase in self-attention layer after layer 1", format!("{attn_up:.2}"), "-0.55");
vs_source("Summed increase in MLP layer after layer 1", format!("{mlp_up:.2}"), "4.12");
// the source's "92% of total increase" follows from neither reading of its own −0.55 and 4.12
// (4.12 / (4.12 − 0.55) = 115%, 4.12 / (4.12 + 0.55) = 88%) and it does not say which total it
// means: our shares are printed by both definitions, the source's number only as a quotation
println!("MLP share: {:.0}% of the net increase (MLP / (MLP + attention)), {:.0}% of the summed magnitudes (MLP / (|MLP| + |attention|)); \
the source's own numbers give 115% and 88% by these definitions; it quotes 92% without saying which total — a different quantity, not compared",
         100.0 * mlp_up / (attn_up + mlp_up), 100.0 * mlp_up.abs() / (attn_up.abs() + mlp_up.abs()));
let x: Vec<f32> = (0..lens.values.len()).map(|i| i as f32 / 2.0).collect();
Figure::line(x, vec![("group logit diff".into(), lens.values.clone())], Some(lens.labels.clone()),
    "Logit Difference From Accumulate Residual Stream").axes("layer", "logit diff").evcxr_display();

// %% [markdown]
// ## Layer attribution

// %%
let dec = cache.decompose_resid(None, true, Pos::Last)?;
let per_layer = model.logit_attribution(&cache, &dec, &dirs)?;
for (l, _, v) in per_layer.top(3) { println!("largest: {l} {v:+.3}"); }
per_layer.line_figure("Logit Difference From Each Layer").evcxr_display();

// %% [markdown]
// ## Head attribution

// %%
let heads = cache.stack_head_results(&model, None, Pos::Last)?;
let per_head = model.logit_attribution(&cache, &heads, &dirs)?;
per_head.head_figure(model.cfg.n_layers, model.cfg.n_heads, "Logit Difference From Each Head")?.evcxr_display();

// %% [markdown]
// ## Attention of the top heads
//
// The source shows the question at `batch_index = 1` of the nine: the three heads with the largest
// attribution, then the three with the most negative.

// %%
let batch_index = 1;
println!("question {batch_index}: {:?}", kept_q[batch_index]);
println!("top positive heads: {:?}", per_head.top(3));
AttentionView::from_cache(&model, &cache, batch_index, &per_head.top_heads(3)?, "Top 3 Positive Logit Attribution Heads")?.evcxr_display();

// %%
println!("top negative heads: {:?}", per_head.bottom(3));
AttentionView::from_cache(&model, &cache, batch_index, &per_head.bottom_heads(3)?, "Top 3 Negative Logit Attribution Heads")?.evcxr_display();

// %% [markdown]
// ## Beyond the source: activation patching
//
// The source prepared `data/fk_patching.csv` (its questions and corrupted versions) but its patching
// cell never ran. Here each really corrupted pair is patched, the metric being the group logit
// difference, normalised `(patched - corrupted) / (clean - corrupted)`. One patcher per pair caches
// both runs once and serves every sweep of that pair.

// %%
let patch_rows = data::read_csv("../data/fk_patching.csv")?;
let pairs: Vec<(String, String, bool)> = {
    let mut v: Vec<(String, String, bool)> = Vec::new();
    for r in &patch_rows {
        let item = (r["question"].clone(), r["corrupted_question"].clone(), r["answer"] == "True");
        if item.0 != item.1 && !v.contains(&item) { v.push(item); }
    }
    v
};
println!("{} rows, {} really corrupted pairs: {:?}", patch_rows.len(), pairs.len(), pairs.iter().map(|p| (p.0.trim_end(), p.1.trim_end())).collect::<Vec<_>>());
let (clean0, corrupt0, label0) = pairs[0].clone();
let clean0_t = model.to_tokens(clean0.as_str(), Some(true))?;
let corrupt0_t = model.to_tokens(corrupt0.as_str(), Some(true))?;
println!("{clean0:?} vs {corrupt0:?}");
let patcher0 = notebook::checked_patcher(&model, &clean0_t, &corrupt0_t,
    metrics::group_logit_diff_metric(&TokenGroups::for_labels(&[label0], &true_ids, &false_ids)), None)?;
if let Some(p) = &patcher0 {
    let grid = p.sweep(PatchTarget::ResidPre)?;
    println!("strongest cells: {:?}", grid.strongest(4));
    grid.figure("Logit Difference From Patched Residual Stream", Some(model.position_labels(&clean0_t, 0)?)).evcxr_display();
};

// %%
if let Some(p) = &patcher0 {
    let grid = p.sweep(PatchTarget::HeadsAllPos)?;
    println!("strongest heads: {:?}", grid.strongest(4));
    grid.figure("Logit Difference From Patched Attention Heads", None).evcxr_display();
};

// %%
if let Some((clean1, corrupt1, label1)) = pairs.get(1).cloned() {
    let c = model.to_tokens(clean1.as_str(), Some(true))?;
    let k = model.to_tokens(corrupt1.as_str(), Some(true))?;
    println!("{clean1:?} vs {corrupt1:?}");
    if let Some(p) = notebook::checked_patcher(&model, &c, &k,
        metrics::group_logit_diff_metric(&TokenGroups::for_labels(&[label1], &true_ids, &false_ids)), None)? {
        let grid = p.sweep(PatchTarget::ResidPre)?;
        println!("strongest cells: {:?}", grid.strongest(4));
        grid.figure("Logit Difference From Patched Residual Stream", Some(model.position_labels(&c, 0)?)).evcxr_display();
    }
};
