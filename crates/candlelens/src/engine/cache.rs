//! [`ActivationCache`]: the activations of one forward pass, by hook point.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::engine::hooks::{HookFilter, HookPoint, HookSink};
use crate::engine::tokens::Tokens;
use crate::error::{LensError, Result};

/// Activations recorded by [`crate::HookedTransformer::run_with_cache`], keyed by hook point,
/// with TransformerLens shapes (see [`HookPoint`]).
pub struct ActivationCache {
    acts: BTreeMap<HookPoint, Tensor>,
    filter: HookFilter,
    tokens: Option<Tokens>,
}

impl ActivationCache {
    /// A cache that records what `filter` selects when used as a hook sink.
    pub fn recorder(filter: HookFilter) -> Self {
        ActivationCache {
            acts: BTreeMap::new(),
            filter,
            tokens: None,
        }
    }

    pub(crate) fn finish(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The tokens the cache was recorded on.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    /// The activation at a TransformerLens-named hook (`"blocks.0.attn.hook_pattern"`).
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] for a bad name, [`LensError::NotCached`] if not recorded.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        let hp = HookPoint::parse(name)?;
        self.at(hp)
    }

    /// The activation at a hook point.
    ///
    /// # Errors
    /// [`LensError::NotCached`].
    pub fn at(&self, hp: HookPoint) -> Result<&Tensor> {
        self.acts.get(&hp).ok_or_else(|| {
            let mut names: Vec<String> = self.acts.keys().take(6).map(|k| k.to_string()).collect();
            if self.acts.len() > 6 {
                names.push(format!("... {} in all", self.acts.len()));
            }
            LensError::NotCached {
                name: hp.to_string(),
                available: if names.is_empty() {
                    "nothing".into()
                } else {
                    names.join(", ")
                },
            }
        })
    }

    /// Whether the cache holds a point.
    pub fn contains(&self, hp: HookPoint) -> bool {
        self.acts.contains_key(&hp)
    }

    /// Every cached hook point, in forward order.
    pub fn keys(&self) -> impl Iterator<Item = &HookPoint> {
        self.acts.keys()
    }

    /// Number of cached activations.
    pub fn len(&self) -> usize {
        self.acts.len()
    }

    /// Whether nothing was cached.
    pub fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }

    /// Inserts (or replaces) an activation.
    pub fn insert(&mut self, hp: HookPoint, t: Tensor) {
        self.acts.insert(hp, t);
    }
}

impl HookSink for ActivationCache {
    fn wants(&self, point: &HookPoint) -> bool {
        self.filter.matches(point)
    }
    fn visit(&mut self, point: &HookPoint, act: Tensor) -> Result<Tensor> {
        self.acts.insert(*point, act.clone());
        Ok(act)
    }
}

impl std::fmt::Debug for ActivationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ActivationCache with {} activations:", self.acts.len())?;
        for (k, v) in &self.acts {
            writeln!(f, "  {k}: {:?}", v.dims())?;
        }
        Ok(())
    }
}
