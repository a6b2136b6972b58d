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
// # The everyday research toolkit
//
// Four things most interpretability work does over and over, on the embedded SmolLM2-135M:
//
// 1. **steer** the model with a contrastive vector and measure what it does to what the model
//    says (Contrastive Activation Addition, Rimsky et al. 2024);
// 2. **probe** every layer for a property whose answer we know — here, whether a statement about
//    a capital city is true, and how many apples a basket holds — against a shuffled control
//    (Hewitt and Liang 2019);
// 3. use the probe's direction to **steer** the same property;
// 4. cache a corpus's activations **on disk** and read them back, and look at what one MLP
//    **neuron** responds to over it.
//
// Every number below is computed here; the methods are checked against Hugging Face and
// scikit-learn in the test suite (`tests/steering.rs`, `tests/probes.rs`, `tests/dataset.rs`).

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::dataset::{store_activations, ActivationDataset, StoreOptions};
use candlelens::prelude::*;
use candlelens::probes::{probe_layers, read_labelled, read_valued, regress_layers, ProbeOptions};
use candlelens::sae::views::FeatureView;
use candlelens::steering::{steering_sweep, target_probability};
use candlelens::util::corpus::Corpus;
use candlelens::{metrics, notebook};

// %%
let model = notebook::load("HuggingFaceTB/SmolLM2-135M", "smollm2-135m")?;

// %% [markdown]
// ## 1. A steering vector from contrastive prompts
//
// The vector is the mean residual stream entering block 6 at the last token of prompts that
// express joy, minus the same over prompts that express misery. Added with a coefficient at every
// position while the model generates, it should push the continuation towards joy. The raw
// mean difference is large (its norm is printed), so small coefficients already matter.

// %%
let positive = ["I love this, it is wonderful", "What a happy, joyful day", "This is the best news ever", "I feel great and full of hope"];
let negative = ["I hate this, it is awful", "What a sad, miserable day", "This is the worst news ever", "I feel terrible and full of dread"];
let joy = SteeringVector::contrastive_prompts(&model, "blocks.6.hook_resid_pre", &positive, &negative)?;
let prompts = ["I think that the weather today is", "My week at work has been", "The movie we watched last night was"];
let opts = GenerateOptions { max_new_tokens: 10, ..Default::default() };
let mut t = Table::new(&format!("Greedy continuations, steered with 2 × the joy vector (|v| = {:.2})", joy.norm()?), ["prompt", "plain", "steered"]);
for p in prompts {
    let tokens = model.to_tokens(p, None)?;
    let plain = model.generate_tokens(&tokens, &opts)?;
    let mut hooks = Steering::new().add(joy.clone(), 2.0).hooks(&model.cfg)?;
    let steered = model.generate_tokens_with(&tokens, &opts, &mut hooks)?;
    t.row([p.to_string(), model.to_string(&plain[0])?, model.to_string(&steered[0])?]);
}
t.evcxr_display();

// %% [markdown]
// Anecdotes are not measurements: the sweep below sets the coefficient from −4 to 4 and measures
// the probability the model gives, at the end of each prompt, to a set of positive words.

// %%
let words: Vec<u32> = [" good", " great", " happy", " wonderful", " beautiful"]
    .iter()
    .filter_map(|w| model.to_single_token(w).ok())
    .collect();
let batch = model.to_tokens(prompts.as_slice(), None)?;
let coefs = [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0];
let sweep = steering_sweep(&model, &batch, &joy, &coefs, &target_probability(&words), "p(positive word)")?;
sweep.figure().evcxr_display();

// %%
{
    let at = |c: f64| sweep.values[coefs.iter().position(|&x| x == c).unwrap()];
    println!("p(positive word): {:.4} at coefficient 0, {:.4} at +2, {:.4} at −2 (the vector's norm is {:.1}: large coefficients push the residual stream off the model's distribution)",
             at(0.0), at(2.0), at(-2.0), joy.norm()?);
};

// %% [markdown]
// ## 2. Probes per layer: is the statement true?
//
// `data/probes/capitals_true_false.jsonl` holds 60 statements, "The capital of France is Paris."
// (true) and the same country with another country's capital (false). A logistic probe per layer
// reads the residual stream after each block at the final token, trained on 45 and tested on the
// other 15 (Python's `random.seed(42)` split); the control is the same probe on shuffled labels.

// %%
let (texts, labels) = read_labelled("../data/probes/capitals_true_false.jsonl")?;
let statements = model.to_tokens(texts, None)?;
let layers: Vec<usize> = (0..model.cfg.n_layers).collect();
let probes = probe_layers(&model, &statements, &labels, "resid_post", &layers, &ProbeOptions::default())?;
probes.figure().evcxr_display();

// %%
let (best_layer, best_acc, best_control) = probes
    .layers
    .iter()
    .max_by(|a, b| a.test_acc.total_cmp(&b.test_acc))
    .map(|l| (l.layer, l.test_acc, l.control_test_acc))
    .unwrap();
let first = probes.layers.iter().find(|l| l.test_acc >= 0.9).map(|l| l.layer);
println!("best held-out accuracy {best_acc:.2} at layer {best_layer} (control {best_control:.2}); first layer at >= 0.9: {first:?}");

// %% [markdown]
// A property can be a number as well as a label. `data/probes/apple_counts.jsonl` holds 60 texts
// "The basket holds N apples" (N from 0 to 99); a ridge probe per layer (scikit-learn's
// `Ridge(alpha=10)` optimum) predicts N from the residual stream at the last token ("apples"),
// scored by held-out R², against the same probe on shuffled counts.

// %%
let (count_texts, counts) = read_valued("../data/probes/apple_counts.jsonl")?;
let count_tokens = model.to_tokens(count_texts, None)?;
let ridge_opts = ProbeOptions { alpha: 10.0, ..Default::default() };
let counting = regress_layers(&model, &count_tokens, &counts, "resid_post", &layers, &ridge_opts)?;
counting.figure().evcxr_display();

// %%
{
    let best = counting.layers.iter().max_by(|a, b| a.test_r2.total_cmp(&b.test_r2)).unwrap();
    println!("best held-out R² {:.2} at layer {} (control {:.2}); layer 0: {:.2}",
             best.test_r2, best.layer, best.control_test_r2, counting.layers[0].test_r2);
};

// %% [markdown]
// ## 3. The probe's direction as a steering vector
//
// If layer 14's probe found the model's own notion of truth, adding its direction should move
// how the model judges a false statement. The metric is the logit difference " true" − " false"
// after "… is Cairo. This statement is".

// %%
let layer = 14;
let w = probes.layers[layer].probe.direction.clone();
let unit = (&w / w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)?;
let truth = SteeringVector::new(HookPoint::ResidPost(layer), unit)?;
let judge = model.to_tokens("The capital of France is Cairo. This statement is", None)?;
let pair = [(model.to_single_token(" true")?, model.to_single_token(" false")?)];
let truth_sweep = steering_sweep(&model, &judge, &truth, &[-16.0, -8.0, 0.0, 8.0, 16.0], &metrics::logit_diff_metric(&pair), "logit(true) − logit(false)")?;
truth_sweep.figure().evcxr_display();

// %%
println!("logit(true) − logit(false): {:+.3} unsteered, {:+.3} with +16 × the truth direction, {:+.3} with −16 ×",
         truth_sweep.values[2], truth_sweep.values[4], truth_sweep.values[0]);

// %% [markdown]
// ## 4. Activations on disk, and what a neuron responds to
//
// The embedded Python documentation corpus, cut into 64-token contexts, stored at block 3's MLP
// neurons (`blocks.3.mlp.hook_post`) as safetensors shards with a manifest, then read back.

// %%
let dir = std::env::temp_dir().join(format!("candlelens-toolkit-{}", std::process::id()));
let corpus = Corpus::python_docs()?;
let store_opts = StoreOptions { context_size: 64, max_tokens: Some(16_384), progress: false, ..Default::default() };
let report = store_activations(&model, &corpus, &[HookPoint::MlpPost(3)], &dir, &store_opts)?;
let ds = ActivationDataset::open(&dir)?;
ds.verify()?;
let mut t = Table::new("The activation dataset", ["what", "value"]);
t.row(["rows per hook".to_string(), ds.n_rows().to_string()]);
t.row(["shards".to_string(), ds.manifest().plan.n_shards.to_string()]);
t.row(["width (d_mlp)".to_string(), ds.manifest().plan.hooks[0].d.to_string()]);
t.row(["written in".to_string(), format!("{:.1} s", report.seconds)]);
t.evcxr_display();

// %%
let contexts = corpus.contexts(&model, 64, 16_384 / 64)?;
let store = ds.to_store("blocks.3.mlp.hook_post", &contexts)?;
// the neuron with the largest activation anywhere in the dataset
let peak = store.acts.max(0)?.argmax(0)?.to_scalar::<u32>()? as usize;
FeatureView::neuron(&model, &store, peak, 6, 8)?.evcxr_display();

// %%
std::fs::remove_dir_all(&dir).ok();
println!("neuron {peak} of layer 3: its top contexts above, the tokens its W_out row promotes through W_U beside them");
