//! The engine: one generic hookable forward pass that every architecture family maps its
//! weights into — **run** and **cache** in load → run → cache → analyse → show.
//!
//! - [`config`] describes an architecture as switches ([`ModelConfig`]); [`weights`] holds its
//!   tensors in the canonical layout.
//! - [`model`] is [`HookedTransformer`]: embed → blocks → unembed, the TransformerLens entry
//!   points (`run_with_cache`, `run_with_hooks`, `to_tokens`, …), generation with a KV cache
//!   and the weight views (`W_Q`, …).
//! - [`block`] is one transformer block, a view over one layer's weights; its `wiring` is the
//!   one place where a block's structure is written, and every analysis that runs blocks
//!   (patching sweeps, path patching, edge attribution, the forward-mode JVP) goes through it.
//! - [`ops`] holds the operations, one per file, each with its CPU kernel, its backward and
//!   its forward-mode rule.
//! - [`hooks`] names every hook point the TransformerLens way and holds the sinks a run fires
//!   them into: user [`Hooks`](hooks::Hooks) and the [`ActivationCache`](hooks::ActivationCache).
//! - [`text`] turns prompts into padded batches of token ids.
//! - `runtime` tunes the allocator and the thread pool for tensor work (crate-private).
//!
//! [`ModelConfig`]: config::ModelConfig
//! [`HookedTransformer`]: model::HookedTransformer

pub mod block;
pub mod config;
pub mod hooks;
pub mod model;
pub mod ops;
pub(crate) mod runtime;
pub mod text;
pub mod weights;
