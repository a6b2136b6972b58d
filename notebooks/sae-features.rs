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
// # Reading a model through sparse features
//
// A sparse autoencoder (SAE) rewrites one activation of a model — here the residual stream after
// block 9 of Gemma 3 270M — as a sparse sum of learned directions, its *features*, most of which
// stand for one recognisable thing (Bricken et al. 2023, *Towards Monosemanticity*; Templeton et
// al. 2024). This notebook does the SAELens workflow end to end on the CPU:
//
// 1. cut a text corpus into contexts and cache the activations at the SAE's hook point;
// 2. get an SAE — offline, train a TopK SAE (Gao et al. 2024) on those activations; with the hub
//    (`CANDLELENS_MODEL_SET=source`), load Gemma Scope 2's SAE for the same point;
// 3. evaluate it as SAELens does (L0, explained variance, how much next-token loss survives);
// 4. splice it into the model and read one prompt through its features;
// 5. look at features: where they fire over the corpus, what they write into the logits;
// 6. attribute a prediction to features, and check the attribution against exact ablation;
// 7. steer the model by clamping a feature.
//
// The source experiment `shared/seeds/004_92f6622c4bb0f849.txt` ("Exploring the Entity Binding
// Circuit with SAEs") loads Gemma Scope's `gemma-scope-2b-pt-res-canonical` /
// `layer_20/width_16k/canonical` and shows latent 12082's dashboard; on Gemma 2 2B that is
// `Sae::from_pretrained(...)` and `FeatureView` below. The corpus here is the Python language
// reference that CPython ships (`scripts/fetch-models python-docs`, PSF License), so expect
// features for code, grammar rules and documentation prose.

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::util::corpus::Corpus;
use candlelens::sae::Sae;
use candlelens::sae::splice::Splice;
use candlelens::sae::train::{train_topk, TrainConfig};
use candlelens::sae::views::{density_histogram, top_features_table, FeatureView};
use candlelens::{metrics, notebook};

// %%
let model = notebook::load("google/gemma-3-270m", "gemma-3-270m")?;
let hook = HookPoint::ResidPost(9);

// %% [markdown]
// ## 1. Contexts and cached activations
//
// SAELens packs a corpus into contexts of a fixed length: the documents are tokenized, joined by
// BOS, and cut into windows, each starting with BOS. Each run below stops after block 9, and BOS
// positions are left out (their residual is the attention sink's, far larger than the rest). The
// last 16 contexts are held out for evaluation.

// %%
let corpus = Corpus::python_docs()?;
let contexts = corpus.contexts(&model, 64, 336)?;
let train_tokens = Tokens::new(contexts.rows()[..320].to_vec(), contexts.pad_id())?;
let held_out = Tokens::new(contexts.rows()[320..].to_vec(), contexts.pad_id())?;
let store = model.collect_activations(&train_tokens, hook, 32)?;
println!("{}: {} documents, {} characters", corpus.name, corpus.documents.len(), corpus.n_chars());
println!("{} contexts of 64 tokens; {} activations of width {} at {} in {:.1} s",
         train_tokens.batch(), store.len(), store.acts.dim(1)?, store.hook, store.seconds);

// %% [markdown]
// ## 2. The SAE
//
// Offline: a TopK SAE with 2,048 features, 32 active per token, trained with Adam on the cached
// activations (decoder rows kept at unit norm, `b_dec` started at the mean). With the hub: Gemma
// Scope 2's JumpReLU SAE with 16k features for the same hook point.

// %%
let (sae, report) = if notebook::use_source_models() {
    (Sae::from_pretrained("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium")?, None)
} else {
    let cfg = TrainConfig { d_sae: 2048, k: 32, lr: 1e-3, steps: 400, batch_size: 512, seed: 42 };
    let (sae, report) = train_topk(&store.acts, hook, &cfg)?;
    println!("trained in {:.1} s: fraction of variance unexplained {:.3}, {} of {} features dead",
             report.seconds, report.fvu, report.dead, cfg.d_sae);
    (sae, Some(report))
};
println!("SAE {}: d_in {}, d_sae {}", sae.source, sae.d_in(), sae.d_sae());

// %%
match &report {
    Some(r) => Figure::line((0..r.losses.len()).map(|i| i as f32).collect(),
                            vec![("batch MSE".to_string(), r.losses.iter().map(|l| l.log10()).collect())],
                            None, "Training loss (log10 of the batch mean squared error)")
        .axes("step", "log10 MSE").evcxr_display(),
    None => println!("(a pretrained SAE: no training curve)"),
}

// %% [markdown]
// ## 3. How good is it?
//
// SAELens's evaluation on the held-out contexts: L0 (active features per token), the explained
// variance of the reconstruction, and the next-token loss with the reconstruction in place of the
// activation, between the model itself and zeroing the activation (CE loss score: 1 = nothing
// lost, 0 = as bad as ablating the layer's residual stream).

// %%
let eval = model.evaluate_sae(&sae, &held_out, 4)?;
let mut t = Table::new(&format!("SAE evaluation on {} held-out positions", eval.positions), ["metric", "value"]);
for (name, v) in [("L0", eval.l0), ("explained variance", eval.explained_variance),
                  ("CE loss without SAE", eval.ce_loss_without_sae), ("CE loss with SAE", eval.ce_loss_with_sae),
                  ("CE loss with ablation", eval.ce_loss_with_ablation), ("CE loss score", eval.ce_loss_score)] {
    t.row([name.to_string(), format!("{v:.3}")]);
}
t.evcxr_display();

// %% [markdown]
// How often each feature fires over the training contexts. Healthy SAEs have most features
// between 1e-4 and 1e-1; dead features never fire and dense ones fire on most tokens.

// %%
let density = store.feature_density(&sae)?;
density_histogram(&density, "Feature density over the cached activations").evcxr_display();

// %% [markdown]
// ## 4. One prompt through the features
//
// Spliced in with its error term (SAELens's default), the SAE leaves the model's output exactly as
// it was: the run continues with `reconstruction + error`. The cache holds the features under
// SAELens's names, `blocks.9.hook_resid_post.hook_sae_acts_post`.

// %%
let prompt = "def add(a, b):\n    return a +";
let tokens = model.to_tokens(prompt, None)?;
let plain = model.forward(&tokens)?;
let (spliced, sae_cache) = model.run_with_saes(&tokens, &mut [Splice::new(&sae)])?;
let drift = (&spliced - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
println!("tokens: {:?}", model.to_str_tokens(prompt, None)?);
println!("largest logit change with the SAE spliced in (error term on): {drift:.2e}");
let acts = sae_cache.get(&format!("{hook}.hook_sae_acts_post"))?.clone();
let last = tokens.max_len() - 1;
top_features_table(&acts, 0, last, 8, &format!("Strongest features at the last token ({:?})",
                   model.to_str_tokens(prompt, None)?[last]))?.evcxr_display();

// %% [markdown]
// ## 5. What two of them are
//
// A feature's view: the corpus contexts where it fires most (shaded by activation, the peak
// underlined), the tokens its decoder direction promotes and suppresses through the unembedding,
// and the spread of its activations. The views read the cached activations, so no model run is
// needed per feature.

// %%
let v: Vec<f32> = acts.i((0, last))?.to_vec1()?;
let mut order: Vec<usize> = (0..v.len()).filter(|&f| v[f] > 0.0).collect();
order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
FeatureView::from_store(&model, &sae, &store, order[0], 8, 8)?.evcxr_display();

// %%
FeatureView::from_store(&model, &sae, &store, order[1], 8, 8)?.evcxr_display();

// %% [markdown]
// ## 6. Which features make the prediction?
//
// The model should complete `return a +` with ` b`. Feature attribution scores every feature at
// every position by activation × gradient of the logit difference ` b` − ` a` (one forward, one
// backward): the first-order estimate of what ablating it would change. BOS is left out (an SAE
// trained without it fires there hugely and meaninglessly). The self-check ablates each of the
// strongest cells alone and measures the exact change.

// %%
let pairs = model.answer_pairs(&[(" b", " a")])?;
let metric = metrics::logit_diff_grad_metric(&pairs);
let attr = model.sae_feature_attribution(&tokens, &sae, &metric)?;
println!("logit difference ' b' − ' a': {:.3}", attr.metric);
let cells = attr.top_from(10, 1)?;
let check = model.verify_feature_attribution(&tokens, &sae, &metric, &attr, &cells)?;
println!("estimate vs exact ablation over the 10 strongest cells: correlation {:.3} ({:.1} s of ablation runs)",
         check.correlation, check.seconds);
check.table("Feature attribution (estimate of ablating it) beside exact ablation").evcxr_display();

// %% [markdown]
// ## 7. Editing the features together
//
// One feature rarely decides a confident prediction. Below, every cell the self-check measured
// (the ten strongest by attribution) is edited at once: zeroed, and doubled. Each edit moves the
// residual stream by the change in activation times the feature's decoder row; the table compares
// the model's next-token predictions.

// %%
let edit: Vec<(usize, usize, usize)> = cells.iter().map(|c| (c.batch, c.pos, c.feature)).collect();
let mut doubled = Splice::new(&sae).edit_features(move |a| {
    let mut out = a.clone();
    for &(b, p, f) in &edit {
        let x = out.i((b, p, f))?.to_scalar::<f32>()?;
        out = out.slice_assign(&[b..b + 1, p..p + 1, f..f + 1], &Tensor::full(2.0 * x, (1, 1, 1), a.device())?)?;
    }
    Ok(Some(out))
});
let edit: Vec<(usize, usize, usize)> = cells.iter().map(|c| (c.batch, c.pos, c.feature)).collect();
let (zeroed, _) = model.run_with_saes(&tokens, &mut [Splice::new(&sae).ablate_at(&edit)])?;
let (twice, _) = model.run_with_saes(&tokens, &mut [doubled])?;
let runs = [model.top_tokens(&plain.i((0, last))?, 8)?, model.top_tokens(&zeroed.i((0, last))?, 8)?,
            model.top_tokens(&twice.i((0, last))?, 8)?];
let mut t = Table::new(&format!("Next token after {prompt:?}, the {} attributed cells edited", edit.len()),
                       ["rank", "model", "cells zeroed", "cells doubled"]);
for r in 0..8 {
    let cell = |run: &Vec<candlelens::prompts::TopToken>| format!("{:?} {:.3}", run[r].token, run[r].prob);
    t.row([r.to_string(), cell(&runs[0]), cell(&runs[1]), cell(&runs[2])]);
}
t.evcxr_display();

// %% [markdown]
// ## What to trust
//
// Everything above is measured on the model and SAE actually run. The evaluation says how much of
// the model the SAE captures: features are a faithful reading only as far as the CE loss score
// goes, and the error term carries the rest. Attribution ranks features cheaply; the self-check's
// exact ablations say which of its numbers hold. A feature's meaning is a hypothesis from its
// contexts and logit effects; steering is one test of it.
