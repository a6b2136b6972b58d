//! TransformerLens's analysis layer on an [`ActivationCache`]: the residual stream as a stack
//! of components (accumulated, decomposed, per head), the final norm applied to a stack, and
//! direct logit attribution.

use candle_core::{DType, IndexOp, Tensor, D};

use crate::engine::config::NormKind;
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::HookPoint;
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

mod logit_diff;
mod neurons;
pub use logit_diff::LogitDiffRun;

/// Which positions of a `[batch, pos, d_model]` activation a stack keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pos {
    /// Every position: stacks are `[components, batch, pos, d_model]`.
    All,
    /// Each prompt's final real position (padding aware): `[components, batch, d_model]`.
    Last,
    /// Each prompt's own token `i`, counted in its tokens (`-1` = its last real token, `0` = its
    /// first, whichever side the batch is padded on; TL's `pos_slice`): `[components, batch,
    /// d_model]`.
    At(i64),
}

/// Residual-stream components stacked on a leading axis, with TransformerLens's labels.
#[derive(Clone, Debug)]
pub struct ResidStack {
    /// `[components, batch, d_model]` (one position) or `[components, batch, pos, d_model]`.
    pub stack: Tensor,
    /// One label per component (`"3_pre"`, `"5_attn_out"`, `"L2H7"`, ...).
    pub labels: Vec<String>,
    /// The positions the stack was taken at; [`ActivationCache::apply_ln_to_stack`] and
    /// [`HookedTransformer::logit_attribution`] read the norm's scale at the same ones.
    pub pos: Pos,
}

/// Direct logit attribution of a stack onto per-prompt directions.
#[derive(Clone, Debug)]
pub struct LogitAttribution {
    /// One label per component, as in the stack.
    pub labels: Vec<String>,
    /// Per component, the dot product with the direction averaged over the batch.
    pub values: Vec<f32>,
    /// Why the numbers are not an exact decomposition of the logits, when they are not.
    pub note: Option<String>,
}

/// The old name of [`LogitAttribution`].
#[deprecated(
    since = "0.2.0",
    note = "renamed `LogitAttribution` (attribution patching is `attribution::AttributionPatcher`)"
)]
pub type Attribution = LogitAttribution;

impl LogitAttribution {
    /// The `k` largest components, largest first: `(label, index, value)`.
    pub fn top(&self, k: usize) -> Vec<(String, usize, f32)> {
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_by(|&a, &b| self.values[b].total_cmp(&self.values[a]));
        order
            .into_iter()
            .take(k)
            .map(|i| (self.labels[i].clone(), i, self.values[i]))
            .collect()
    }

    /// The `k` smallest (most negative) components, smallest first.
    pub fn bottom(&self, k: usize) -> Vec<(String, usize, f32)> {
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_by(|&a, &b| self.values[a].total_cmp(&self.values[b]));
        order
            .into_iter()
            .take(k)
            .map(|i| (self.labels[i].clone(), i, self.values[i]))
            .collect()
    }

    /// The `(layer, head)` of the `k` largest components of a per-head attribution (labels
    /// `L{l}H{h}`, from [`ActivationCache::stack_head_results`]), largest first — the heads the
    /// sources show attention patterns for.
    ///
    /// # Errors
    /// [`LensError::BadData`] if the labels are not head labels.
    pub fn top_heads(&self, k: usize) -> Result<Vec<(usize, usize)>> {
        self.top(k).iter().map(|(l, _, _)| parse_head(l)).collect()
    }

    /// The `(layer, head)` of the `k` most negative components, most negative first.
    ///
    /// # Errors
    /// As [`Self::top_heads`].
    pub fn bottom_heads(&self, k: usize) -> Result<Vec<(usize, usize)>> {
        self.bottom(k)
            .iter()
            .map(|(l, _, _)| parse_head(l))
            .collect()
    }

    /// A per-head attribution as a layer × head heatmap.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if there are not `n_layers * n_heads` values.
    pub fn head_figure(
        &self,
        n_layers: usize,
        n_heads: usize,
        title: &str,
    ) -> Result<crate::viz::Figure> {
        let heads: Vec<String> = (0..n_heads).map(|h| h.to_string()).collect();
        let layers: Vec<String> = (0..n_layers).map(|l| l.to_string()).collect();
        Ok(
            crate::viz::Figure::heatmap(self.grid(n_layers, n_heads)?, heads, layers, title)
                .axes("Head", "Layer"),
        )
    }

    /// The attribution per component as a line over the labels (the sources' per-layer plot).
    pub fn line_figure(&self, title: &str) -> crate::viz::Figure {
        let x: Vec<f32> = (0..self.values.len()).map(|i| i as f32).collect();
        crate::viz::Figure::line(
            x,
            vec![("logit diff".into(), self.values.clone())],
            Some(self.labels.clone()),
            title,
        )
        .axes("component", "logit diff")
    }

    /// The logit lens as the source draws it: one point per half-layer (the accumulated
    /// residual's labels `0_pre`, `0_mid`, …, `final_post` at `0, 0.5, …`), notes printed first.
    pub fn lens_figure(&self, title: &str) -> crate::viz::Figure {
        if let Some(n) = &self.note {
            println!("note: {n}");
        }
        let x: Vec<f32> = (0..self.values.len()).map(|i| i as f32 / 2.0).collect();
        crate::viz::Figure::line(
            x,
            vec![("logit diff".into(), self.values.clone())],
            Some(self.labels.clone()),
            title,
        )
        .axes("layer", "logit diff")
    }

    /// Values reshaped to `[rows][cols]` (per-head attribution as layer x head).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the count does not fit.
    pub fn grid(&self, rows: usize, cols: usize) -> Result<Vec<Vec<f32>>> {
        if rows * cols != self.values.len() {
            return Err(LensError::mismatch(
                "values and grid shape",
                format!(
                    "{} values do not make a {rows} x {cols} grid",
                    self.values.len()
                ),
            ));
        }
        Ok(self.values.chunks(cols).map(<[f32]>::to_vec).collect())
    }
}

/// `"L3H5"` → `(3, 5)`.
fn parse_head(label: &str) -> Result<(usize, usize)> {
    let bad = || LensError::BadData {
        what: format!("component label {label:?}"),
        detail: "head rankings need a per-head stack (stack_head_results, labels L{l}H{h})".into(),
    };
    let rest = label.strip_prefix('L').ok_or_else(bad)?;
    let (l, h) = rest.split_once('H').ok_or_else(bad)?;
    Ok((l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

impl ActivationCache {
    /// Picks positions from a `[batch, pos, ...]` activation.
    fn select(&self, t: &Tensor, pos: Pos) -> Result<Tensor> {
        match pos {
            Pos::All => Ok(t.clone()),
            Pos::At(i) => match self.tokens() {
                // each prompt's own token i (padding on either side)
                Some(tokens) => {
                    let rows = (0..tokens.batch())
                        .map(|b| Ok(t.i((b, tokens.resolve_pos(b, i)?))?))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Tensor::stack(&rows, 0)?)
                }
                None => {
                    let len = t.dim(1)?;
                    let p = if i < 0 { len as i64 + i } else { i };
                    if p < 0 || p >= len as i64 {
                        return Err(LensError::PositionOutOfRange { pos: i, len });
                    }
                    Ok(t.i((.., p as usize))?.contiguous()?)
                }
            },
            Pos::Last => {
                let tokens = self.tokens().ok_or_else(|| LensError::NoTokens {
                    what: "Pos::Last".into(),
                })?;
                tokens.gather_last(t)
            }
        }
    }

    fn n_layers(&self) -> usize {
        self.keys()
            .filter_map(|k| match k {
                HookPoint::ResidPre(l) | HookPoint::ResidPost(l) => Some(l + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn layer_or_all(&self, layer: Option<usize>) -> Result<usize> {
        let n = self.n_layers();
        match layer {
            None => Ok(n),
            Some(l) if l <= n => Ok(l),
            Some(l) => Err(LensError::LayerOutOfRange {
                layer: l,
                n_layers: n,
            }),
        }
    }

    /// The residual stream as it accumulates: `resid_pre` of every layer up to `layer` (all
    /// layers if `None`), with `resid_mid` between them when `incl_mid`, and `final_post` when
    /// it reaches the end. Labels `"0_pre", "0_mid", ..., "final_post"` (the logit lens).
    ///
    /// # Errors
    /// [`LensError::NotCached`] if the cache lacks a component.
    pub fn accumulated_resid(
        &self,
        layer: Option<usize>,
        incl_mid: bool,
        pos: Pos,
    ) -> Result<ResidStack> {
        let n = self.n_layers();
        if n == 0 {
            // no residual stream at all: name the first point it needs
            self.at(HookPoint::ResidPre(0))?;
        }
        let layer = self.layer_or_all(layer)?;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..=layer {
            if l == n {
                parts.push(self.select(self.at(HookPoint::ResidPost(n - 1))?, pos)?);
                labels.push("final_post".to_string());
                continue;
            }
            parts.push(self.select(self.at(HookPoint::ResidPre(l))?, pos)?);
            labels.push(format!("{l}_pre"));
            if incl_mid && l < layer {
                parts.push(self.select(self.at(HookPoint::ResidMid(l))?, pos)?);
                labels.push(format!("{l}_mid"));
            }
        }
        Ok(ResidStack {
            stack: Tensor::stack(&parts, 0)?,
            labels,
            pos,
        })
    }

    /// The residual stream entering `layer` (the final one if `None`) split into what wrote
    /// it: `embed`, `pos_embed` (learned positions), then each layer's `attn_out` and
    /// `mlp_out`. The components sum to that residual.
    ///
    /// # Errors
    /// [`LensError::NotCached`].
    pub fn decompose_resid(
        &self,
        layer: Option<usize>,
        incl_embeds: bool,
        pos: Pos,
    ) -> Result<ResidStack> {
        let layer = self.layer_or_all(layer)?;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        if incl_embeds {
            parts.push(self.select(self.at(HookPoint::Embed)?, pos)?);
            labels.push("embed".to_string());
            if self.contains(HookPoint::PosEmbed) {
                parts.push(self.select(self.at(HookPoint::PosEmbed)?, pos)?);
                labels.push("pos_embed".to_string());
            }
        }
        for l in 0..layer {
            parts.push(self.select(self.at(HookPoint::AttnOut(l))?, pos)?);
            labels.push(format!("{l}_attn_out"));
            parts.push(self.select(self.at(HookPoint::MlpOut(l))?, pos)?);
            labels.push(format!("{l}_mlp_out"));
        }
        Ok(ResidStack {
            stack: Tensor::stack(&parts, 0)?,
            labels,
            pos,
        })
    }

    /// Each attention head's contribution to the residual stream, layers `0..layer`, labels
    /// `"L{l}H{h}"`: `z W_O` per head from the cached `hook_z` (no bias). For models with a
    /// post-attention norm (Gemma 2/3) each head's output is divided by the cached
    /// `ln1_post.hook_scale` and multiplied by the norm weight, so the heads (plus nothing
    /// else) sum to `hook_attn_out` exactly, the norm's scale frozen at its cached value.
    ///
    /// # Errors
    /// [`LensError::NotCached`] (needs `hook_z`, and `ln1_post.hook_scale` for Gemma 2/3),
    /// [`LensError::Mismatch`] for a cache recorded on another model.
    pub fn stack_head_results(
        &self,
        model: &HookedTransformer,
        layer: Option<usize>,
        pos: Pos,
    ) -> Result<ResidStack> {
        self.check_model(&model.cfg)?;
        let layer = self.layer_or_all(layer)?;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..layer {
            let z = self.at(HookPoint::Z(l))?;
            let mut result = model.head_results(l, z)?; // [b, p, h, d]
            if let Some(post) = &model.weights.layers[l].ln1_post {
                let s = self.at(HookPoint::Ln1PostScale(l))?.unsqueeze(2)?; // [b, p, 1, 1]
                result = result
                    .to_dtype(DType::F32)?
                    .broadcast_div(&s.to_dtype(DType::F32)?)?
                    .to_dtype(model.dtype())?
                    .broadcast_mul(&post.w)?;
            }
            let result = self.select(&result, pos)?; // [b, (p,) h, d]
            let head_axis = result.rank() - 2;
            for h in 0..model.cfg.n_heads {
                parts.push(result.narrow(head_axis, h, 1)?.squeeze(head_axis)?);
                labels.push(format!("L{l}H{h}"));
            }
        }
        Ok(ResidStack {
            stack: Tensor::stack(&parts, 0)?,
            labels,
            pos,
        })
    }

    /// Applies the final norm to every component as the model applies it to their sum, with
    /// the norm's scale frozen at the cached `ln_final.hook_scale` at the stack's positions
    /// (LayerNorm: each component is also centred). Returns `[components, batch, d_model]` (or
    /// with a `pos` axis for [`Pos::All`]). The weight is not applied: it is folded into
    /// [`HookedTransformer::tokens_to_residual_directions`], as TransformerLens folds it into
    /// `W_U`.
    ///
    /// # Errors
    /// [`LensError::NotCached`] without `ln_final.hook_scale`, [`LensError::Mismatch`] for a
    /// cache recorded on another model.
    pub fn apply_ln_to_stack(
        &self,
        model: &HookedTransformer,
        stack: &ResidStack,
    ) -> Result<Tensor> {
        self.check_model(&model.cfg)?;
        let scale = self.select(self.at(HookPoint::LnFinalScale)?, stack.pos)?; // [b, (p,) 1]
        let mut x = stack.stack.to_dtype(DType::F32)?;
        if model.cfg.norm == NormKind::LayerNorm {
            x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        }
        Ok(x.broadcast_div(&scale.to_dtype(DType::F32)?.unsqueeze(0)?)?)
    }
}

impl HookedTransformer {
    /// The residual-stream direction of each token: its unembedding row times the final
    /// norm's weight, so that `apply_ln_to_stack(x) · direction` is the token's logit from `x`
    /// (up to the norm's bias and the unembedding bias, constant across components).
    /// `[n_tokens, d_model]`.
    ///
    /// # Errors
    /// [`LensError::TokenOutOfRange`].
    pub fn tokens_to_residual_directions(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.cfg.d_vocab) {
            return Err(LensError::TokenOutOfRange {
                id,
                d_vocab: self.cfg.d_vocab,
            });
        }
        let ids = Tensor::new(tokens, self.device())?;
        let rows = self
            .weights
            .w_u
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?;
        Ok(rows.broadcast_mul(&self.weights.ln_final.w.to_dtype(DType::F32)?)?)
    }

    /// Per prompt `direction(correct) - direction(incorrect)`: `[batch, d_model]`.
    ///
    /// # Errors
    /// As [`Self::tokens_to_residual_directions`].
    pub fn logit_diff_directions(&self, pairs: &[(u32, u32)]) -> Result<Tensor> {
        let c: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let i: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        Ok((self.tokens_to_residual_directions(&c)? - self.tokens_to_residual_directions(&i)?)?)
    }

    /// The part of each pair's logit difference that no residual component carries: the final
    /// norm's bias and the unembedding bias, `b_ln · (W_U[c] − W_U[i]) + b_U[c] − b_U[i]`
    /// (TransformerLens folds both into `b_U`, which `residual_stack_to_logit_diff` leaves
    /// out). Zero for models without those biases (RMSNorm, no `b_U`). One value per pair.
    /// The final residual's attribution plus this equals the logit difference (before any
    /// softcap).
    ///
    /// # Errors
    /// [`LensError::TokenOutOfRange`].
    pub fn logit_diff_bias(&self, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
        let ids: Vec<u32> = pairs.iter().flat_map(|&(c, i)| [c, i]).collect();
        if let Some(&id) = ids.iter().find(|&&t| t as usize >= self.cfg.d_vocab) {
            return Err(LensError::TokenOutOfRange {
                id,
                d_vocab: self.cfg.d_vocab,
            });
        }
        let per_token: Vec<f32> = if ids.is_empty() {
            Vec::new()
        } else {
            let idx = Tensor::new(ids.as_slice(), self.device())?;
            let mut v = Tensor::zeros(ids.len(), DType::F32, self.device())?;
            if let Some(b) = &self.weights.ln_final.b {
                let rows = self
                    .weights
                    .w_u
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?;
                v = (v + rows
                    .matmul(&b.to_dtype(DType::F32)?.unsqueeze(1)?)?
                    .squeeze(1)?)?;
            }
            if let Some(bu) = &self.weights.b_u {
                v = (v + bu.index_select(&idx, 0)?.to_dtype(DType::F32)?)?;
            }
            v.to_vec1()?
        };
        Ok(per_token.chunks(2).map(|ci| ci[0] - ci[1]).collect())
    }

    /// Per prompt, mean direction of the correct group minus mean direction of the incorrect
    /// one (the Paris source's group direction): `[batch, d_model]`.
    ///
    /// # Errors
    /// As [`Self::tokens_to_residual_directions`].
    pub fn group_diff_directions(
        &self,
        groups: &[crate::interp::metrics::TokenGroups],
    ) -> Result<Tensor> {
        let rows = groups
            .iter()
            .map(|g| {
                let c = self.tokens_to_residual_directions(&g.correct)?.mean(0)?;
                let i = self.tokens_to_residual_directions(&g.incorrect)?.mean(0)?;
                Ok((c - i)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Direct logit attribution: every component of `stack` (at the one position per prompt it
    /// was taken at), with the final norm applied, dotted with the prompt's direction and
    /// averaged over the batch. With a final-logit softcap (Gemma 2) the logits are `cap * tanh(x / cap)` of
    /// these sums: the note says so.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a `Pos::All` stack; [`LensError::NotCached`] without
    /// `ln_final.hook_scale`; [`LensError::Mismatch`] for another model's cache or not one row of
    /// `directions` per prompt; a raw [`LensError::Candle`] if `directions` is not `[_, d_model]`.
    pub fn logit_attribution(
        &self,
        cache: &ActivationCache,
        stack: &ResidStack,
        directions: &Tensor,
    ) -> Result<LogitAttribution> {
        if stack.pos == Pos::All {
            return Err(LensError::Unsupported {
                what: "logit attribution at Pos::All".into(),
                fix: "it reads one position per prompt; use Pos::Last or Pos::At".into(),
            });
        }
        let scaled = cache.apply_ln_to_stack(self, stack)?; // [c, b, d]
        let (_, b, _) = scaled.dims3()?;
        let dirs = directions.to_dtype(DType::F32)?;
        if dirs.dims2()?.0 != b {
            return Err(LensError::mismatch(
                "directions and prompts",
                format!(
                    "{} directions for a batch of {b} prompts; give one direction per prompt",
                    dirs.dim(0)?
                ),
            ));
        }
        let values: Vec<f32> = (scaled
            .broadcast_mul(&dirs.unsqueeze(0)?)?
            .sum(D::Minus1)?
            .sum(1)?
            / b as f64)?
            .to_vec1()?;
        let note = self.cfg.final_softcap.map(|cap| {
            format!(
                "this model soft-caps its logits (cap {cap}): the logits are cap·tanh(sum / cap), \
                 so these attributions are to the pre-cap logits and do not add up to the logit difference"
            )
        });
        Ok(LogitAttribution {
            labels: stack.labels.clone(),
            values,
            note,
        })
    }
}
