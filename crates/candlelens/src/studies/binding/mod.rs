//! Entity binding and binding-ID vectors: the entity-binding notebook (seed 004) as a library.
//!
//! Feng & Steinhardt (2023), "How do language models bind entities in context?": a context
//! binds entities `E_k` to attributes `A_k` ("Leo lives in the capital city ofVietnam. Dean
//! lives in the capital city ofPeru."), and a question asks for the attribute of one entity.
//! Their *binding-ID* hypothesis: the residual stream at `E_k` and at `A_k` carries a vector
//! `b_E(k)` / `b_A(k)` that depends only on the index `k` of the pair, and the model answers by
//! matching an entity's binding ID with an attribute's. The difference of means over prompts
//!
//! ```text
//! Δ_E[l] = mean resid_post_l[E_0] - mean resid_post_l[E_1]      [n_layers, d_model]
//! Δ_A[l] = mean resid_post_l[A_0] - mean resid_post_l[A_1]
//! ```
//!
//! estimates `b_E(0) - b_E(1)` (and `b_A(0) - b_A(1)`) at the output of every block `l`
//! ([`BindingMeans::collect`], [`BindingMeans::vectors`]). An [`Intervention`] adds multiples
//! of `Δ` at entity / attribute positions of every layer's `hook_resid_post`:
//!
//! - [`Intervention::subtract`] — the source's: `E_1 -= Δ_E`, `A_1 -= Δ_A` at every layer,
//!   i.e. the second pair is moved one further step along the binding direction, away from
//!   the first pair's IDs. If binding IDs are what the model matches, the pair stays bound (both
//!   members moved alike) and the answer should survive.
//! - the paper's swaps: [`Intervention::swap_entities`] (`E_0 -= Δ_E`, `E_1 += Δ_E`: the
//!   entities exchange binding IDs, so the question about `E_k` should now get the other
//!   attribute), [`Intervention::swap_attributes`], and [`Intervention::swap_both`] (both pairs
//!   exchange IDs together: the binding, and the answer, should stay).
//! - the control: [`BindingVectors::random_like`] — random directions with `Δ`'s norm at
//!   every layer, applied like the real vectors.
//!
//! Prompts follow the source exactly ([`Task`]), sampled like its `get_prompts` with Python's
//! `random` module reproduced ([`PyRandom`]): `random.seed(s)` before the source's code gives
//! the same prompts as [`sample_prompts`] with `PyRandom::seed(s)`. Entity and attribute
//! positions come from the tokenizer's offsets ([`find_positions`]), not from fixed offsets.
//!
//! ```no_run
//! use candlelens::prelude::*;
//! use candlelens::binding::{self, BindingBatch, BindingLists, BindingMeans, Intervention, PyRandom, Task};
//! # fn main() -> candlelens::Result<()> {
//! let model = HookedTransformer::from_pretrained("smollm2-135m")?;
//! let lists = BindingLists::from_file("data/entity_binding/lists.json")?.one_token(&model)?;
//! let mut rng = PyRandom::seed(0);
//! let prompts = binding::sample_prompts(&mut rng, 100, &lists.names, &lists.countries,
//!                                       Task::Capital, Some(&lists.capitals), 2)?;
//! let capital = BindingBatch::new(&model, prompts)?;
//! let (means, clean) = BindingMeans::collect(&model, &capital)?;   // one forward
//! let vectors = means.vectors()?;                                     // Δ_E, Δ_A [n_layers, d_model]
//! let after = binding::intervene(&model, &capital, &vectors, &Intervention::subtract())?;
//! println!("accuracy {:.2} -> {:.2}, logit diff {:.2} -> {:.2}",
//!          clean.accuracy, after.accuracy, clean.logit_diff, after.logit_diff);
//! # Ok(()) }
//! ```

// The data flow of the experiment, one file a step: lists -> prompts -> positions -> vectors
// (means over a batch) -> interventions -> evaluation.
mod eval;
mod intervention;
mod lists;
mod positions;
mod prompts;
mod vectors;

pub use eval::{clean_capital, evaluate, evaluate_logits, Evaluation};
pub use intervention::{intervene, Intervention, Role};
pub use lists::{is_one_token, one_token_rows, BindingLists};
pub use positions::{find_positions, BindingBatch, BindingPositions};
pub use prompts::{sample_prompts, BindingPrompt, PromptText, Task};
pub use vectors::{BindingMeans, BindingVectors};

/// Python's `random` module (CPython's Mersenne Twister and seeding), shared with the LRE
/// notebook: the sampler of [`sample_prompts`].
pub use crate::util::pyrandom::PyRandom;
