//! Feature attribution: which SAE features drive a metric — each active feature's activation
//! times the metric's gradient with respect to it, `score = a_f · ∂m/∂a_f`, from one forward
//! with the SAE spliced in (error term on, so the run is the model's) and one backward pass.
//! It is the first-order estimate of what ablating the feature would change (`−score`).

use candle_core::{DType, Tensor, Var};

use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::GradMetric;

use super::splice::Splice;
use super::Sae;

/// Every feature's attribution at every position.
#[derive(Clone, Debug)]
pub struct FeatureAttribution {
    /// `a_f · ∂m/∂a_f`, `[batch, pos, d_sae]`.
    pub scores: Tensor,
    /// The feature activations `a_f` (`hook_sae_acts_post`), `[batch, pos, d_sae]`.
    pub acts: Tensor,
    /// `∂m/∂a_f`, `[batch, pos, d_sae]`.
    pub grads: Tensor,
    /// The metric of the run.
    pub metric: f32,
}

/// One feature at one position of one prompt, with its score.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FeatureScore {
    /// The prompt in the batch.
    pub batch: usize,
    /// The position.
    pub pos: usize,
    /// The feature.
    pub feature: usize,
    /// Its activation.
    pub act: f32,
    /// `act · ∂m/∂act`.
    pub score: f32,
}

impl FeatureAttribution {
    /// The `k` (prompt, position, feature) cells with the largest `|score|`, among active
    /// features.
    ///
    /// # Errors
    /// None for an attribution the model computed; a raw [`LensError::Candle`] if a hand-set
    /// `scores` is not 3-D (`acts` is assumed to have its shape).
    pub fn top(&self, k: usize) -> Result<Vec<FeatureScore>> {
        self.top_from(k, 0)
    }

    /// [`Self::top`] among positions `first_pos..` — `1` leaves out BOS, where an SAE trained
    /// without it fires hugely and meaninglessly.
    ///
    /// # Errors
    /// None for an attribution the model computed; a raw [`LensError::Candle`] if a hand-set
    /// `scores` is not 3-D (`acts` is assumed to have its shape).
    pub fn top_from(&self, k: usize, first_pos: usize) -> Result<Vec<FeatureScore>> {
        let (b, p, d) = self.scores.dims3()?;
        let s: Vec<f32> = self.scores.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let a: Vec<f32> = self.acts.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut cells: Vec<usize> = (0..s.len())
            .filter(|&i| a[i] != 0.0 && (i / d) % p >= first_pos)
            .collect();
        cells.sort_by(|&x, &y| s[y].abs().total_cmp(&s[x].abs()));
        Ok(cells
            .into_iter()
            .take(k)
            .map(|i| FeatureScore {
                batch: i / (p * d),
                pos: (i / d) % p,
                feature: i % d,
                act: a[i],
                score: s[i],
            })
            .filter(|c| c.batch < b)
            .collect())
    }
}

/// Feature attribution beside exact ablation ([`HookedTransformer::verify_feature_attribution`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeatureCheck {
    /// The cells checked, strongest estimate first: the cell, the estimate of ablating it
    /// (`−score`) and the metric's exact change when it is ablated.
    pub cells: Vec<(FeatureScore, f32, f32)>,
    /// Pearson correlation of estimate and exact change over the cells.
    pub correlation: f32,
    /// Wall time of the ablation runs.
    pub seconds: f64,
}

impl std::fmt::Display for FeatureCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "feature attribution vs exact ablation, {} cells: correlation {:.3}",
            self.cells.len(),
            self.correlation
        )?;
        for (c, est, exact) in &self.cells {
            writeln!(
                f,
                "  prompt {} pos {:>3} feature {:>6}  act {:>8.3}  estimate {:>+9.4}  exact {:>+9.4}",
                c.batch, c.pos, c.feature, c.act, est, exact
            )?;
        }
        Ok(())
    }
}

impl FeatureCheck {
    /// The check as a table.
    pub fn table(&self, title: &str) -> crate::viz::Table {
        let mut t = crate::viz::Table::new(
            title,
            [
                "prompt",
                "pos",
                "feature",
                "act",
                "estimate (−score)",
                "exact ablation",
            ],
        );
        for (c, est, exact) in &self.cells {
            t.row([
                c.batch.to_string(),
                c.pos.to_string(),
                c.feature.to_string(),
                format!("{:.3}", c.act),
                format!("{est:+.4}"),
                format!("{exact:+.4}"),
            ]);
        }
        t
    }
}

/// The sink of the attribution run: at the SAE's point the features get a zero-valued tap; the
/// run continues with `x + decode(a + tap) − decode(a)` (the model's own activation, carrying
/// the tap's gradient).
struct TapSink<'s> {
    sae: &'s Sae,
    tap: Option<(Var, Tensor, Tensor, Tensor)>,
}

impl TapSink<'_> {
    /// `y` plus what the tapped features change in the reconstruction.
    fn carry(&self, y: Tensor) -> Result<Tensor> {
        let Some((tap, acts, x, clean)) = &self.tap else {
            return Err(LensError::Internal(
                "the SAE's output point fired before its input".into(),
            ));
        };
        let tapped = self.sae.decode(&(acts + tap.as_tensor())?, x)?;
        Ok((y.to_dtype(clean.dtype())? + (tapped - clean)?)?)
    }
}

impl HookSink for TapSink<'_> {
    fn wants(&self, hp: &HookPoint) -> bool {
        *hp == self.sae.hook || *hp == self.sae.output_hook()
    }

    fn visit(&mut self, hp: &HookPoint, act: Tensor) -> Result<Tensor> {
        let shape = act.shape().clone();
        let mut act = Sae::flatten_heads(&act)?;
        if *hp == self.sae.hook {
            let x = act.detach();
            let code = self.sae.encode(&x)?;
            let clean = self.sae.decode(&code.acts_post, &x)?;
            let tap = Var::zeros(
                code.acts_post.shape(),
                code.acts_post.dtype(),
                code.acts_post.device(),
            )?;
            self.tap = Some((tap, code.acts_post, x, clean));
            if !self.sae.is_transcoder() {
                act = self.carry(act)?;
            }
        } else if *hp == self.sae.output_hook() {
            act = self.carry(act)?;
        }
        Ok(act.reshape(shape)?)
    }
}

impl HookedTransformer {
    /// Attributes `metric` (a scalar of the final-position logits `[batch, d_vocab]`) to every
    /// feature of `sae` at every position: activation times gradient, from one forward with the
    /// SAE spliced in and one backward pass.
    ///
    /// # Errors
    /// As [`Self::run_with_saes`]; [`LensError::Mismatch`] when the metric is not a scalar.
    pub fn sae_feature_attribution(
        &self,
        tokens: &Tokens,
        sae: &Sae,
        metric: &GradMetric,
    ) -> Result<FeatureAttribution> {
        sae.check_model(&self.cfg)?;
        self.ensure_fits(
            tokens,
            &crate::engine::runtime::memory::Workload::Gradients { split_heads: false },
        )?;
        let mut sink = TapSink { sae, tap: None };
        let logits = self.forward_with(tokens, LogitsAt::Last, &mut sink)?;
        let m = crate::interp::attribution::scalar(metric, &logits)?;
        let grads = m.backward()?;
        let (tap, acts, _, _) = sink
            .tap
            .ok_or_else(|| LensError::Internal("the SAE's hook point never fired".into()))?;
        let g = match grads.get(tap.as_tensor()) {
            Some(g) => g.detach(),
            None => acts.zeros_like()?,
        };
        Ok(FeatureAttribution {
            scores: (&acts * &g)?,
            acts,
            grads: g,
            metric: m.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        })
    }

    /// Checks `attr` (from [`Self::sae_feature_attribution`] on the same tokens, SAE and
    /// metric) against the truth it estimates: for each of `cells` (e.g.
    /// [`FeatureAttribution::top_from`]), the
    /// metric's exact change when that feature alone is zeroed at that position (the SAE
    /// spliced in with its error term, so nothing else moves), beside the estimate `−score`.
    ///
    /// # Errors
    /// As [`Self::run_with_saes`]; [`LensError::Mismatch`] when the metric is not a scalar.
    pub fn verify_feature_attribution(
        &self,
        tokens: &Tokens,
        sae: &Sae,
        metric: &GradMetric,
        attr: &FeatureAttribution,
        cells: &[FeatureScore],
    ) -> Result<FeatureCheck> {
        let t0 = std::time::Instant::now();
        let cells_in = cells;
        let mut cells = Vec::new();
        for &c in cells_in {
            let mut splice = [Splice::new(sae).ablate_at(&[(c.batch, c.pos, c.feature)])];
            let (logits, _) = self.run_with_saes(tokens, &mut splice)?;
            let m = crate::interp::attribution::scalar(metric, &tokens.gather_last(&logits)?)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            cells.push((c, -c.score, m - attr.metric));
        }
        let est: Vec<f64> = cells.iter().map(|c| c.1 as f64).collect();
        let exact: Vec<f64> = cells.iter().map(|c| c.2 as f64).collect();
        Ok(FeatureCheck {
            correlation: crate::interp::attribution::pearson(&est, &exact) as f32,
            cells,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}
