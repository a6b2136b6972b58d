//! The axes of a hook point's activation, read from the symbolic shape [`HookPoint::shape`]
//! writes: the one place that reads those shapes (memory estimates, dataset widths, steering
//! widths).

use super::HookPoint;
use crate::engine::config::ModelConfig;

/// One axis of a hook point's activation ([`HookPoint::axes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookAxis {
    /// The prompts.
    Batch,
    /// The (query) positions.
    Pos,
    /// The key positions of an attention pattern or its scores.
    KeyPos,
    /// A fixed size (`d_model`, heads, `d_head`, ...).
    Size(usize),
}

impl HookAxis {
    /// The axes of a symbolic shape as [`HookPoint::shape`] writes it (`[batch, pos, 576]`,
    /// `[batch, 9, q_pos, k_pos]`, `[batch, pos, 9, 576] (opt-in)`).
    fn parse(shape: &str) -> Vec<HookAxis> {
        let inner = shape
            .split(']')
            .next()
            .unwrap_or("")
            .trim_start_matches('[');
        inner
            .split(',')
            .map(str::trim)
            .map(|d| match d {
                "batch" => HookAxis::Batch,
                "pos" | "q_pos" => HookAxis::Pos,
                "k_pos" => HookAxis::KeyPos,
                n => HookAxis::Size(n.parse().unwrap_or(1)),
            })
            .collect()
    }
}

impl HookPoint {
    /// The axes of this hook on a model (what [`Self::shape`] writes, read back), or `None` if
    /// the model never fires it.
    pub(crate) fn axes(&self, cfg: &ModelConfig) -> Option<Vec<HookAxis>> {
        self.shape(cfg).map(|s| HookAxis::parse(&s))
    }
}
