//! Binding-ID difference vectors: mean `resid_post` at `E_k` / `A_k` per layer
//! ([`BindingMeans`]) and their differences `Δ_E`, `Δ_A` ([`BindingVectors`]), with the
//! random-direction control.

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::hooks::Hooks;
use crate::engine::hooks::{HookFilter, HookPoint};
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;

use super::eval::{evaluate, Evaluation};
use super::positions::BindingBatch;

/// Mean `hook_resid_post` over a batch at every pair's entity and attribute positions.
#[derive(Clone, Debug)]
pub struct BindingMeans {
    /// Mean `resid_post` at `E_k`: `[num_pairs, n_layers, d_model]` (f32).
    pub entity: Tensor,
    /// Mean `resid_post` at `A_k`: `[num_pairs, n_layers, d_model]` (f32).
    pub attribute: Tensor,
}

impl BindingMeans {
    /// One forward of the batch: the means at every layer, read by hooks at the entity and
    /// attribute positions (nothing else is kept), and the clean [`Evaluation`].
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for prompts with different numbers of pairs.
    pub fn collect(
        model: &HookedTransformer,
        batch: &BindingBatch,
    ) -> Result<(BindingMeans, Evaluation)> {
        let k = batch.num_pairs();
        if batch.positions.iter().any(|p| p.entities.len() != k) {
            return Err(LensError::mismatch(
                "pairs per prompt",
                "BindingMeans::collect needs every prompt to have the same number of pairs",
            ));
        }
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        // flat row index into [batch * pos]: slot (E_0..E_k-1, A_0..A_k-1) major, prompt minor
        let mut idx = Vec::with_capacity(2 * k * b);
        for slot in 0..2 * k {
            for (i, pos) in batch.positions.iter().enumerate() {
                let at = if slot < k {
                    pos.entities[slot]
                } else {
                    pos.attributes[slot - k]
                };
                idx.push((i * p + at) as u32);
            }
        }
        let idx = Tensor::new(idx, model.device())?;
        let n_layers = model.cfg.n_layers;
        let mut per_layer: Vec<Option<Tensor>> = vec![None; n_layers];
        let eval = {
            let mut hooks = Hooks::new();
            let points = (0..n_layers).map(HookPoint::ResidPost).collect();
            let slots = &mut per_layer;
            hooks.add_filter(HookFilter::Points(points), |act, hp| {
                let d = act.dim(2)?;
                let rows = act
                    .reshape((b * p, d))?
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?
                    .reshape((2 * k, b, d))?
                    .mean(1)?; // [2k, d]
                if let Some(l) = hp.layer() {
                    slots[l] = Some(rows);
                }
                Ok(None)
            });
            evaluate(model, batch, &mut hooks)?
        };
        let layers = per_layer
            .into_iter()
            .enumerate()
            .map(|(l, t)| {
                t.ok_or_else(|| LensError::Internal(format!("layer {l}'s resid_post never fired")))
            })
            .collect::<Result<Vec<_>>>()?;
        let all = Tensor::stack(&layers, 1)?; // [2k, n_layers, d]
        Ok((
            BindingMeans {
                entity: all.narrow(0, 0, k)?,
                attribute: all.narrow(0, k, k)?,
            },
            eval,
        ))
    }

    /// `Δ_E = mean[E_0] - mean[E_1]`, `Δ_A = mean[A_0] - mean[A_1]` per layer.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] when the means hold fewer than two pairs.
    pub fn vectors(&self) -> Result<BindingVectors> {
        self.difference(0, 1)
    }

    /// `mean[E_i] - mean[E_j]` and `mean[A_i] - mean[A_j]` per layer.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a pair index beyond the prompts' pairs.
    pub fn difference(&self, i: usize, j: usize) -> Result<BindingVectors> {
        let k = self.entity.dim(0)?;
        if i >= k || j >= k {
            return Err(LensError::OutOfRange {
                what: "pair".into(),
                index: i.max(j),
                len: k,
            });
        }
        Ok(BindingVectors {
            entity: (self.entity.i(i)? - self.entity.i(j)?)?,
            attribute: (self.attribute.i(i)? - self.attribute.i(j)?)?,
        })
    }
}

/// Binding-ID difference vectors per layer.
#[derive(Clone, Debug)]
pub struct BindingVectors {
    /// `Δ_E[l]`: `[n_layers, d_model]` (f32).
    pub entity: Tensor,
    /// `Δ_A[l]`: `[n_layers, d_model]` (f32).
    pub attribute: Tensor,
}

impl BindingVectors {
    /// L2 norms per layer: `(|Δ_E[l]|, |Δ_A[l]|)`.
    ///
    /// # Errors
    /// None for vectors from [`BindingMeans`]; a raw [`LensError::Candle`] if a hand-set field is
    /// not a 2-D f32 tensor.
    pub fn norms(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?) };
        Ok((n(&self.entity)?, n(&self.attribute)?))
    }

    /// The control: at every layer a random direction (standard normal, seeded) scaled to the
    /// norm of `Δ_E[l]` (resp. `Δ_A[l]`).
    ///
    /// # Errors
    /// None for vectors from [`BindingMeans`]; a raw [`LensError::Candle`] if a hand-set field is
    /// not a 2-D f32 tensor.
    pub fn random_like(&self, seed: u64) -> Result<BindingVectors> {
        let mut rng = PyRandom::seed(seed);
        let mut random = |t: &Tensor| -> Result<Tensor> {
            let (l, d) = t.dims2()?;
            let norms: Vec<f32> = t.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            let mut out = Vec::with_capacity(l * d);
            for norm in norms {
                let g: Vec<f64> = (0..d).map(|_| rng.box_muller()).collect();
                let gn = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
                out.extend(g.iter().map(|x| (x / gn * norm as f64) as f32));
            }
            Ok(Tensor::from_vec(out, (l, d), t.device())?)
        };
        Ok(BindingVectors {
            entity: random(&self.entity)?,
            attribute: random(&self.attribute)?,
        })
    }
}
