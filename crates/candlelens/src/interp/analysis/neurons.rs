//! Neurons as components of the residual stream: each MLP neuron's output `post[n] · W_out[n]`
//! (TransformerLens's `stack_neuron_results`), so that direct logit attribution reads single
//! neurons.

use candle_core::{DType, Tensor};

use super::{Pos, ResidStack};
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::HookPoint;
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

impl ActivationCache {
    /// Each MLP neuron's contribution to the residual stream in layers `0..layer` (all layers for
    /// `None`), labels `"L{l}N{n}"`: the cached `mlp.hook_post[n]` times row `n` of `W_out` (no
    /// bias), for the neurons in `neurons` (all for `None`). For models with a post-MLP norm
    /// (Gemma 2/3) each output is divided by the cached `ln2_post.hook_scale` and multiplied by
    /// the norm weight, so that a layer's neurons plus its `b_out` sum to `hook_mlp_out`, the
    /// norm's scale frozen. `[components, batch, d_model]` at one position per prompt.
    ///
    /// # Errors
    /// [`LensError::NotCached`] (needs `mlp.hook_post`, and `ln2_post.hook_scale` for Gemma
    /// 2/3); [`LensError::OutOfRange`] for a neuron `>= d_mlp`; [`LensError::Unsupported`] for
    /// [`Pos::All`] (one position per prompt keeps the stack `[d_mlp · layers, batch, d_model]`)
    /// or a mixture-of-experts model (its neurons belong to experts); [`LensError::Mismatch`] for
    /// a cache recorded on another model.
    pub fn stack_neuron_results(
        &self,
        model: &HookedTransformer,
        layer: Option<usize>,
        pos: Pos,
        neurons: Option<&[usize]>,
    ) -> Result<ResidStack> {
        self.check_model(&model.cfg)?;
        if pos == Pos::All {
            return Err(LensError::Unsupported {
                what: "stack_neuron_results at Pos::All".into(),
                fix: "take one position per prompt (Pos::Last or Pos::At)".into(),
            });
        }
        if model.cfg.moe.is_some() {
            return Err(LensError::Unsupported {
                what: "neuron results of a mixture-of-experts model".into(),
                fix: "its MLP neurons belong to experts; read the experts' outputs through hooks"
                    .into(),
            });
        }
        let d_mlp = model.cfg.d_mlp;
        let all: Vec<usize> = (0..d_mlp).collect();
        let neurons = neurons.unwrap_or(&all);
        if let Some(&n) = neurons.iter().find(|&&n| n >= d_mlp) {
            return Err(LensError::OutOfRange {
                what: "neuron".into(),
                index: n,
                len: d_mlp,
            });
        }
        let idx = Tensor::new(
            neurons.iter().map(|&n| n as u32).collect::<Vec<_>>(),
            model.device(),
        )?;
        let layer = self.layer_or_all(layer)?;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..layer {
            let post = self.select(self.at(HookPoint::MlpPost(l))?, pos)?; // [b, d_mlp]
            let post = post
                .contiguous()?
                .index_select(&idx, 1)?
                .to_dtype(DType::F32)?; // [b, k]
                                        // W_out rows of the chosen neurons: [k, d_model]
            let w_out = model.weights.layers[l]
                .w_out
                .t()?
                .contiguous()?
                .index_select(&idx, 0)?
                .to_dtype(DType::F32)?;
            // [k, b, d]: neuron k's output for prompt b
            let mut out = post
                .t()?
                .unsqueeze(2)?
                .broadcast_mul(&w_out.unsqueeze(1)?)?;
            if let Some(norm) = &model.weights.layers[l].ln2_post {
                let s = self.select(self.at(HookPoint::Ln2PostScale(l))?, pos)?; // [b, 1]
                out = out
                    .broadcast_div(&s.to_dtype(DType::F32)?.unsqueeze(0)?)?
                    .broadcast_mul(&norm.w.to_dtype(DType::F32)?)?;
            }
            parts.push(out);
            labels.extend(neurons.iter().map(|n| format!("L{l}N{n}")));
        }
        if parts.is_empty() {
            return Err(LensError::TooFew {
                what: "layers below `layer`".into(),
                need: 1,
                got: 0,
                fix: "pass a layer of 1 or more (neurons of layers 0..layer are stacked)".into(),
            });
        }
        Ok(ResidStack {
            stack: Tensor::cat(&parts, 0)?,
            labels,
            pos,
        })
    }
}
