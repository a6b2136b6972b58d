//! Interpretability on top of the engine — **analyse** in load → run → cache → analyse → show.
//!
//! - [`analysis`]: residual-stream decompositions (accumulated, per layer, per head), logit
//!   attribution, residual directions.
//! - [`factored`]: low-rank products kept factored, and the per-head OV / QK circuits.
//! - [`metrics`]: logit differences over answer pairs and token groups, normalisation.
//! - [`prompts`]: `test_prompt`, how the model ranks an answer.
//! - [`patching`]: activation patching, an exact fast sweep and the one-forward-per-cell
//!   reference.
//! - [`readout`]: where a metric reads the logits, and how clean and corrupted positions
//!   align when the prompts' lengths differ.
//! - [`probes`]: logistic and linear probes per layer on a seeded split, with a control.
//! - [`steering`]: steering vectors (CAA's contrastive mean, ActAdd) added during runs and
//!   generation, and the effect of their coefficient on a metric.
//! - [`attribution`]: attribution patching (and its integrated-gradients variant) on every
//!   node at once, checked against the exact sweep.

pub mod analysis;
pub mod attribution;
pub mod factored;
pub mod metrics;
pub mod patching;
pub mod probes;
pub mod prompts;
pub mod readout;
pub mod steering;
