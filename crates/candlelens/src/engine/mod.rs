//! The engine: one generic hookable forward pass that every architecture family maps its
//! weights into — **run** and **cache** in load → run → cache → analyse → show.
//!
//! - [`config`] describes an architecture as switches ([`ModelConfig`]); [`weights`] holds its
//!   tensors in the canonical layout.
//! - [`ops`] holds the small shared operations (hook firing, `linear`, activations, norms);
//!   [`rope`] the rotary tables and causal masks; [`block`] one transformer block as a view over
//!   one layer's weights ([`block::Block`]); [`jvp`] its forward-mode derivative; [`moe`] the
//!   sparse mixture-of-experts MLP. Where candle's CPU ops are slow the forward runs the
//!   crate's own kernels: [`kernels`] (products, the fused gate), and the internal
//!   `attention_kernel` (copy-free attention), `norm_kernel` (hooked norms) and `fastmath`
//!   (a vectorised `exp`), each falling back to candle's ops where it does not apply.
//! - [`model`] is [`HookedTransformer`]: embed, blocks, unembed, and the TransformerLens entry
//!   points (`run_with_cache`, `run_with_hooks`, `to_tokens`, ...).
//! - [`tokenizer`] and [`tokens`] turn text into right-padded batches; [`hooks`] names every
//!   hook point the TransformerLens way; [`cache`] records them; [`generate`] samples with a KV
//!   cache.
//!
//! [`ModelConfig`]: config::ModelConfig
//! [`HookedTransformer`]: model::HookedTransformer

pub(crate) mod attention_kernel;
pub mod block;
pub mod cache;
pub mod config;
pub(crate) mod fastmath;
pub mod generate;
pub mod grad_ops;
pub mod hooks;
pub mod jvp;
pub mod kernels;
pub mod malloc;
pub mod model;
pub mod moe;
pub(crate) mod norm_kernel;
pub mod ops;
pub mod rope;
pub mod split;
pub mod threads;
pub mod tokenizer;
pub mod tokens;
pub mod user_hooks;
pub mod weight_views;
pub mod weights;
