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
// # The pet-analogy patching study
//
// Reproduces `shared/seeds/002_a10da29a1469ef09.txt` ("Analyze GPT-2-Small / GPT-2-Large") step by
// step. The source runs GPT-2 **small** first (loss, four `test_prompt`s, the number sequence's logit
// difference, logit lens, per-head attribution and attention, the layer-9 attention patterns, then the
// pet analogy), then GPT-2 **large** (loss, eighteen `test_prompt`s, the pet analogy with the check
// that the final residual stream's attribution is the logit difference, per-layer and per-head
// attribution, and all the activation patching).
//
// Offline both roles are played by the embedded Gemma 3 270M (loaded once); with
// `CANDLELENS_MODEL_SET=source` the notebook loads GPT-2 small and GPT-2 large from the hub, as the
// source did. Every number the source printed is printed beside ours as `(source: …)`; they agree
// only for the source's models.
//
// The source loaded its models with TransformerLens's `from_pretrained`, which processes the weights
// by default (folds the norms' weights into the matrices that read them, centres the weights that
// write to the residual and the unembedding, folds the value biases into `b_O`). So do we
// (`Processing::transformer_lens_defaults()`): the probabilities are unchanged, the printed logits
// carry TransformerLens's per-position offset, and the per-head attributions are TransformerLens's.

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::{metrics, notebook};
use candlelens::analysis::LogitDiffRun;
use candlelens::notebook::vs_source;

// %%
let small = notebook::load_processed("gpt2", "gemma-3-270m", Processing::transformer_lens_defaults())?;
let bos = TestPromptOptions { prepend_bos: Some(true), ..Default::default() };
let large = if notebook::use_source_models() { notebook::load_processed("gpt2-large", "gemma-3-270m", Processing::transformer_lens_defaults())? } else { small.clone() };
if !notebook::use_source_models() { println!("the embedded model plays both GPT-2 small's and GPT-2 large's parts"); };

// %% [markdown]
// ## GPT-2 small
//
// ### Loss on "1 2 3 4" (with BOS)

// %%
vs_source("Model loss (small)", format!("{:.4}", small.loss(&small.to_tokens("1 2 3 4", Some(true))?)?), "2.1871");

// %% [markdown]
// ### Test prompts
//
// `test_prompt(prompt, answer, prepend_bos=True)` as the source calls it. The prompt and the answer
// are scored exactly as written: where a tokenizer writes `" 5"` as `" "` + `"5"` (Gemma, SmolLM2),
// both tokens are scored and the table's probability is that of the whole answer. The source's
// column quotes its top token and the answer's rank.

// %%
notebook::test_prompts(&small, &[
    ("1 2 3 4", " 5", "\" 5\" 96.17%, rank 0"),
    ("2 4", " 6", "top \"/\" 10.63%; \" 6\" rank 8, 2.24%"),
    ("Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is", " Peb", "\" Peb\" 70.16%, rank 0"),
    ("The human is Mary. The dog is Fido. The pet is Fido. The human is Rachel. The dog is Pebbles. The pet is", " Peb", "\" Peb\" 13.43%, rank 0"),
], &bos, "test_prompt on the small model")?.evcxr_display();

// %% [markdown]
// ### Number sequence: logit difference and logit lens
//
// After "1 2 3 4" the source compares `" 5"` with `" Next"`. A logit difference needs each answer to
// be one token: where `" 5"` is two for this tokenizer, the space moves to the end of the prompt and
// `"5"` is compared with `"Next"` — the same text, one token later (the note says so). The logit lens
// reads the accumulated residual stream (final norm applied with its cached scale) along
// `W_U[correct] - W_U[incorrect]`, a line over half-layers as in the source.

// %%
let (seq_prompt, seq_answers, note) = notebook::adapt_answers(&small, "1 2 3 4", &[" 5", " Next"]);
if let Some(n) = note { println!("note: {n}"); }
let seq = LogitDiffRun::new(&small, &[seq_prompt.as_str()], &[(seq_answers[0].as_str(), seq_answers[1].as_str())], Some(true))?;
println!("Per prompt logit difference: {:?}", seq.per_prompt);
vs_source("Average logit difference (small)", format!("{:.4}", seq.logit_diff), "5.4894");
seq.logit_lens(&small)?.lens_figure("Logit Difference From Accumulate Residual Stream").evcxr_display();

// %% [markdown]
// ### Per-head attribution and the top heads' attention
//
// Each head's direct contribution to the logit difference, then the attention patterns of the three
// most positive and the three most negative heads (pick a head, hover a cell).

// %%
let seq_heads = seq.per_head(&small)?;
seq_heads.head_figure(small.cfg.n_layers, small.cfg.n_heads, "Logit Difference From Each Head")?.evcxr_display();

// %%
println!("top positive: {:?}", seq_heads.top(3));
AttentionView::from_cache(&small, &seq.cache, 0, &seq_heads.top_heads(3)?, "Top 3 Positive Logit Attribution Heads")?.evcxr_display();

// %%
println!("top negative: {:?}", seq_heads.bottom(3));
AttentionView::from_cache(&small, &seq.cache, 0, &seq_heads.bottom_heads(3)?, "Top 3 Negative Logit Attribution Heads")?.evcxr_display();

// %% [markdown]
// ### Layer 9, every head, on "1 2 3 4"
//
// The source's `gpt2_cache["pattern", 9, "attn"]` on exactly "1 2 3 4" (with BOS).

// %%
let l9_tokens = small.to_tokens("1 2 3 4", Some(true))?;
let (_, l9_cache) = small.run_with_cache(&l9_tokens, Some(HookPoint::Pattern(9).into()))?;
let l9_heads: Vec<(usize, usize)> = (0..small.cfg.n_heads).map(|h| (9, h)).collect();
AttentionView::from_cache(&small, &l9_cache, 0, &l9_heads, "Layer 9 Head Attention Patterns")?.evcxr_display();

// %% [markdown]
// ### The pet analogy on the small model
//
// "... Rachel is a human. Pebbles is a cat. The pet of this family is" → `" Peb"` rather than
// `" Rachel"`.

// %%
const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
let pet_small = LogitDiffRun::new(&small, &[PET], &[(" Peb", " Rachel")], Some(true))?;
vs_source("Average logit difference (small)", format!("{:.4}", pet_small.logit_diff), "5.5811");
pet_small.logit_lens(&small)?.lens_figure("Logit Difference From Accumulate Residual Stream").evcxr_display();

// %%
let pet_small_heads = pet_small.per_head(&small)?;
pet_small_heads.head_figure(small.cfg.n_layers, small.cfg.n_heads, "Logit Difference From Each Head")?.evcxr_display();

// %%
println!("top positive: {:?}", pet_small_heads.top(3));
AttentionView::from_cache(&small, &pet_small.cache, 0, &pet_small_heads.top_heads(3)?, "Top 3 Positive Logit Attribution Heads")?.evcxr_display();

// %%
println!("top negative: {:?}", pet_small_heads.bottom(3));
AttentionView::from_cache(&small, &pet_small.cache, 0, &pet_small_heads.bottom_heads(3)?, "Top 3 Negative Logit Attribution Heads")?.evcxr_display();

// %% [markdown]
// ## GPT-2 large
//
// ### Loss and test prompts
//
// The eighteen prompts the source tries on the large model, and how the tokenizer splits
// `"  Pebbles"` (two leading spaces). The source's two empty `test_prompt("", "")` calls printed
// nothing and are left out.

// %%
vs_source("Model loss (large)", format!("{:.4}", large.loss(&large.to_tokens("1 2 3 4", Some(true))?)?), "2.5091");
vs_source("to_str_tokens(\"  Pebbles\")", format!("{:?}", large.to_str_tokens("  Pebbles", Some(true))?), "['<|endoftext|>', ' ', ' Peb', 'bles']");

// %%
notebook::test_prompts(&large, &[
    ("1 2 3 4", " 5", "\" 5\" 96.91%, rank 0"),
    ("2 4", " 6", "top \" 5\" 8.82%; \" 6\" not in the top 10"),
    ("2 4 6", " 8", "top \" 7\" 13.95%; \" 8\" rank 1, 8.17%"),
    ("2 4 6 8", " 10", "top \" 9\" 24.26%; \" 10\" rank 1, 18.25%"),
    ("Monday Tuesday Wednesday", " Thursday", "\" Thursday\" 99.20%, rank 0"),
    ("Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is", " Peb", "\" Peb\" 88.42%, rank 0"),
    ("Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is", " Peb", "top \" Rachel\" 74.65%; \" Peb\" rank 1, 4.03%"),
    ("When John and Mary went to the shops, John gave the bag to", " Mary", "\" Mary\" 62.49%, rank 0"),
    ("When Mary and John went to the shops, John gave the bag to", " Mary", "\" Mary\" 77.37%, rank 0"),
    ("Mary is a teacher. Fido is a student. The child is Fido. Pebbles is a student. Rachel is a teacher. The child is", " Peb", "top \" Rachel\" 48.08%; \" Peb\" 29.16%"),
    ("Mary. Fido. Fido. Pebbles. Rachel. ", " Rachel", "top \" \" 68.21%"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is Y. Rachel is X. Z is ", " Peb", "top \"____\" 31.26%"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is Y. Rachel is X. Z is", " Peb", "top \" F\" 37.21%"),
    ("Mary is X. Fido is Y. Z is Fido. Pebbles is X. Rachel is Y. Z is", " Peb", "top \" F\" 34.41%; \" Peb\" rank 4, 3.29%"),
    ("Mary is the hero. Fido is the mentor. The main character is Mary. Pebbles is the hero. Rachel is the mentor. The main character is", " Peb", "top \" Rachel\" 54.54%; \" Peb\" 24.94%"),
    ("Mary is X. Fido is Y. Z is Fido. John is Y. Larry is X. Z is John. Pebbles is X. Rachel is Y. Z is", " Peb", "top \" Rachel\" 49.74%; \" Peb\" 18.71%"),
    ("The human is Mary. The dog is Fido. The pet is Fido. The dog is Pebbles. The human is Rachel. The pet is", " Peb", "top \" Rachel\" 35.58%; \" Peb\" 13.47%"),
    ("The human is Mary. The dog is Fido. The pet is Fido. The human is Rachel. The dog is Pebbles. The pet is", " Peb", "\" Peb\" 90.00%, rank 0"),
], &bos, "test_prompt on the large model")?.evcxr_display();

// %% [markdown]
// ### The pet analogy, and the check that the final residual stream carries the logit difference
//
// The final residual stream, through the final norm, dotted with `W_U[" Peb"] - W_U[" Rachel"]`,
// should give back the logit difference. What it leaves out is a constant: the final norm's bias and
// the unembedding bias along that direction (GPT-2's LayerNorm has a bias; RMSNorm models have
// none), computed from the weights below. The source printed its check from a run with two prompts
// (the pet prompt and its sentence-swapped version, both scored " Peb" − " Rachel": 0.8093 =
// (4.5368 − 2.9183) / 2), so that batch is run here for the like-for-like numbers: the gap between
// the calculated and the original value should be minus the bias term.

// %%
let pet = LogitDiffRun::new(&large, &[PET], &[(" Peb", " Rachel")], Some(true))?;
vs_source("Average logit difference (large)", format!("{:.4}", pet.logit_diff), "4.5368");
let final_resid = pet.cache.accumulated_resid(None, false, Pos::Last)?;
let calculated = *large.logit_attribution(&pet.cache, &final_resid, &pet.directions)?.values.last().expect("final_post");
let bias = metrics::mean(&large.logit_diff_bias(&pet.pairs)?);
println!("one prompt: calculated {calculated:.4}, bias along the direction {bias:+.4}, calculated + bias = {:.4} = the logit difference {:.4} (gap {:.2e})",
    calculated + bias, pet.logit_diff, (calculated + bias - pet.logit_diff).abs());
// the source's check ran on two prompts: the pet prompt and its sentence-swapped version
{
    const PET_SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";
    let two = LogitDiffRun::new(&large, &[PET, PET_SWAPPED], &[(" Peb", " Rachel")], Some(true))?;
    let resid = two.cache.accumulated_resid(None, false, Pos::Last)?;
    let calc2 = *large.logit_attribution(&two.cache, &resid, &two.directions)?.values.last().expect("final_post");
    let bias2 = metrics::mean(&large.logit_diff_bias(&two.pairs)?);
    vs_source("Calculated average logit diff (2-prompt batch)", format!("{calc2:.4}"), "1.1993");
    vs_source("Original logit difference (2-prompt batch)", format!("{:.4}", two.logit_diff), "0.8093");
    vs_source("gap (original − calculated)", format!("{:+.4}", two.logit_diff - calc2), "−0.3900 (0.8093 − 1.1993)");
    println!("bias term along the direction: {bias2:+.4} (the gap should equal it: difference {:.2e})", (two.logit_diff - calc2 - bias2).abs());
};
pet.logit_lens(&large)?.lens_figure("Logit Difference From Accumulate Residual Stream").evcxr_display();

// %% [markdown]
// ### Per-layer attribution
//
// Each component's direct contribution (`decompose_resid`: embeddings, then every layer's attention
// and MLP output), as the source's line.

// %%
let per_layer = pet.per_layer(&large)?;
for (label, _, v) in per_layer.top(3) { println!("largest: {label} {v:+.3}"); }
for (label, _, v) in per_layer.bottom(2) { println!("most negative: {label} {v:+.3}"); }
per_layer.line_figure("Logit Difference From Each Layer").evcxr_display();

// %%
let pet_heads = pet.per_head(&large)?;
pet_heads.head_figure(large.cfg.n_layers, large.cfg.n_heads, "Logit Difference From Each Head")?.evcxr_display();

// %%
println!("top positive: {:?}", pet_heads.top(3));
AttentionView::from_cache(&large, &pet.cache, 0, &pet_heads.top_heads(3)?, "Top 3 Positive Logit Attribution Heads")?.evcxr_display();

// %%
println!("top negative: {:?}", pet_heads.bottom(3));
AttentionView::from_cache(&large, &pet.cache, 0, &pet_heads.bottom_heads(3)?, "Top 3 Negative Logit Attribution Heads")?.evcxr_display();

// %% [markdown]
// ## Activation patching of the residual stream (large model)
//
// Run the corrupted prompt, put the clean `resid_pre` back at one (layer, position), and measure
// `(patched - corrupted) / (clean - corrupted)` of the logit difference: 1 = the clean answer is
// fully restored, 0 = no effect. A corruption is usable only if it lowers the logit difference; each
// one is checked before any sweep.
//
// ### Corrupt by swapping sentences
//
// "Pebbles is a cat. Rachel is a human."

// %%
let pet_t = large.to_tokens(PET, Some(true))?;
let pet_pairs = large.answer_pairs(&[(" Peb", " Rachel")])?;
let pet_labels = large.position_labels(&pet_t, 0)?;
const SENTENCE_SWAP: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";
let swap_t = large.to_tokens(SENTENCE_SWAP, Some(true))?;
if let Some(p) = notebook::checked_patcher(&large, &pet_t, &swap_t, metrics::logit_diff_metric(&pet_pairs), Some("-2.9183, 4.5368"))? {
    let grid = p.sweep(PatchTarget::ResidPre)?;
    println!("{}", grid.summary(Some(&pet_labels)));
    grid.figure("Logit Difference From Patched Residual Stream", Some(pet_labels.clone())).evcxr_display();
}
println!("source's reading (GPT-2 large): early and middle layers attend negatively to Rachel, positively to Pebbles (esp 'bles'), and then attention moves so that later layers attend to the last token 'is'");

// %% [markdown]
// ### Corrupt by switching words
//
// "Rachel is a cat. Pebbles is a human." The source measured this corruption, found corrupted >
// clean, called it a bad input and did not patch it; the verdict below is computed for the model run,
// and a sweep runs only if this model's logit difference clearly drops (beyond the source).

// %%
const WORD_SWAP: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a cat. Pebbles is a human. The pet of this family is";
let word_t = large.to_tokens(WORD_SWAP, Some(true))?;
if let Some(p) = notebook::checked_patcher(&large, &pet_t, &word_t, metrics::logit_diff_metric(&pet_pairs), Some("5.1553, 4.5368 → rejected"))? {
    println!("for this model the word swap does lower the logit difference; the source did not patch it, so this sweep is beyond the source");
    let grid = p.sweep(PatchTarget::ResidPre)?;
    println!("{}", grid.summary(Some(&pet_labels)));
    grid.figure("Logit Difference From Patched Residual Stream (word swap, not in the source)", Some(pet_labels.clone())).evcxr_display();
};

// %% [markdown]
// ### The IOI batch
//
// The source's patching demo batch: eight prompts, each corrupted by swapping the subject's name with
// its partner's. The source computed only the corrupted logit difference here (its "clean 4.5368"
// is the pet prompt's value carried over) and ran no sweep; so does this notebook.

// %%
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
    let c: Vec<&str> = ioi_corrupt.iter().map(|s| s.as_str()).collect();
    let pairs = large.answer_pairs(&ioi_answers)?;
    let t = large.to_tokens(c.as_slice(), Some(true))?;
    let corrupted = metrics::mean(&metrics::logit_diff(&large.gather_last(&large.forward(&t)?, &t)?, &pairs)?);
    vs_source("Corrupted Average Logit Diff (IOI)", format!("{corrupted:.4}"), "-4.5051");
};

// %% [markdown]
// ### Number sequence: "1 2 3 5" against "1 2 3 4"
//
// The source compares `" 5"` with `" 6"` after "1 2 3 4" (clean), and corrupts the prompt to
// "1 2 3 5". It first checks with `test_prompt` that the corrupted prompt ranks `" 6"` above `" 5"`
// ("Since this corrupted sequence ranks 6 above 5, we'll use it"), which here means the corrupted
// logit difference is negative. Answers that are two tokens for this tokenizer are handled as above.

// %%
notebook::test_prompts(&large, &[("1 2 3 5", " 6", "\" 6\" 41.51%, rank 0; \" 5\" rank 6, 2.75%")], &bos, "test_prompt on the corrupted sequence")?.evcxr_display();

// %%
let (seq_clean, seq_ans, note) = notebook::adapt_answers(&large, "1 2 3 4", &[" 5", " 6"]);
let (seq_corrupt, _, _) = notebook::adapt_answers(&large, "1 2 3 5", &[" 5", " 6"]);
if let Some(n) = note { println!("note: {n}"); }
let seq_clean_t = large.to_tokens(seq_clean.as_str(), Some(true))?;
let seq_corrupt_t = large.to_tokens(seq_corrupt.as_str(), Some(true))?;
let seq_pairs = large.answer_pairs(&[(seq_ans[0].as_str(), seq_ans[1].as_str())])?;
if let Some(p) = notebook::checked_patcher(&large, &seq_clean_t, &seq_corrupt_t, metrics::logit_diff_metric(&seq_pairs), Some("-2.7137, 7.3265"))? {
    if p.corrupted_metric() < 0.0 {
        println!("the corrupted sequence ranks {:?} above {:?}: use it (as the source did)", seq_ans[1], seq_ans[0]);
    } else {
        println!("the corrupted sequence still ranks {:?} above {:?} for this model, unlike the source's", seq_ans[0], seq_ans[1]);
    }
    let grid = p.sweep(PatchTarget::ResidPre)?;
    let labels = large.position_labels(&seq_clean_t, 0)?;
    println!("{}", grid.summary(Some(&labels)));
    grid.figure("Logit Difference From Patched Residual Stream (1 2 3 5)", Some(labels)).evcxr_display();
}
println!("source's reading (GPT-2 large): all the layers outputting to the residual stream attend highly to the last token, the one that was changed");

// %%
notebook::test_prompts(&large, &[("1 2 3", " 4", "\" 4\" 94.97%, rank 0")], &bos, "test_prompt on \"1 2 3\"")?.evcxr_display();

// %% [markdown]
// ## Reading the figures
//
// The printed "strongest cells" lines say, for the model actually run, where patching restores the
// answer; the source's reading for GPT-2 large is printed under each sweep. A cell near 1 at an early
// layer and the position of " Peb"/"bles" means the information still sits at that token; cells near
// 1 at the final position in late layers mean it has moved to where the prediction is made.
