//! Splicing SAEs into a forward pass (SAELens's `HookedSAETransformer.run_with_saes`): at each
//! SAE's hook point the activation is encoded and decoded, the features can be edited, and the
//! run goes on with the reconstruction — plus the SAE's error `x − recons` when the error term
//! is on (the default), so that an unedited run is the model's own, exactly.

use candle_core::Tensor;

use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{Chain, HookFilter, HookPoint, HookSink, Hooks, NoHooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

use super::Sae;

/// An edit of the feature activations `[batch, pos, d_sae]`: a replacement, or `None` to
/// keep them.
pub type FeatureEdit<'a> = Box<dyn FnMut(&Tensor) -> Result<Option<Tensor>> + 'a>;

/// One SAE spliced into a run, and what happens to its features.
pub struct Splice<'a> {
    /// The SAE.
    pub sae: &'a Sae,
    /// Add the SAE's error back (`x − recons` of the unedited features): the run then differs
    /// from the model's only by what the edit changes. On by default, as in SAELens.
    pub use_error_term: bool,
    edit: Option<FeatureEdit<'a>>,
}

impl<'a> Splice<'a> {
    /// `sae` spliced in with the error term on and no edit.
    pub fn new(sae: &'a Sae) -> Self {
        Splice {
            sae,
            use_error_term: true,
            edit: None,
        }
    }

    /// Turns the error term on or off (off: the run continues with the reconstruction alone).
    pub fn error_term(mut self, on: bool) -> Self {
        self.use_error_term = on;
        self
    }

    /// Edits the feature activations (`hook_sae_acts_post`, `[batch, pos, d_sae]`) before
    /// they are decoded.
    pub fn edit_features<F>(mut self, f: F) -> Self
    where
        F: FnMut(&Tensor) -> Result<Option<Tensor>> + 'a,
    {
        self.edit = Some(Box::new(f));
        self
    }

    /// Sets `features` to 0 at every position (ablation).
    pub fn ablate(self, features: &[usize]) -> Self {
        let features = features.to_vec();
        self.edit_features(move |acts| {
            let mut out = acts.clone();
            for &f in &features {
                out = set_feature(&out, f, 0.0)?;
            }
            Ok(Some(out))
        })
    }

    /// Sets feature `f` to 0 at prompt `b`, position `pos` only, for each `(b, pos, f)` of
    /// `cells` (the ablation an attribution score estimates).
    pub fn ablate_at(self, cells: &[(usize, usize, usize)]) -> Self {
        self.set_at(cells, 0.0)
    }

    /// Sets feature `f` to `value` at prompt `b`, position `pos` only, for each `(b, pos, f)`
    /// of `cells` (steering one position).
    pub fn set_at(self, cells: &[(usize, usize, usize)], value: f32) -> Self {
        let cells = cells.to_vec();
        self.edit_features(move |acts| {
            let (nb, np, nf) = acts.dims3()?;
            let mut out = acts.clone();
            for &(b, p, f) in &cells {
                for (what, i, n) in [
                    ("prompt", b, nb),
                    ("position", p, np),
                    ("SAE feature", f, nf),
                ] {
                    if i >= n {
                        return Err(LensError::OutOfRange {
                            what: what.into(),
                            index: i,
                            len: n,
                        });
                    }
                }
                let fill = Tensor::full(value, (1, 1, 1), acts.device())?.to_dtype(acts.dtype())?;
                out = out.slice_assign(&[b..b + 1, p..p + 1, f..f + 1], &fill)?;
            }
            Ok(Some(out))
        })
    }

    /// Sets `feature` to `value` at every position (clamping; a large value steers).
    pub fn clamp(self, feature: usize, value: f32) -> Self {
        self.edit_features(move |acts| Ok(Some(set_feature(acts, feature, value)?)))
    }
}

/// `acts [.., d_sae]` with feature `f` set to `value`.
fn set_feature(acts: &Tensor, f: usize, value: f32) -> Result<Tensor> {
    let d = acts.dims().last().copied().unwrap_or(0);
    if f >= d {
        return Err(LensError::OutOfRange {
            what: "SAE feature".into(),
            index: f,
            len: d,
        });
    }
    let mut ranges: Vec<std::ops::Range<usize>> = acts.dims().iter().map(|&n| 0..n).collect();
    let last = ranges.len() - 1;
    ranges[last] = f..f + 1;
    let mut shape = acts.dims().to_vec();
    shape[last] = 1;
    let fill = Tensor::full(value, shape, acts.device())?.to_dtype(acts.dtype())?;
    Ok(acts.slice_assign(&ranges, &fill)?)
}

/// The SAE activations of a spliced run, under SAELens's names:
/// `<hook>.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`, `.hook_sae_recons`,
/// `.hook_sae_error`, `.hook_sae_output` (`<hook>` the point the SAE writes: its own, or a
/// transcoder's output point).
#[derive(Clone, Debug, Default)]
pub struct SaeCache {
    entries: Vec<(String, Tensor)>,
}

impl SaeCache {
    /// The activation recorded under `name`.
    ///
    /// # Errors
    /// [`LensError::NotCached`] listing what the run recorded.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| LensError::NotCached {
                name: name.to_string(),
                available: self.names().join(", "),
            })
    }

    /// Every name recorded, in the order the run recorded them.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }

    fn put(&mut self, hook: HookPoint, what: &str, t: Tensor) {
        self.entries.push((format!("{hook}.{what}"), t));
    }
}

/// A transcoder's prediction waiting for its output point: the unedited and the edited
/// reconstruction.
struct Pending {
    clean: Tensor,
    edited: Option<Tensor>,
}

struct SaeSink<'s, 'a> {
    splices: &'s mut [Splice<'a>],
    pending: Vec<Option<Pending>>,
    cache: SaeCache,
}

impl HookSink for SaeSink<'_, '_> {
    fn wants(&self, hp: &HookPoint) -> bool {
        self.splices
            .iter()
            .any(|s| s.sae.hook == *hp || s.sae.output_hook() == *hp)
    }

    fn visit(&mut self, hp: &HookPoint, act: Tensor) -> Result<Tensor> {
        // per-head points are read and written with their heads flattened
        let shape = act.shape().clone();
        let mut act = Sae::flatten_heads(&act)?;
        for (i, s) in self.splices.iter_mut().enumerate() {
            let sae = s.sae;
            let out_hook = sae.output_hook();
            if sae.hook == *hp {
                let code = sae.encode(&act)?;
                let clean = sae.decode(&code.acts_post, &act)?;
                let edited_acts = match &mut s.edit {
                    Some(f) => f(&code.acts_post)?,
                    None => None,
                };
                let edited = match &edited_acts {
                    Some(a) => Some(sae.decode(a, &act)?),
                    None => None,
                };
                self.cache.put(out_hook, "hook_sae_input", act.clone());
                self.cache.put(out_hook, "hook_sae_acts_pre", code.acts_pre);
                self.cache.put(
                    out_hook,
                    "hook_sae_acts_post",
                    edited_acts.unwrap_or(code.acts_post),
                );
                self.cache.put(
                    out_hook,
                    "hook_sae_recons",
                    edited.clone().unwrap_or_else(|| clean.clone()),
                );
                if sae.is_transcoder() {
                    self.pending[i] = Some(Pending { clean, edited });
                } else {
                    act = finish(
                        &mut self.cache,
                        out_hook,
                        s.use_error_term,
                        act,
                        &clean,
                        edited,
                    )?;
                }
            } else if out_hook == *hp {
                let Some(p) = self.pending[i].take() else {
                    return Err(LensError::Internal(format!(
                        "the transcoder's output point {out_hook} fired before its input {}",
                        sae.hook
                    )));
                };
                act = finish(
                    &mut self.cache,
                    out_hook,
                    s.use_error_term,
                    act,
                    &p.clean,
                    p.edited,
                )?;
            }
        }
        Ok(act.reshape(shape)?)
    }
}

/// The activation that goes on from the SAE's output point: the model's own `y` plus what the
/// edit changed (error term on), or the reconstruction alone (off). Records the error and the
/// output.
fn finish(
    cache: &mut SaeCache,
    hook: HookPoint,
    use_error_term: bool,
    y: Tensor,
    clean: &Tensor,
    edited: Option<Tensor>,
) -> Result<Tensor> {
    let y = y.to_dtype(clean.dtype())?;
    cache.put(hook, "hook_sae_error", (&y - clean)?);
    let out = match (use_error_term, edited) {
        // y = recons + error exactly, without a rounding step
        (true, None) => y,
        (true, Some(e)) => (&y + (e - clean)?)?,
        (false, Some(e)) => e,
        (false, None) => clean.clone(),
    };
    cache.put(hook, "hook_sae_output", out.clone());
    Ok(out)
}

impl HookedTransformer {
    /// Runs `tokens` with every SAE of `splices` spliced in at its hook point(s): logits
    /// `[batch, pos, d_vocab]` and the SAEs' activations ([`SaeCache`]).
    ///
    /// # Errors
    /// [`LensError::HookNotOnModel`] / [`LensError::Mismatch`] for an SAE this model cannot
    /// host (see [`Sae::check_model`]); errors of the edits; as [`Self::forward`].
    pub fn run_with_saes(
        &self,
        tokens: &Tokens,
        splices: &mut [Splice],
    ) -> Result<(Tensor, SaeCache)> {
        self.run_spliced(tokens, splices, &mut NoHooks, &mut NoHooks)
    }

    /// [`Self::run_with_saes`] with user hooks (SAELens's `run_with_hooks_with_saes`). At an
    /// SAE's point the hooks run first and the SAE reads what they return; everywhere else they
    /// see the spliced run's activations.
    ///
    /// # Errors
    /// As [`Self::run_with_saes`]; [`LensError::HookNotOnModel`] /
    /// [`LensError::LayerOutOfRange`] for a hook at a point the model never fires; whatever a
    /// hook returns.
    pub fn run_with_hooks_with_saes(
        &self,
        tokens: &Tokens,
        splices: &mut [Splice],
        hooks: &mut Hooks,
    ) -> Result<(Tensor, SaeCache)> {
        hooks.check(&self.cfg)?;
        hooks.start_audit();
        self.run_spliced(tokens, splices, hooks, &mut NoHooks)
    }

    /// [`Self::run_with_saes`] that also fills the model's own cache (SAELens's
    /// `run_with_cache_with_saes`): logits, the SAEs' activations and an [`ActivationCache`] of
    /// what `filter` selects (`None`: every point but the opt-in ones). At an SAE's output
    /// point the model's cache holds what goes on from it (the SAE's output, error term
    /// included when on).
    ///
    /// # Errors
    /// As [`Self::run_with_saes`]; [`LensError::HookNotOnModel`] /
    /// [`LensError::LayerOutOfRange`] for a filter naming a point the model never fires.
    pub fn run_with_cache_with_saes(
        &self,
        tokens: &Tokens,
        splices: &mut [Splice],
        filter: Option<HookFilter>,
    ) -> Result<(Tensor, SaeCache, ActivationCache)> {
        let mut cache = ActivationCache::recorder_for(filter, &self.cfg)?;
        let (logits, saes) = self.run_spliced(tokens, splices, &mut NoHooks, &mut cache)?;
        Ok((logits, saes, cache.finish(tokens.clone(), &self.cfg)))
    }

    /// The spliced run: at each point `before` (user hooks) acts first, then the SAEs, then
    /// `after` (a cache) sees what goes on.
    fn run_spliced(
        &self,
        tokens: &Tokens,
        splices: &mut [Splice],
        before: &mut dyn HookSink,
        after: &mut dyn HookSink,
    ) -> Result<(Tensor, SaeCache)> {
        for s in splices.iter() {
            s.sae.check_model(&self.cfg)?;
        }
        let n = splices.len();
        let mut sink = SaeSink {
            splices,
            pending: (0..n).map(|_| None).collect(),
            cache: SaeCache::default(),
        };
        let mut saes_then_after = Chain(&mut sink, after);
        let logits = self.forward_with(
            tokens,
            LogitsAt::All,
            &mut Chain(before, &mut saes_then_after),
        )?;
        Ok((logits, sink.cache))
    }
}
