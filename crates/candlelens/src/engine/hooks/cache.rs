//! [`ActivationCache`]: the activations of one forward pass, by hook point.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::engine::config::ModelConfig;
use crate::engine::hooks::{HookFilter, HookPoint, HookSink};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// Activations recorded by [`crate::HookedTransformer::run_with_cache`], keyed by hook point,
/// with TransformerLens shapes (see [`HookPoint`]).
pub struct ActivationCache {
    acts: BTreeMap<HookPoint, Tensor>,
    filter: HookFilter,
    tokens: Option<Tokens>,
    origin: Option<Origin>,
}

/// Which model recorded a cache: what [`ActivationCache::check_model`] compares.
#[derive(Clone, Debug, PartialEq)]
struct Origin {
    name: String,
    n_layers: usize,
    n_heads: usize,
    d_model: usize,
}

impl Origin {
    fn of(cfg: &ModelConfig) -> Self {
        Origin {
            name: cfg.name.clone(),
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
            d_model: cfg.d_model,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} layers, {} heads, d_model {})",
            self.name, self.n_layers, self.n_heads, self.d_model
        )
    }
}

impl ActivationCache {
    /// A cache that records what `filter` selects when used as a hook sink.
    pub fn recorder(filter: HookFilter) -> Self {
        ActivationCache {
            acts: BTreeMap::new(),
            filter,
            tokens: None,
            origin: None,
        }
    }

    /// A recorder of `filter` (`None`: every point but the opt-in ones) for a run of `cfg`'s
    /// model, refusing named points the model never fires.
    pub(crate) fn recorder_for(filter: Option<HookFilter>, cfg: &ModelConfig) -> Result<Self> {
        if let Some(HookFilter::Points(ps)) = &filter {
            ps.iter().try_for_each(|hp| hp.check(cfg))?;
        }
        Ok(ActivationCache::recorder(filter.unwrap_or(HookFilter::All)))
    }

    pub(crate) fn finish(mut self, tokens: Tokens, cfg: &ModelConfig) -> Self {
        self.tokens = Some(tokens);
        self.origin = Some(Origin::of(cfg));
        self
    }

    /// Checks that this cache was recorded on a model shaped like `cfg` (same name, layers,
    /// heads and width), before an analysis combines the two.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] naming both models. A cache filled by hand through
    /// [`Self::recorder`] carries no origin and passes.
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<()> {
        match &self.origin {
            Some(o) if *o != Origin::of(cfg) => Err(LensError::mismatch("cache and model", format!(
                    "the cache was recorded on {}, the model is {}; run run_with_cache on this model",
                    o.describe(),
                    Origin::of(cfg).describe()
                ))),
            _ => Ok(()),
        }
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
