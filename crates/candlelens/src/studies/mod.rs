//! The source experiments as libraries: what a notebook reproduces, with the heavy logic here.
//!
//! - [`lre`]: linear relational embeddings (seed 001; Hernandez et al. 2023).
//! - [`binding`]: entity binding and binding-ID vectors (seed 004; Feng & Steinhardt 2023).
//! - Python's `random` module, so that seeded splits and samples match the sources' exactly,
//!   is [`crate::util::pyrandom`] (the SAE trainer shares it).
//! - [`data`]: reading the experiments' datasets (`data/`).

pub mod binding;
pub mod data;
pub mod lre;
