//! Interventions that add multiples of `Δ` at entity / attribute positions of every layer's
//! `hook_resid_post` ([`Intervention`], [`intervene`]).

use candle_core::{IndexOp, Tensor};

use crate::engine::hooks::Hooks;
use crate::engine::hooks::{HookFilter, HookPoint};
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

use super::eval::{evaluate, Evaluation};
use super::positions::BindingBatch;
use super::vectors::BindingVectors;

/// Which member of a pair an edit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The entity `E_k`.
    Entity,
    /// The attribute `A_k`.
    Attribute,
}

/// Edits of the residual stream at every layer's `hook_resid_post`: each `(role, k, c)` adds
/// `c · Δ_role[l]` at the position of pair `k`'s entity or attribute, in every prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Intervention {
    /// A label for tables.
    pub name: String,
    /// `(role, pair, coefficient)`.
    pub edits: Vec<(Role, usize, f32)>,
}

impl Intervention {
    /// The source's: `resid_post[E_1] -= Δ_E[l]`, `resid_post[A_1] -= Δ_A[l]` at every layer.
    pub fn subtract() -> Self {
        Intervention {
            name: "subtract Δ at E_1, A_1".into(),
            edits: vec![(Role::Entity, 1, -1.0), (Role::Attribute, 1, -1.0)],
        }
    }

    /// The paper's entity swap: `E_0 -= Δ_E`, `E_1 += Δ_E` (E_0 takes E_1's binding ID and
    /// vice versa): the question about `E_k` should get the other attribute.
    pub fn swap_entities() -> Self {
        Intervention {
            name: "swap entity IDs".into(),
            edits: vec![(Role::Entity, 0, -1.0), (Role::Entity, 1, 1.0)],
        }
    }

    /// The attribute swap: `A_0 -= Δ_A`, `A_1 += Δ_A`.
    pub fn swap_attributes() -> Self {
        Intervention {
            name: "swap attribute IDs".into(),
            edits: vec![(Role::Attribute, 0, -1.0), (Role::Attribute, 1, 1.0)],
        }
    }

    /// Both swaps at once: each pair keeps one binding ID, so the answer should not change.
    pub fn swap_both() -> Self {
        let mut edits = Self::swap_entities().edits;
        edits.extend(Self::swap_attributes().edits);
        Intervention {
            name: "swap both".into(),
            edits,
        }
    }

    /// The additive edit per position, as a coefficient matrix `[batch * pos, 2]` (columns:
    /// `Δ_E`, `Δ_A`); the edit at layer `l` is this times `[Δ_E[l]; Δ_A[l]]`.
    fn coefficients(&self, batch: &BindingBatch, device: &candle_core::Device) -> Result<Tensor> {
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        let mut m = vec![0f32; b * p * 2];
        for (i, pos) in batch.positions.iter().enumerate() {
            for &(role, k, c) in &self.edits {
                let (list, col) = match role {
                    Role::Entity => (&pos.entities, 0),
                    Role::Attribute => (&pos.attributes, 1),
                };
                let at = *list.get(k).ok_or_else(|| LensError::OutOfRange {
                    what: format!("pair edited by intervention '{}' in prompt {i}", self.name),
                    index: k,
                    len: list.len(),
                })?;
                m[(i * p + at) * 2 + col] += c;
            }
        }
        Ok(Tensor::from_vec(m, (b * p, 2), device)?)
    }

    /// The edit added at layer `l`'s `resid_post`: `[batch, pos, d_model]`, zero except at the
    /// edited positions.
    ///
    /// # Errors
    /// As [`Self::hooks`].
    pub fn delta(
        &self,
        vectors: &BindingVectors,
        batch: &BindingBatch,
        layer: usize,
    ) -> Result<Tensor> {
        let m = self.coefficients(batch, vectors.entity.device())?;
        let v = Tensor::stack(&[vectors.entity.i(layer)?, vectors.attribute.i(layer)?], 0)?;
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        Ok(m.matmul(&v)?.reshape((b, p, v.dim(1)?))?)
    }

    /// Hooks on every layer's `hook_resid_post` that add the edits; use them with
    /// [`HookedTransformer::run_with_hooks`] on `batch.tokens`.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the vectors do not fit the model (`[n_layers, d_model]`),
    /// [`LensError::OutOfRange`] if an edit names a pair the prompts lack.
    pub fn hooks(
        &self,
        model: &HookedTransformer,
        vectors: &BindingVectors,
        batch: &BindingBatch,
    ) -> Result<Hooks<'static>> {
        let mut hooks = Hooks::new();
        self.add_to(&mut hooks, model, vectors, batch)?;
        Ok(hooks)
    }

    /// Adds the edits' hooks to an existing set (after the hooks already there).
    ///
    /// # Errors
    /// As [`Self::hooks`].
    pub fn add_to(
        &self,
        hooks: &mut Hooks,
        model: &HookedTransformer,
        vectors: &BindingVectors,
        batch: &BindingBatch,
    ) -> Result<()> {
        let want = [model.cfg.n_layers, model.cfg.d_model];
        for t in [&vectors.entity, &vectors.attribute] {
            if t.dims() != want {
                return Err(LensError::mismatch("binding vectors and model", format!(
                        "binding vectors of shape {:?} for a model with [n_layers, d_model] = {want:?}; compute them on this model",
                        t.dims()
                    )));
            }
        }
        let device = model.device();
        let m = self.coefficients(batch, device)?;
        // [n_layers, 2, d_model]
        let v = Tensor::stack(&[&vectors.entity, &vectors.attribute], 1)?.to_device(device)?;
        let (b, p, d) = (batch.tokens.batch(), batch.tokens.max_len(), want[1]);
        let points = (0..model.cfg.n_layers).map(HookPoint::ResidPost).collect();
        hooks.add_filter(HookFilter::Points(points), move |act, hp| {
            let Some(l) = hp.layer() else { return Ok(None) };
            let delta = m.matmul(&v.i(l)?)?.reshape((b, p, d))?;
            Ok(Some(act.broadcast_add(&delta.to_dtype(act.dtype())?)?))
        });
        Ok(())
    }
}

/// Runs `batch` with `intervention` built from `vectors` and evaluates it.
///
/// # Errors
/// As [`Intervention::hooks`] and [`evaluate`].
pub fn intervene(
    model: &HookedTransformer,
    batch: &BindingBatch,
    vectors: &BindingVectors,
    intervention: &Intervention,
) -> Result<Evaluation> {
    let mut hooks = intervention.hooks(model, vectors, batch)?;
    evaluate(model, batch, &mut hooks)
}
