//! Steering: a direction added to one hook point's activations while the model runs or
//! generates. [`SteeringVector::contrastive`] is Contrastive Activation Addition's vector (Rimsky
//! et al., 2024): the mean activation at each prompt's last real token over a set of positive
//! prompts minus the same over negative ones; [`SteeringVector::act_add`] is ActAdd's (Turner et
//! al., 2023): the difference of one pair's activations, position by position, added at the
//! steered prompt's first positions. [`Steering`] applies any number of them with coefficients
//! as ordinary [`Hooks`], so it combines with other hooks, patching and generation;
//! [`steering_sweep`] measures a metric over a range of coefficients.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::engine::hooks::{HookAxis, HookFilter, HookPoint, Hooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::Metric;
use crate::viz::Figure;

/// A direction at one hook point: `[d]` (added at every position) or `[k, d]` (ActAdd: row `j`
/// added at each prompt's own position `j`, for `j < k`).
#[derive(Clone, Debug)]
pub struct SteeringVector {
    hook: HookPoint,
    vector: Tensor,
}

/// The activation at `hook` of each prompt of `tokens` at its last real token, `[batch, d]`,
/// from one run of the batch.
fn last_token_acts(model: &HookedTransformer, hook: HookPoint, tokens: &Tokens) -> Result<Tensor> {
    let mut per_point =
        crate::interp::probes::last_token_features(model, tokens, &[hook], tokens.batch().max(1))?;
    Ok(per_point.remove(0))
}

/// The number of NaN or infinite values of `t`.
fn non_finite(t: &Tensor) -> Result<usize> {
    crate::engine::weights::non_finite(t)
}

/// None of `what` where at least one is needed.
fn too_few(what: &str) -> LensError {
    LensError::TooFew {
        what: what.to_string(),
        need: 1,
        got: 0,
        fix: format!("give at least one of the {what}"),
    }
}

impl SteeringVector {
    /// A steering vector at `hook` from its values: `[d]`, or `[k, d]` for ActAdd's
    /// position-by-position difference.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] unless `vector` is 1- or 2-D with at least one value per row;
    /// [`LensError::BadData`] for NaN or infinite values.
    pub fn new(hook: HookPoint, vector: Tensor) -> Result<Self> {
        let dims = vector.dims().to_vec();
        if !(1..=2).contains(&dims.len()) || dims.contains(&0) {
            return Err(LensError::mismatch(
                "steering vector",
                format!("a vector at {hook} has shape {dims:?}; give [d] (or [k, d] for ActAdd), with d the hook's width"),
            ));
        }
        let bad = non_finite(&vector)?;
        if bad > 0 {
            return Err(LensError::BadData {
                what: format!("the steering vector at {hook}"),
                detail: format!("{bad} of its values are NaN or infinite; compute it again from finite activations"),
            });
        }
        Ok(SteeringVector {
            hook,
            vector: vector.to_dtype(DType::F32)?,
        })
    }

    /// Contrastive Activation Addition: the mean of `hook`'s activation at each positive
    /// prompt's last real token minus the same mean over the negative prompts, `[d]` (`d_model`
    /// for the residual stream). The two batches may be padded on either side and hold any
    /// number of prompts each.
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] / [`LensError::HookNotOnModel`] for `hook`;
    /// [`LensError::TooFew`] for an empty set; as [`HookedTransformer::forward`].
    pub fn contrastive(
        model: &HookedTransformer,
        hook: &str,
        positive: &Tokens,
        negative: &Tokens,
    ) -> Result<Self> {
        let hp = HookPoint::parse_for(hook, &model.cfg)?;
        for (set, t) in [("positive", positive), ("negative", negative)] {
            if t.batch() == 0 {
                return Err(too_few(&format!("{set} prompts")));
            }
        }
        let mean = |t: &Tokens| -> Result<Tensor> { Ok(last_token_acts(model, hp, t)?.mean(0)?) };
        Self::new(hp, (mean(positive)? - mean(negative)?)?)
    }

    /// [`Self::contrastive`] from texts, tokenized as [`HookedTransformer::to_tokens`] does.
    ///
    /// # Errors
    /// As [`Self::contrastive`] and [`HookedTransformer::to_tokens`].
    pub fn contrastive_prompts(
        model: &HookedTransformer,
        hook: &str,
        positive: &[&str],
        negative: &[&str],
    ) -> Result<Self> {
        let tokens = |set: &[&str], name: &str| -> Result<Tokens> {
            if set.is_empty() {
                return Err(too_few(&format!("{name} prompts")));
            }
            model.to_tokens(set, None)
        };
        Self::contrastive(
            model,
            hook,
            &tokens(positive, "positive")?,
            &tokens(negative, "negative")?,
        )
    }

    /// ActAdd: `hook`'s activations on the positive prompt minus those on the negative one,
    /// position by position, `[k, d]` for prompts of `k` tokens each; [`Steering`] adds row `j`
    /// at position `j` of the steered prompt.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when the two prompts tokenize to different lengths (ActAdd pads
    /// the shorter one with spaces: add them to the text); as [`Self::contrastive`].
    pub fn act_add(
        model: &HookedTransformer,
        hook: &str,
        positive: &str,
        negative: &str,
    ) -> Result<Self> {
        let (p, n) = (
            model.to_tokens(positive, None)?,
            model.to_tokens(negative, None)?,
        );
        Self::act_add_tokens(model, hook, p.row(0)?, n.row(0)?)
    }

    /// [`Self::act_add`] from token ids (used as given).
    ///
    /// # Errors
    /// As [`Self::act_add`].
    pub fn act_add_tokens(
        model: &HookedTransformer,
        hook: &str,
        positive: &[u32],
        negative: &[u32],
    ) -> Result<Self> {
        let hp = HookPoint::parse_for(hook, &model.cfg)?;
        if positive.len() != negative.len() {
            return Err(LensError::mismatch(
                "ActAdd prompts",
                format!(
                    "the positive prompt has {} tokens and the negative {}; pad the shorter one with spaces so that they align",
                    positive.len(),
                    negative.len()
                ),
            ));
        }
        let acts = |ids: &[u32]| -> Result<Tensor> {
            let t = model.tokens_from_ids(ids.to_vec())?;
            let (_, cache) = model.run_with_hooks_and_cache(
                &t,
                &mut Hooks::new(),
                Some(HookFilter::Points(vec![hp])),
                LogitsAt::Last,
            )?;
            Ok(cache.at(hp)?.get(0)?.to_dtype(DType::F32)?)
        };
        Self::new(hp, (acts(positive)? - acts(negative)?)?)
    }

    /// Where the vector is added.
    pub fn hook(&self) -> HookPoint {
        self.hook
    }

    /// The vector, `[d]` or `[k, d]`, f32.
    pub fn vector(&self) -> &Tensor {
        &self.vector
    }

    /// Its L2 norm (Frobenius for `[k, d]`).
    ///
    /// # Errors
    /// Tensor errors only.
    pub fn norm(&self) -> Result<f32> {
        Ok(self.vector.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
    }

    /// Writes the vector as a float32 `.npy` (numpy reads it as it is), whole or not at all.
    ///
    /// # Errors
    /// [`LensError::Io`] when the file cannot be written.
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::util::fs::write_atomically(path.as_ref(), |tmp| Ok(self.vector.write_npy(tmp)?))
    }

    /// Reads a vector saved as `.npy` (float32 or float64, `[d_model]` or `[k, d_model]`) to
    /// steer `hook` of a model with config `cfg`.
    ///
    /// # Errors
    /// [`LensError::MissingFile`]; [`LensError::CorruptFile`] for a header that does not
    /// describe the file's bytes; [`LensError::Mismatch`] for a vector whose width is not the
    /// hook's (`d_model` for the residual stream); [`LensError::BadData`] for NaN or infinite
    /// values.
    pub fn load_npy(
        path: impl AsRef<Path>,
        hook: &str,
        cfg: &crate::engine::config::ModelConfig,
    ) -> Result<Self> {
        let path = path.as_ref();
        let hp = HookPoint::parse_for(hook, cfg)?;
        crate::util::npz::check_npy(path)?;
        let t = Tensor::read_npy(path).map_err(|e| LensError::CorruptFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let v = Self::new(hp, t.to_dtype(DType::F32)?)?;
        v.check(cfg)?;
        Ok(v)
    }

    /// Errors unless the vector's width is that of its hook point on a model with `cfg`.
    fn check(&self, cfg: &crate::engine::config::ModelConfig) -> Result<()> {
        self.hook.check(cfg)?;
        let width = match self.hook.axes(cfg).as_deref() {
            Some([HookAxis::Batch, HookAxis::Pos, HookAxis::Size(w)]) => Some(*w),
            _ => None,
        };
        let got = *self.vector.dims().last().unwrap_or(&0);
        match width {
            Some(w) if w == got => Ok(()),
            Some(w) => Err(LensError::mismatch(
                "steering vector",
                format!(
                    "the vector has shape {:?}, but {} has width {w} on this model; compute the vector on this model (or one with the same d_model)",
                    self.vector.dims(),
                    self.hook
                ),
            )),
            None => Err(LensError::Unsupported {
                what: format!("steering at {}", self.hook),
                fix: "steer a [batch, pos, d] hook point: the residual stream (hook_resid_pre/mid/post), hook_attn_out, hook_mlp_out or a normalised input".into(),
            }),
        }
    }
}

/// Steering vectors with their coefficients, applied as hooks: `coef · v` is added to `v`'s
/// hook point — at every position for a `[d]` vector (the prompt's tokens, pads and generated
/// tokens alike), at each prompt's own positions `0..k` for a `[k, d]` one (ActAdd; generation
/// steps, which cover later positions, are left alone).
#[derive(Clone, Debug, Default)]
pub struct Steering {
    terms: Vec<(SteeringVector, f64)>,
}

impl Steering {
    /// No steering.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `coef · vector`.
    pub fn add(mut self, vector: SteeringVector, coef: f64) -> Self {
        self.terms.push((vector, coef));
        self
    }

    /// The vectors and their coefficients.
    pub fn terms(&self) -> &[(SteeringVector, f64)] {
        &self.terms
    }

    /// Adds the steering to `hooks`, after the hooks already there at the same points.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for a coefficient that is not finite;
    /// [`LensError::Mismatch`] / [`LensError::HookNotOnModel`] for a vector that does not fit
    /// its hook point on a model with `cfg`.
    pub fn apply(
        &self,
        hooks: &mut Hooks<'static>,
        cfg: &crate::engine::config::ModelConfig,
    ) -> Result<()> {
        for (v, coef) in &self.terms {
            if !coef.is_finite() {
                return Err(LensError::bad_parameter(
                    "steering coefficient",
                    coef,
                    "give a finite number",
                ));
            }
            v.check(cfg)?;
            let (vector, coef) = (v.vector.clone(), *coef);
            hooks.add_filter_with_context(HookFilter::Points(vec![v.hook]), move |act, _, ctx| {
                let delta = (&vector * coef)?
                    .to_dtype(act.dtype())?
                    .to_device(act.device())?;
                if delta.rank() == 1 {
                    return Ok(Some(act.broadcast_add(&delta)?));
                }
                // ActAdd: row j at each prompt's own position j
                let k = delta.dim(0)?;
                let mut act = act.clone();
                for row in 0..ctx.batch() {
                    for j in 0..k {
                        let Some(i) = ctx.index_of(row, j as i64).ok().flatten() else {
                            continue;
                        };
                        if i >= act.dim(1)? {
                            continue;
                        }
                        let cur = act.narrow(0, row, 1)?.narrow(1, i, 1)?;
                        let new = cur.broadcast_add(&delta.narrow(0, j, 1)?)?;
                        act = act.slice_assign(&[row..row + 1, i..i + 1, 0..act.dim(2)?], &new)?;
                    }
                }
                Ok(Some(act))
            });
        }
        Ok(())
    }

    /// The steering as a fresh set of hooks (see [`Self::apply`]).
    ///
    /// # Errors
    /// As [`Self::apply`].
    pub fn hooks(&self, cfg: &crate::engine::config::ModelConfig) -> Result<Hooks<'static>> {
        let mut hooks = Hooks::new();
        self.apply(&mut hooks, cfg)?;
        Ok(hooks)
    }
}

/// A metric measured at each coefficient of a steering vector ([`steering_sweep`]).
#[derive(Clone, Debug)]
pub struct SteeringSweep {
    /// The coefficients, in the order given.
    pub coefs: Vec<f64>,
    /// The metric of the steered run at each.
    pub values: Vec<f32>,
    /// What the metric measures (the figure's y label).
    pub metric: String,
}

impl SteeringSweep {
    /// The metric against the coefficient, as a line.
    pub fn figure(&self) -> Figure {
        Figure::line(
            self.coefs.iter().map(|&c| c as f32).collect(),
            vec![(self.metric.clone(), self.values.clone())],
            None,
            &format!("{} against the steering coefficient", self.metric),
        )
        .axes("coefficient", &self.metric)
    }
}

/// Runs `tokens` with `coef · vector` added, for each coefficient, and measures `metric` on the
/// last-position logits `[batch, d_vocab]` (e.g. [`target_probability`]) — the effect of the
/// coefficient on what the model says. `metric_name` labels the result.
///
/// # Errors
/// [`LensError::TooFew`] for no coefficients; as [`Steering::apply`] and the forward;
/// [`LensError::Numerical`] for a metric that is not finite.
pub fn steering_sweep(
    model: &HookedTransformer,
    tokens: &Tokens,
    vector: &SteeringVector,
    coefs: &[f64],
    metric: &Metric,
    metric_name: &str,
) -> Result<SteeringSweep> {
    if coefs.is_empty() {
        return Err(too_few("steering coefficients"));
    }
    let values = coefs
        .iter()
        .map(|&c| {
            let mut hooks = Steering::new().add(vector.clone(), c).hooks(&model.cfg)?;
            let logits = model.forward_with(tokens, LogitsAt::Last, &mut hooks)?;
            let v = metric(&logits)?;
            crate::interp::metrics::check_metric_value(
                v,
                &format!("the run steered with coefficient {c}"),
            )?;
            Ok(v)
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok(SteeringSweep {
        coefs: coefs.to_vec(),
        values,
        metric: metric_name.to_string(),
    })
}

/// A metric: the probability the model gives to any of `targets` at each prompt's last
/// position (softmax over the vocabulary, summed over the targets), averaged over the batch.
pub fn target_probability(targets: &[u32]) -> Metric {
    let targets = targets.to_vec();
    Box::new(move |last_logits: &Tensor| {
        let probs = candle_nn::ops::softmax_last_dim(&last_logits.to_dtype(DType::F32)?)?;
        let rows: Vec<Vec<f32>> = probs.to_vec2()?;
        let d_vocab = rows.first().map_or(0, Vec::len);
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= d_vocab) {
            return Err(LensError::TokenOutOfRange { id: t, d_vocab });
        }
        let per: Vec<f32> = rows
            .iter()
            .map(|r| targets.iter().map(|&t| r[t as usize]).sum())
            .collect();
        Ok(crate::interp::metrics::mean(&per))
    })
}
