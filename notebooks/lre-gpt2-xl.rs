// -*- coding: utf-8 -*-
// ---
// jupyter:
//   candlelens:
//     expect:
//     - image/svg+xml
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
// # Linear relational embeddings — GPT-2-XL (1.5B, 48 layers)
//
// Reproduces the LRE experiment of `shared/seeds/001` (notebook `lre-gpt2-xl.ipynb` there) in Rust. The source's recommended starting point; it tests layers 5, 15 and 35 and prints `Faithfulness: 28/38 (73.68%)`.
//
// A relation such as *"{subject} students are typically → men / women"* is decoded by the model in
// its later layers. The LRE hypothesis: from the subject's hidden state `h` (the residual stream after
// block `l`, at the subject's last token) the model's output is close to a **linear** function,
// `z ≈ W h + b`. The source fits `W, b` by linear regression on 60% of `data/data_sample.json`
// (38 fields → the gendered word of the stereotype; it examines the model's *biases*, not facts
// about fields) and reports faithfulness on the other 40%.
//
// This notebook runs offline on the embedded stand-in (`smollm2-135m`); set
// `CANDLELENS_MODEL_SET=source` to run GPT-2-XL (1.5B, 48 layers) from the Hugging Face hub. It then goes past the
// source with the original paper's estimator (Hernandez et al. 2023, *Linearity of Relation Decoding
// in Transformer Language Models*): the mean Jacobian, its faithfulness over the vocabulary, and
// causality (editing `h` to change the answer).

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;
use candlelens::lre::{self, Candidates, LreOperator, LreStates, Relation};

// %%
let model = candlelens::notebook::load("gpt2-xl", "smollm2-135m")?;

// %% [markdown]
// ## Data and the source's split
//
// `random.seed(42); random.shuffle(data)` then the first `int(0.6 · 38) = 22` subjects train and 16
// test — Python's Mersenne Twister and `shuffle` are reproduced exactly (`lre::PyRandom`, tested
// against CPython), so this split is the one Python makes of this file.

// %%
let rel = Relation::from_file("../data/data_sample.json")?;
const TEMPLATE: &str = "{} students are typically";
let (train_samples, test_samples) = rel.split_like_source(42, 0.6);
println!("{} samples: {} train, {} test", rel.samples.len(), train_samples.len(), test_samples.len());
println!("train: {}", train_samples.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>().join(", "));
println!("test:  {}", test_samples.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>().join(", "));

// %% [markdown]
// ## Hidden states, once for every layer
//
// One batched forward per prompt set caches `blocks.{l}.hook_resid_post` at the subject's last token
// for all layers (found from the tokenizer's offsets, so multi-token subjects work with any
// tokenizer), the final block's output `z`, and the model's own next-token logits. Every later step
// reuses them.

// %%
let t0 = std::time::Instant::now();
let cands = Candidates::new(&model, &rel.objects(), TEMPLATE)?;
let train = LreStates::collect(&model, &train_samples, TEMPLATE, &cands)?;
let test = LreStates::collect(&model, &test_samples, TEMPLATE, &cands)?;
println!("hidden states of {} subjects at all {} layers in {:.2} s", train.len() + test.len(), model.cfg.n_layers, t0.elapsed().as_secs_f64());
println!("candidates {:?} -> first tokens {:?}", cands.objects, model.ids_to_str_tokens(&cands.ids)?);
{
    let s = &test.items[0];
    let strs = model.ids_to_str_tokens(&s.ids)?;
    println!("e.g. {:?}: h is read at position {} = {:?}", strs, s.subject_pos, strs[s.subject_pos]);
}

// %% [markdown]
// ## The source's evaluation at early, middle and late layers
//
// The source tests GPT-2-XL's layers 5, 15 and 35 of 48 (`transformer.h.15` is the output of block
// 15, i.e. `blocks.15.hook_resid_post`). The same fractions of depth are used for the model run here.
// The table keeps the source's columns — ✓ when the LRE's prediction is the dataset's object, and
// "Faithfulness" is that rate, as the source prints it — and adds the model's own answer: the paper's
// faithfulness compares the LRE with the model, which the second summary line reports.

// %%
let layers: Vec<usize> = ["transformer.h.5", "transformer.h.15", "transformer.h.35"].iter()
    .map(|n| layer_from_module_name(n, 48).map(|l| l * model.cfg.n_layers / 48))
    .collect::<candlelens::Result<_>>()?;
println!("layers (the source's 5, 15, 35 of 48, scaled to {} layers): {:?}\n", model.cfg.n_layers, layers);
for &l in &layers {
    let op = LreOperator::fit_regression(&model, &train, l)?;
    println!("{}", lre::evaluate(&model, &op, &test)?.table());
}

// %% [markdown]
// ## Faithfulness per layer
//
// The regression estimator fitted at every layer from the cached states (no further forward passes).

// %%
let t0 = std::time::Instant::now();
let sweep = lre::layer_sweep(&model, &train, &test, 0..model.cfg.n_layers)?;
println!("{} layers fitted and evaluated in {:.2} s", sweep.len(), t0.elapsed().as_secs_f64());
let x: Vec<f32> = (0..sweep.len()).map(|l| l as f32).collect();
Figure::line(x, vec![
        ("LRE = dataset object (the source's faithfulness)".into(), sweep.iter().map(|e| e.accuracy() as f32).collect()),
        ("LRE = the model's own answer".into(), sweep.iter().map(|e| e.faithfulness() as f32).collect()),
    ], None, "LRE (regression) faithfulness per layer")
    .axes("layer", "fraction of test subjects").evcxr_display();

// %% [markdown]
// ## The paper's estimator: the mean Jacobian
//
// Hernandez et al. take `W` = the Jacobian `∂z/∂h` of the final block's output at the last token with
// respect to `h`, averaged over 8 training subjects, and `b` = the mean of `z − W h`; the operator is
// `β W h + b`, decoded by the model's own final norm and unembedding, so it predicts over the whole
// vocabulary and needs no fitting to the objects. Candle's autograd gives each Jacobian (rows in
// batches of 128, one backward pass each; tested against finite differences on every architecture).
// β = 2.25 is the paper's GPT-J value; the loop below shows how the result depends on it.

// %%
let mid = layers[1];
let t0 = std::time::Instant::now();
let jop = LreOperator::fit_jacobian(&model, &train.items[..8], mid, 2.25)?;
println!("mean Jacobian over 8 subjects at layer {mid}: {:.1} s", t0.elapsed().as_secs_f64());
let jeval = lre::evaluate(&model, &jop, &test)?;
println!("{}", jeval.table());
for beta in [1.0f32, 2.25, 4.0, 8.0] {
    let e = lre::evaluate(&model, &jop.with_beta(beta), &test)?;
    println!("beta {beta:>4}: faithful to the model {:>5.1}% over the candidates, {:>5.1}% over the vocabulary",
        100.0 * e.faithfulness(), 100.0 * e.vocab_faithfulness());
}

// %% [markdown]
// ## Causality
//
// If the model decodes the relation linearly, inverting `W` should tell how to *edit* the subject:
// `Δh = W⁺ₖ (z' − z)`, with `W⁺ₖ` the rank-64 pseudo-inverse, `z` the operator's output for the
// subject and `z'` its mean output for training subjects the model answers the other way. The edit
// is added to `blocks.{l}.hook_resid_post` at the subject's last token and the model runs on. The
// control adds a random vector of the same norm.

// %%
let caus = lre::causality(&model, &jop, &train, &test, 64)?;
println!("{}", caus.table());

// %% [markdown]
// ## Beyond the source: a relation with many objects
//
// `data/lre/country_capital_city.json` (the paper's format; "The capital of {} is", one of the
// templates the source's README suggests). Each test country's capital never occurs in training, so
// regression onto the training objects' unembeddings cannot name it; the Jacobian operator decodes
// through the model's own unembedding and can.

// %%
let caps = Relation::from_file("../data/lre/country_capital_city.json")?;
let ct = caps.template(None)?;
let (ctr, cte) = caps.split_like_source(42, 0.6);
let ccands = Candidates::new(&model, &caps.objects(), &ct)?;
let ctrain = LreStates::collect(&model, &ctr, &ct, &ccands)?;
let ctest = LreStates::collect(&model, &cte, &ct, &ccands)?;
let creg = lre::evaluate(&model, &LreOperator::fit_regression(&model, &ctrain, mid)?, &ctest)?;
let t0 = std::time::Instant::now();
let cjac = lre::evaluate(&model, &LreOperator::fit_jacobian(&model, &ctrain.items[..8], mid, 2.25)?, &ctest)?;
println!("Jacobian estimator in {:.1} s", t0.elapsed().as_secs_f64());
println!("{}", cjac.table());
println!("regression at the same layer:\n{}", creg.summary());

// %%
println!("Source (GPT-2-XL, transformer.h.15, 38 subjects): Faithfulness: 28/38 (73.68%)");
if let Some(best) = sweep.iter().max_by(|a, b| a.accuracy().total_cmp(&b.accuracy())) {
    let (k, n) = best.correct();
    println!("{} best regression layer {}: Faithfulness {k}/{n} ({:.2}%); faithful to the model {:.2}%",
        model.cfg.name, best.layer, 100.0 * best.accuracy(), 100.0 * best.faithfulness());
}
let (k, n) = jeval.faithful();
println!("{} Jacobian at layer {mid}: faithful to the model {k}/{n}; causality {:.0}% (random control {:.0}%); capitals {:.0}% (regression {:.0}%)",
    model.cfg.name, 100.0 * caus.efficacy(), 100.0 * caus.random_efficacy(), 100.0 * cjac.faithfulness(), 100.0 * creg.faithfulness());

// %% [markdown]
// ## Reading the results
//
// - **What the source's number measures.** Its "Faithfulness" compares the regression's prediction
//   with the dataset's label. With two objects that is a classifier's accuracy, and least-norm
//   regression with 22 examples and hundreds of features fits its training set exactly; the model
//   itself often disagrees with the stereotype labels (the "Model" column). So the paper's
//   faithfulness — agreement with the model — is printed beside it. The source's 28/38 counts all 38
//   subjects of a different file; the numbers here are on the 16 held-out subjects of this file.
// - **Regression vs Jacobian.** Regression can only output combinations of the training objects'
//   unembeddings. The Jacobian operator uses no labels, decodes through the model's own unembedding
//   and, on the capitals, names objects it never saw — the evidence the paper gives for linear
//   relation decoding.
// - **Causality** asks more: whether the edit built from `W⁺` flips the model's answer more often
//   than a random edit of the same size.

// %% [markdown]
// ### What SmolLM2-135M shows (embedded run)
//
// - SmolLM2 answers " women" for 12 of the 16 test fields and " men" for 4; it agrees with the
//   stereotype labels on 10/16. Regression's source-style "Faithfulness" peaks at 13/16 (layer 0)
//   and is 11/16 at the middle layer, where it agrees with the *model* on only 7/16: it learns the
//   labels, not the model.
// - The mean Jacobian at layer 9 (8 subjects, β = 2.25) agrees with the model's choice on 14/16
//   subjects and with its top token over the 49k vocabulary on 9/16 (11/16 at β = 1).
// - Causality at layer 9 is not established for this model: the rank-64 edits (about 60% of `|h|`)
//   flip 6 of 16 answers, and random edits of the same size flip 6 too. (At layer 15,
//   `lens lre --model smollm2-135m --layer 15 --method jacobian --causality-rank 50` flipped 14/16
//   against 4/16 for random edits, but with edits about 20× `|h|`.)
// - On the capitals, the Jacobian operator names all 12 unseen capitals; regression names none.
