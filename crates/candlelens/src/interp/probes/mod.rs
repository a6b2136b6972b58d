//! Linear probes: does a layer's activation at a prompt's last token encode a property of the
//! prompt? A logistic probe (L2-regularised logistic regression, the optimum of scikit-learn's
//! `LogisticRegression(C)`, fitted with linfa-logistic at `alpha = 1 / C`) for a binary label, a
//! linear probe (ordinary least squares, linfa-linear) for a real target; per layer, on Python's
//! seeded train/test split, with a shuffled-label control (Hewitt and Liang, 2019) that shows how
//! much of the accuracy the probe could reach on labels that mean nothing. The probe's direction
//! comes back as a `[d]` tensor, ready for steering or ablation.

mod data;
mod features;
mod layers;
mod linear;
mod logistic;
mod split;

pub use data::{read_labelled, read_valued};
pub use features::last_token_features;
pub use layers::{
    probe_layers, regress_layers, LayerProbe, LayerProbes, LayerRegression, LayerRegressions,
    ProbeOptions,
};
pub use linear::LinearProbe;
pub use logistic::LogisticProbe;
pub use split::Split;
