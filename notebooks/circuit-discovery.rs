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
// # Circuit discovery on the IOI batch
//
// Which heads, and which paths between them, carry indirect-object identification? The batch is
// the one of the pet-analogy source (`shared/seeds/002_a10da29a1469ef09.txt`, "The IOI batch"):
// eight prompts such as "When John and Mary went to the shops, John gave the bag to", each
// corrupted by swapping the repeated name with its partner, scored by the logit difference
// between the indirect object and the subject. The source stops at the corrupted logit
// difference; this notebook goes on the way the IOI paper (Wang et al. 2022) and the
// attribution-patching papers (Nanda 2023; Syed et al. 2023; Hanna et al. 2024) do:
//
// 1. exact activation patching of every head;
// 2. attribution patching of every head from one backward pass — and its self-check against 1;
// 3. edge attribution: which edges between components matter, as a table and a graph, checked
//    against exact edge patching;
// 4. path patching from every head to the logits, and into the queries of the heads that write
//    the answer.
//
// Offline the embedded Gemma 3 270M runs it; with `CANDLELENS_MODEL_SET=source` GPT-2 large (the
// model behind the source's number) loads from the hub. The source's printed number is shown
// beside ours as `(source: …)`; it agrees only for the source's model.

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::attribution::AttributionPatcher;
use candlelens::patching::{PathPatcher, Receivers};
use candlelens::{metrics, notebook};
use candlelens::notebook::vs_source;

// %%
let model = notebook::load("gpt2-large", "gemma-3-270m")?;

// %% [markdown]
// ## The IOI batch
//
// The source's four templates and name pairs, each in both orders; the corrupted prompt of each
// pair is its partner (the repeated name swapped), so clean and corrupted have the same tokens
// everywhere but one position.

// %%
let formats = ["When John and Mary went to the shops,{} gave the bag to", "When Tom and James went to the park,{} gave the ball to",
               "When Dan and Sid went to the shops,{} gave an apple to", "After Martin and Amy went to the park,{} gave a drink to"];
let names = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")];
let mut prompts = Vec::new();
let mut answers = Vec::new();
for (f, (a, b)) in formats.iter().zip(names) {
    for (c, i) in [(a, b), (b, a)] {
        answers.push((c, i));
        prompts.push(f.replace("{}", i));
    }
}
let mut corrupted = Vec::new();
for pair in prompts.chunks(2) { corrupted.push(pair[1].clone()); corrupted.push(pair[0].clone()); }
let clean = model.to_tokens(prompts.iter().map(|s| s.as_str()).collect::<Vec<_>>().as_slice(), Some(true))?;
let corrupt = model.to_tokens(corrupted.iter().map(|s| s.as_str()).collect::<Vec<_>>().as_slice(), Some(true))?;
let pairs = model.answer_pairs(&answers)?;
let labels = model.position_labels(&clean, 0)?;
println!("{} prompts, {} tokens each; prompt 0: {:?}", clean.batch(), clean.max_len(), labels);
let patcher = Patcher::new(&model, &clean, &corrupt, metrics::logit_diff_metric(&pairs))?;
println!("Clean average logit diff (IOI): {:.4}", patcher.clean_metric());
vs_source("Corrupted Average Logit Diff (IOI)", format!("{:.4}", patcher.corrupted_metric()), "-4.5051");

// %% [markdown]
// ## 1. Exact activation patching of every head
//
// Each head's clean output (`hook_z`, every position) put into the corrupted run, the rest
// recomputed; 1 means that head alone restores the clean logit difference. The fast sweep is
// exact (the tests hold it to one forward per head) and starts each run at the head's layer.

// %%
let exact = patcher.sweep(PatchTarget::HeadsAllPos)?;
let top: Vec<String> = exact.strongest(6).into_iter().map(|(l, h, v)| format!("L{l}{h} {v:+.2}")).collect();
println!("strongest heads: {}", top.join(", "));
println!("sweep {:.1} s, {:.1} forward-equivalents (one forward per head: {})", exact.seconds, exact.forward_equivalents, exact.naive_forwards);
exact.figure("Activation patching per head (normalised logit difference)", None).evcxr_display();

// %% [markdown]
// ## 2. Attribution patching, and where it can be trusted
//
// One clean run, one corrupted run and one backward pass give every head's linear estimate
// `∇m · (z_clean − z_corrupted)`. `verify` runs the exact sweep on the same grid and sets the two
// side by side: points on the diagonal are heads where the estimate is right; labelled points are
// off by more than 0.1.

// %%
let attr = AttributionPatcher::new(&model, &clean, &corrupt, metrics::logit_diff_grad_metric(&pairs))?;
let check = attr.verify(PatchTarget::HeadsAllPos, 0.1)?;
print!("{check}");
println!("attribution {:.2} s ({:.1} forward-equivalents) for every head at once", attr.seconds, attr.forward_equivalents);
check.figure("Attribution estimate vs exact patching, per head").evcxr_display();

// %% [markdown]
// The integrated-gradients variant (EAP-IG) averages the gradient over inputs interpolated from
// the corrupted to the clean prompt, following the metric where it bends. Below, both estimates
// beside the exact value for the heads the plain estimate gets most wrong.

// %%
let ig = AttributionPatcher::integrated_gradients(&model, &clean, &corrupt, metrics::logit_diff_grad_metric(&pairs), 8)?;
let ig_check = ig.verify(PatchTarget::HeadsAllPos, 0.1)?;
println!("correlation with exact patching: attribution {:.3}, EAP-IG (8 steps) {:.3}; cells off by > 0.1: {} vs {}",
         check.correlation, ig_check.correlation, check.wrong.len(), ig_check.wrong.len());
// (layer, head, exact, attribution, EAP-IG), worst attribution error first
let mut heads: Vec<(usize, usize, f32, f32, f32)> = Vec::new();
for (l, row) in check.exact.values.iter().enumerate() {
    for (h, &x) in row.iter().enumerate() {
        heads.push((l, h, x, check.estimate.values[l][h], ig_check.estimate.values[l][h]));
    }
}
heads.sort_by(|a, b| (b.3 - b.2).abs().total_cmp(&(a.3 - a.2).abs()));
let mut t = Table::new("Where the linear estimate misleads (the 8 heads plain attribution gets most wrong)", ["head", "exact", "attribution", "EAP-IG"]);
for (l, h, x, e, g) in heads.iter().take(8) {
    t.row([format!("L{l}H{h}"), format!("{x:+.3}"), format!("{e:+.3}"), format!("{g:+.3}")]);
}
t.evcxr_display();

// %% [markdown]
// ## 3. Edges: which connections carry it
//
// Edge attribution scores every edge from an upstream component (the embedding, a head, an MLP)
// into a downstream input (a head's queries, keys or values, an MLP, the logits) with the same
// one-backward-pass trick, each head reading its own copy of the residual stream.

// %%
let graph = ig.edges()?;
println!("{} edges in {:.1} s ({:.0} forward-equivalents, integrated gradients)", graph.edges.len(), graph.seconds, graph.forward_equivalents);
graph.table(15).evcxr_display();

// %%
graph.figure(20, "The 20 strongest edges (blue helps the clean answer, red hurts it)").evcxr_display();

// %% [markdown]
// The self-check for edges: for the strongest edges out of a head, the exact value — path
// patching from that head into that one input with every other head and every MLP frozen.

// %%
print!("{}", ig.verify_edges(&graph, 12, 0.1)?);

// %% [markdown]
// ## 4. Path patching
//
// Path patching (the IOI paper's tool) asks how much each head matters *through a given path*:
// its clean output reaches only the receivers, every other head frozen at the corrupted run and
// the MLPs recomputed. First every head → the logits (its direct effect, plus what MLPs make of it).

// %%
let pp = PathPatcher::from_patcher(patcher);
let to_logits = pp.grid(&Receivers::Logits)?;
println!("{:.2} s, {:.1} forward-equivalents (the hooks recipe: {} forwards)", to_logits.seconds, to_logits.forward_equivalents, to_logits.naive_forwards);
to_logits.figure("Path patching: each head -> logits", None).evcxr_display();

// %% [markdown]
// The heads that write the answer into the logits play the part of the paper's name movers. Taken
// together, how much of the behaviour do their direct paths carry? And which earlier heads feed
// their queries (the paper's S-inhibition heads)?

// %%
let movers = to_logits.top_heads(3, true)?;
let joint = pp.patch(&movers, &Receivers::Logits)?;
println!("top three heads to the logits: {:?}; together through their direct paths: {joint:.3}", movers);
let receivers = Receivers::heads(&movers, "q")?;
let to_q = pp.grid(&receivers)?;
let feeders: Vec<String> = to_q.strongest(5).into_iter().map(|(l, h, v)| format!("L{l}{h} {v:+.3}")).collect();
println!("heads feeding their queries: {}", feeders.join(", "));
to_q.figure(&format!("Path patching: each head -> queries of {receivers}"), None).evcxr_display();

// %% [markdown]
// ## What the self-check says
//
// The printed verdicts above are computed on the model actually run: the correlation of the
// estimate with exact patching, the heads where the linear estimate is off by more than 0.1 and by
// how much, the same for EAP-IG, and for the strongest head edges their exact values. Where a
// point sits far from the diagonal, trust the exact sweep (or path patching), not the estimate:
// attribution patching ranks components cheaply, and the self-check says which of its numbers to
// re-measure.
