//! How good an SAE is on a model, in SAELens's evaluation terms: sparsity (L0), how much of the
//! activation it reconstructs (explained variance), and how much of the model's next-token
//! loss survives when the reconstruction replaces the activation (the CE loss score, between
//! zero-ablating the point (0) and the model itself (1)).

use candle_core::{DType, Tensor};

use crate::engine::hooks::HookFilter;
use crate::engine::hooks::Hooks;
use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

use super::splice::Splice;
use super::store::positions_without_bos;
use super::Sae;

/// An SAE's evaluation on a set of contexts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SaeEval {
    /// Mean number of active features per position.
    pub l0: f32,
    /// `1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²` over positions, `y` the activation at the SAE's output
    /// point (its input point for an SAE), `ŷ` the reconstruction.
    pub explained_variance: f32,
    /// Mean next-token cross-entropy of the model itself.
    pub ce_loss_without_sae: f32,
    /// ... with the reconstruction in place of the activation (no error term).
    pub ce_loss_with_sae: f32,
    /// ... with the activation at the output point set to zero.
    pub ce_loss_with_ablation: f32,
    /// `(ablation − with_sae) / (ablation − without_sae)`: 1 when the SAE loses nothing, 0 when
    /// it is as bad as zeroing the point.
    pub ce_loss_score: f32,
    /// Positions the figures cover (BOS positions are left out of L0 and explained variance).
    pub positions: usize,
}

impl HookedTransformer {
    /// Evaluates `sae` on `tokens`, `batch_size` contexts per run (three forwards each: the
    /// model, the model with the SAE spliced in without its error term, the model with the
    /// output point zeroed).
    ///
    /// # Errors
    /// As [`Self::run_with_saes`]; [`LensError::BadParameter`] for a zero batch;
    /// [`LensError::TooFew`] for contexts with no next token to predict.
    pub fn evaluate_sae(&self, sae: &Sae, tokens: &Tokens, batch_size: usize) -> Result<SaeEval> {
        sae.check_model(&self.cfg)?;
        if batch_size == 0 {
            return Err(LensError::bad_parameter(
                "batch_size",
                "0",
                "run at least one context at a time",
            ));
        }
        let out = sae.output_hook();
        let bos = self.tokenizer().bos_token_id;
        let (mut ce_clean, mut ce_sae, mut ce_abl, mut n_ce) = (0f64, 0f64, 0f64, 0usize);
        let (mut l0_sum, mut err_sum, mut positions) = (0f64, 0f64, 0usize);
        // Σ y and Σ y² per dimension, for the variance about the mean over all positions
        let (mut y_sum, mut y_sq): (Option<Tensor>, f64) = (None, 0.0);
        for chunk in tokens.rows().chunks(batch_size) {
            let batch = Tokens::new(chunk.to_vec(), tokens.pad_id())?;
            let logits = self.forward(&batch)?;
            let (s, n) = Self::loss_sum(&logits, &batch)?;
            ce_clean += s;
            n_ce += n;
            let (logits, cache) =
                self.run_with_saes(&batch, &mut [Splice::new(sae).error_term(false)])?;
            ce_sae += Self::loss_sum(&logits, &batch)?.0;
            let mut zero = Hooks::new();
            zero.add_filter(HookFilter::Points(vec![out]), |a, _| {
                Ok(Some(a.zeros_like()?))
            });
            let logits = self.run_with_hooks(&batch, &mut zero)?;
            ce_abl += Self::loss_sum(&logits, &batch)?.0;

            // the positions that count: real ones, BOS left out
            let p = batch.max_len();
            let keep: Vec<u32> = positions_without_bos(chunk, bos)
                .map(|(i, pos)| (i * p + pos) as u32)
                .collect();
            if keep.is_empty() {
                continue;
            }
            positions += keep.len();
            let keep = Tensor::new(keep, sae.w_enc.device())?;
            let rows = |name: &str| -> Result<Tensor> {
                let t = cache.get(&format!("{out}.{name}"))?;
                let (b, p) = (t.dim(0)?, t.dim(1)?);
                Ok(t.to_dtype(DType::F32)?
                    .reshape((b * p, ()))?
                    .index_select(&keep, 0)?)
            };
            let acts = rows("hook_sae_acts_post")?;
            l0_sum += acts
                .gt(0f32)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
            let err = rows("hook_sae_error")?;
            err_sum += err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            let y = (rows("hook_sae_recons")? + err)?;
            y_sq += y.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            let s = y.sum(0)?;
            y_sum = Some(match y_sum {
                Some(t) => (t + s)?,
                None => s,
            });
        }
        if n_ce == 0 || positions == 0 {
            return Err(LensError::too_few(
                "positions to evaluate the SAE on",
                2,
                tokens.max_len(),
                "give contexts of at least two tokens after BOS",
            ));
        }
        // Σ‖y − ȳ‖² = Σ‖y‖² − ‖Σy‖² / n
        let s = y_sum.map_or(Ok(0.0), |t| -> Result<f64> {
            Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
        })?;
        let total = (y_sq - s / positions as f64).max(1e-12);
        let n = n_ce as f64;
        let (clean, with, abl) = (ce_clean / n, ce_sae / n, ce_abl / n);
        Ok(SaeEval {
            l0: (l0_sum / positions as f64) as f32,
            explained_variance: (1.0 - err_sum / total) as f32,
            ce_loss_without_sae: clean as f32,
            ce_loss_with_sae: with as f32,
            ce_loss_with_ablation: abl as f32,
            ce_loss_score: ((abl - with) / (abl - clean)) as f32,
            positions,
        })
    }
}
