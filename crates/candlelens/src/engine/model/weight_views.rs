//! TransformerLens's weight views: `W_E`, `W_pos`, `W_Q`, `W_K`, `W_V`, `W_O`, `W_in`,
//! `W_gate`, `W_out`, `W_U` and their biases, in TransformerLens's shapes, derived from the
//! canonical `[d_out, d_in]` layout of [`crate::engine::weights`].
//!
//! The views are the weights as the checkpoint has them — TransformerLens's
//! `from_pretrained_no_processing`: no layer-norm folding, no centring of the unembedding, no
//! merged biases. Models with grouped-query attention hold fewer key/value heads; `W_K`, `W_V`,
//! `b_K` and `b_V` repeat each one for the query heads that share it (TransformerLens's
//! `repeat_interleave`), so every view is indexed by query head. A missing bias is zeros, as
//! TransformerLens shows it.
//!
//! Views come in the model's compute dtype. Each all-layer view stacks a copy of every layer's matrix: `W_Q` of a 1.5B model is about
//! a quarter of its weights. The `*_at(layer)` forms copy one layer.
#![allow(non_snake_case)] // the names are TransformerLens's

use candle_core::Tensor;

use crate::engine::model::HookedTransformer;
use crate::engine::weights::LayerWeights;
use crate::error::{LensError, Result};

/// Which projection a per-head view reads.
#[derive(Clone, Copy)]
enum Proj {
    Q,
    K,
    V,
}

impl HookedTransformer {
    fn layer_weights(&self, layer: usize) -> Result<&LayerWeights> {
        self.weights
            .layers
            .get(layer)
            .ok_or(LensError::LayerOutOfRange {
                layer,
                n_layers: self.cfg.n_layers,
            })
    }

    /// Which key/value head each query head reads (`[n_heads]`).
    fn kv_head_ids(&self) -> Result<Tensor> {
        let group = self.cfg.n_heads / self.cfg.n_kv_heads.max(1);
        let ids: Vec<u32> = (0..self.cfg.n_heads)
            .map(|h| (h / group.max(1)) as u32)
            .collect();
        Ok(Tensor::new(ids, self.device())?)
    }

    /// One layer's `W_Q`/`W_K`/`W_V` as `[n_heads, d_model, d_head]`.
    fn proj_at(&self, layer: usize, which: Proj) -> Result<Tensor> {
        let w = self.layer_weights(layer)?;
        let (d, dh) = (self.cfg.d_model, self.cfg.d_head);
        let (m, heads) = match which {
            Proj::Q => (&w.w_q, self.cfg.n_heads),
            Proj::K => (&w.w_k, self.cfg.n_kv_heads),
            Proj::V => (&w.w_v, self.cfg.n_kv_heads),
        };
        // [heads * d_head, d_model] -> [heads, d_model, d_head]
        let per_head = m.reshape((heads, dh, d))?.transpose(1, 2)?.contiguous()?;
        self.expand_kv(per_head, heads)
    }

    /// One layer's `b_Q`/`b_K`/`b_V` as `[n_heads, d_head]`.
    fn bias_at(&self, layer: usize, which: Proj) -> Result<Tensor> {
        let w = self.layer_weights(layer)?;
        let (b, heads) = match which {
            Proj::Q => (&w.b_q, self.cfg.n_heads),
            Proj::K => (&w.b_k, self.cfg.n_kv_heads),
            Proj::V => (&w.b_v, self.cfg.n_kv_heads),
        };
        let per_head = match b {
            Some(b) => b.reshape((heads, self.cfg.d_head))?,
            None => Tensor::zeros((heads, self.cfg.d_head), self.dtype(), self.device())?,
        };
        self.expand_kv(per_head, heads)
    }

    /// Repeats key/value heads along axis 0 for the query heads that share them.
    fn expand_kv(&self, per_head: Tensor, heads: usize) -> Result<Tensor> {
        if heads == self.cfg.n_heads {
            return Ok(per_head);
        }
        Ok(per_head.index_select(&self.kv_head_ids()?, 0)?)
    }

    fn stack_layers(&self, f: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
        let parts = (0..self.cfg.n_layers).map(f).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&parts, 0)?)
    }

    /// The token embedding `W_E [d_vocab, d_model]`.
    pub fn W_E(&self) -> Tensor {
        self.weights.w_e.clone()
    }

    /// The learned positional embedding `W_pos [n_ctx, d_model]`.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a model with rotary positions (no `W_pos`).
    pub fn W_pos(&self) -> Result<Tensor> {
        self.weights
            .w_pos
            .clone()
            .ok_or_else(|| LensError::Unsupported {
                what: format!("W_pos of {}", self.cfg.name),
                fix: "this model encodes positions by rotating queries and keys (rotary); only models with learned positions (GPT-2, ...) have W_pos".into(),
            })
    }

    /// The unembedding `W_U [d_model, d_vocab]`.
    ///
    /// # Errors
    /// None for a loaded model (`W_U`'s shape is checked at load); only candle's allocation failure
    /// for the copy.
    pub fn W_U(&self) -> Result<Tensor> {
        Ok(self.weights.w_u.t()?.contiguous()?)
    }

    /// The unembedding bias `b_U [d_vocab]` (zeros when the model has none).
    ///
    /// # Errors
    /// None: only candle's allocation failure (the zeros of a model without `b_U`).
    pub fn b_U(&self) -> Result<Tensor> {
        match &self.weights.b_u {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(
                self.cfg.d_vocab,
                self.dtype(),
                self.device(),
            )?),
        }
    }

    /// Queries `W_Q [n_layers, n_heads, d_model, d_head]`: `q = ln1(x) @ W_Q[l, h] + b_Q[l, h]`
    /// (before rotary and the per-head q norm).
    ///
    /// # Errors
    /// None for a loaded model (the projections' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_Q(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.proj_at(l, Proj::Q))
    }

    /// Keys `W_K [n_layers, n_heads, d_model, d_head]`, key/value heads repeated per query head.
    ///
    /// # Errors
    /// None for a loaded model (the projections' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_K(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.proj_at(l, Proj::K))
    }

    /// Values `W_V [n_layers, n_heads, d_model, d_head]`, key/value heads repeated per query
    /// head.
    ///
    /// # Errors
    /// None for a loaded model (the projections' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_V(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.proj_at(l, Proj::V))
    }

    /// Outputs `W_O [n_layers, n_heads, d_head, d_model]`: `attn_out = Σ_h z[h] @ W_O[l, h] + b_O[l]`
    /// (before a post-attention norm, where the family has one).
    ///
    /// # Errors
    /// None for a loaded model (the projections' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_O(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.W_O_at(l))
    }

    /// `W_Q` of one layer, `[n_heads, d_model, d_head]`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn W_Q_at(&self, layer: usize) -> Result<Tensor> {
        self.proj_at(layer, Proj::Q)
    }

    /// `W_K` of one layer, `[n_heads, d_model, d_head]`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn W_K_at(&self, layer: usize) -> Result<Tensor> {
        self.proj_at(layer, Proj::K)
    }

    /// `W_V` of one layer, `[n_heads, d_model, d_head]`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn W_V_at(&self, layer: usize) -> Result<Tensor> {
        self.proj_at(layer, Proj::V)
    }

    /// `W_O` of one layer, `[n_heads, d_head, d_model]`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn W_O_at(&self, layer: usize) -> Result<Tensor> {
        let w = self.layer_weights(layer)?;
        let (d, h, dh) = (self.cfg.d_model, self.cfg.n_heads, self.cfg.d_head);
        // [d_model, n_heads * d_head] -> [n_heads, d_head, d_model]
        Ok(w.w_o.t()?.contiguous()?.reshape((h, dh, d))?)
    }

    /// Query biases `b_Q [n_layers, n_heads, d_head]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose query bias does not hold
    /// `n_heads * d_head` values (load does not check bias shapes); otherwise none.
    pub fn b_Q(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.bias_at(l, Proj::Q))
    }

    /// Key biases `b_K [n_layers, n_heads, d_head]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose key bias does not hold
    /// `n_kv_heads * d_head` values (load does not check bias shapes); otherwise none.
    pub fn b_K(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.bias_at(l, Proj::K))
    }

    /// Value biases `b_V [n_layers, n_heads, d_head]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose value bias does not hold
    /// `n_kv_heads * d_head` values (load does not check bias shapes); otherwise none.
    pub fn b_V(&self) -> Result<Tensor> {
        self.stack_layers(|l| self.bias_at(l, Proj::V))
    }

    /// Attention output biases `b_O [n_layers, d_model]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose attention output bias does not hold
    /// `d_model` values (load does not check bias shapes); otherwise none.
    pub fn b_O(&self) -> Result<Tensor> {
        self.stack_layers(|l| {
            self.bias_or_zeros(self.layer_weights(l)?.b_o.as_ref(), self.cfg.d_model)
        })
    }

    /// The MLP's input `W_in [n_layers, d_model, d_mlp]` (the "up" projection of a gated MLP):
    /// `hook_pre = ln2(x) @ W_in + b_in` (gated: `hook_pre_linear`).
    ///
    /// # Errors
    /// None for a loaded model (the MLP matrices' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_in(&self) -> Result<Tensor> {
        self.stack_layers(|l| Ok(self.layer_weights(l)?.w_in.t()?.contiguous()?))
    }

    /// The gate of a gated MLP `W_gate [n_layers, d_model, d_mlp]`: `hook_pre = ln2(x) @ W_gate`.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a model whose MLP has no gate.
    pub fn W_gate(&self) -> Result<Tensor> {
        self.stack_layers(|l| match &self.layer_weights(l)?.w_gate {
            Some(g) => Ok(g.t()?.contiguous()?),
            None => Err(LensError::Unsupported {
                what: format!("W_gate of {}", self.cfg.name),
                fix: "this model's MLP is not gated; its input weights are W_in".into(),
            }),
        })
    }

    /// The MLP's output `W_out [n_layers, d_mlp, d_model]`.
    ///
    /// # Errors
    /// None for a loaded model (the MLP matrices' shapes are checked at load); only candle's
    /// allocation failure for the copy.
    pub fn W_out(&self) -> Result<Tensor> {
        self.stack_layers(|l| Ok(self.layer_weights(l)?.w_out.t()?.contiguous()?))
    }

    /// MLP input biases `b_in [n_layers, d_mlp]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose MLP input bias does not hold `d_mlp`
    /// values (load does not check bias shapes); otherwise none.
    pub fn b_in(&self) -> Result<Tensor> {
        self.stack_layers(|l| {
            self.bias_or_zeros(self.layer_weights(l)?.b_in.as_ref(), self.cfg.d_mlp)
        })
    }

    /// MLP output biases `b_out [n_layers, d_model]`.
    ///
    /// # Errors
    /// A raw [`LensError::Candle`] only for a checkpoint whose MLP output bias does not hold
    /// `d_model` values (load does not check bias shapes); otherwise none.
    pub fn b_out(&self) -> Result<Tensor> {
        self.stack_layers(|l| {
            self.bias_or_zeros(self.layer_weights(l)?.b_out.as_ref(), self.cfg.d_model)
        })
    }

    fn bias_or_zeros(&self, b: Option<&Tensor>, n: usize) -> Result<Tensor> {
        match b {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(n, self.dtype(), self.device())?),
        }
    }

    /// Every weight view's name and shape, for a model inspection table.
    pub fn weight_view_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let c = &self.cfg;
        let (l, h, d, dh, m, v) = (
            c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_mlp, c.d_vocab,
        );
        let mut out = vec![("W_E", vec![v, d])];
        if let Some(p) = &self.weights.w_pos {
            out.push(("W_pos", p.dims().to_vec()));
        }
        out.extend([
            ("W_Q", vec![l, h, d, dh]),
            ("W_K", vec![l, h, d, dh]),
            ("W_V", vec![l, h, d, dh]),
            ("W_O", vec![l, h, dh, d]),
            ("b_Q", vec![l, h, dh]),
            ("b_K", vec![l, h, dh]),
            ("b_V", vec![l, h, dh]),
            ("b_O", vec![l, d]),
            ("W_in", vec![l, d, m]),
        ]);
        if self
            .weights
            .layers
            .first()
            .is_some_and(|w| w.w_gate.is_some())
        {
            out.push(("W_gate", vec![l, d, m]));
        }
        out.extend([
            ("W_out", vec![l, m, d]),
            ("b_in", vec![l, m]),
            ("b_out", vec![l, d]),
            ("W_U", vec![d, v]),
            ("b_U", vec![v]),
        ]);
        out
    }
}
