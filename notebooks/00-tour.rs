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
// # A tour of Candlelens
//
// The TransformerLens workflow in Rust: load a model, look at its predictions, cache every
// activation, read the residual stream through the logit lens, patch activations, and look at
// attention patterns. This notebook runs offline on an embedded model (Gemma 3 270M) and doubles as
// the project's smoke test. The prompt is the pet analogy of the patching study
// (`notebooks/pet-analogy-patching.ipynb` reproduces it in full).
//
// Set `CANDLELENS_MODEL_SET=source` to run GPT-2 small instead (needs the Hugging Face hub).

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::metrics;

// %% [markdown]
// ## Load a model
//
// `notebook::load` picks the source's model or the embedded stand-in and prints which it used.

// %%
let model = candlelens::notebook::load("gpt2", "gemma-3-270m")?;
const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
println!("{:?}", model.to_str_tokens(PET, None)?);

// %% [markdown]
// ## What does the model predict?
//
// `test_prompt` shows the answer's rank and the top-10 next tokens, as TransformerLens prints them.
// The right answer is " Peb" (the first token of " Pebbles"); the distractor is " Rachel".

// %%
model.test_prompt(PET, " Peb", &TestPromptOptions::default())?.evcxr_display();

// %% [markdown]
// ## Cache every activation and read the logit lens
//
// `run_with_cache` keeps every hook point under its TransformerLens name. The logit lens projects
// the residual stream, as it accumulates layer by layer, onto the direction
// `W_U[" Peb"] - W_U[" Rachel"]` (through the final norm, with its scale frozen at the cached value):
// where does the model decide?

// %%
let tokens = model.to_tokens(PET, None)?;
let pairs = model.answer_pairs(&[(" Peb", " Rachel")])?;
let (logits, cache) = model.run_with_cache(&tokens, None)?;
let diff = metrics::logit_diff(&model.gather_last(&logits, &tokens)?, &pairs)?;
println!("logit difference ' Peb' - ' Rachel': {:.4}", diff[0]);
println!("blocks.0.attn.hook_pattern: {:?}", cache.get("blocks.0.attn.hook_pattern")?.dims());
let dirs = model.logit_diff_directions(&pairs)?;
let acc = cache.accumulated_resid(None, true, Pos::Last)?;
let lens = model.logit_attribution(&cache, &acc, &dirs)?;
let x: Vec<f32> = (0..lens.values.len()).map(|i| i as f32 / 2.0).collect();
Figure::line(x, vec![("logit diff".into(), lens.values.clone())], Some(lens.labels.clone()),
    "Logit difference from the accumulated residual stream")
    .axes("layer", "logit diff").evcxr_display();

// %% [markdown]
// ## Activation patching
//
// Swap the last two sentences ("Pebbles is a cat. Rachel is a human.") to corrupt the prompt, then put
// the clean residual stream back one (layer, position) at a time. 1 means the clean logit difference
// is fully restored, 0 means no effect. The sweep is exact and only recomputes what a patch can change.

// %%
const SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";
let corrupt = model.to_tokens(SWAPPED, None)?;
let patcher = Patcher::new(&model, &tokens, &corrupt, metrics::logit_diff_metric(&pairs))?;
let grid = patcher.sweep(PatchTarget::ResidPre)?;
println!("clean {:.3}, corrupted {:.3}; sweep {:.1} s ({:.0} forward-equivalents instead of {})",
    grid.clean, grid.corrupted, grid.seconds, grid.forward_equivalents, grid.naive_forwards);
grid.figure("Logit Difference From Patched Residual Stream", Some(model.position_labels(&tokens, 0)?)).evcxr_display();

// %% [markdown]
// The patcher holds both runs' caches and shares the model, so it lives on in this notebook: a sweep
// over another hook point costs only the sweep.

// %%
let attn = patcher.sweep(PatchTarget::AttnOut)?;
println!("attn_out sweep {:.1} s; strongest cells: {:?}", attn.seconds, attn.strongest(3));
attn.figure("Logit Difference From Patched Attention Output", Some(model.position_labels(&tokens, 0)?)).evcxr_display();

// %% [markdown]
// ## Attention patterns
//
// Which heads write the answer? Per-head direct logit attribution ranks them; the viewer shows the
// patterns of the top three (pick a head, hover a cell).

// %%
let heads = cache.stack_head_results(&model, None, Pos::Last)?;
let attr = model.logit_attribution(&cache, &heads, &dirs)?;
let mut order: Vec<usize> = (0..attr.values.len()).collect();
order.sort_by(|&a, &b| attr.values[b].total_cmp(&attr.values[a]));
let top: Vec<usize> = order.into_iter().take(3).collect();
for &i in &top { println!("{}: {:+.3}", attr.labels[i], attr.values[i]); }
let str_tokens = model.ids_to_str_tokens(tokens.row(0)?)?;
let mut patterns = Vec::new();
for &i in &top {
    let (l, h) = (i / model.cfg.n_heads, i % model.cfg.n_heads);
    let p = cache.at(HookPoint::Pattern(l))?.i((0, h))?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    patterns.push(p);
}
let labels: Vec<String> = top.iter().map(|&i| attr.labels[i].clone()).collect();
AttentionView::new("Top heads by direct logit attribution", str_tokens, patterns, labels)?.evcxr_display();

// %% [markdown]
// ## Where next
//
// - `notebooks/` holds one notebook per source experiment.
// - `cargo doc --open -p candlelens` documents every function with TransformerLens's names and shapes.
