//! TransformerLens's weight processing: folding the norms' weights into the matrices that read
//! them, centring what writes to the residual stream and the unembedding, and folding the value
//! biases into the attention output bias. Each step leaves the model's next-token distribution
//! unchanged; what changes is where numbers live — per-head and per-component attributions,
//! the residual stream's mean, the logits' per-position constant.
//!
//! The steps, in TransformerLens's order (`HookedTransformer.process_weights_`):
//!
//! 1. `fold_ln`: a norm `w ⊙ x̂ + b` before a linear map `W` becomes `x̂` before `W diag(w)`
//!    with bias `W b` added to the map's; the norm keeps only its normalisation (weight 1, bias
//!    0: TransformerLens's `LNPre` / `RMSPre`). With LayerNorm, the reading weights are then
//!    centred over `d_model` (`x̂` has mean 0, so this changes nothing).
//! 2. `center_writing_weights` (LayerNorm only): `W_E`, `W_pos`, `W_O`, `b_O`, `W_out`, `b_out`
//!    lose their mean over `d_model`; every reader of the residual subtracts it anyway.
//! 3. `center_unembed`: `W_U` and `b_U` lose their mean over the vocabulary, a per-position
//!    constant on the logits that softmax ignores.
//! 4. `fold_value_biases`: `b_V` moves into `b_O` as `Σ_h b_V[h] W_O[h]`; the attention
//!    pattern's rows sum to 1, so every position receives exactly that.

use candle_core::{DType, Tensor};

use crate::engine::config::{ModelConfig, NormKind};
use crate::engine::weights::{NormWeights, Weights};
use crate::error::{LensError, Result};

pub use crate::engine::config::Processing;

impl Processing {
    fn steps(&self) -> [(Step, bool); 4] {
        [
            (Step::FoldLn, self.fold_ln),
            (Step::CenterWriting, self.center_writing_weights),
            (Step::CenterUnembed, self.center_unembed),
            (Step::FoldValueBiases, self.fold_value_biases),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    FoldLn,
    CenterWriting,
    CenterUnembed,
    FoldValueBiases,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::FoldLn => "fold_ln",
            Step::CenterWriting => "center_writing_weights",
            Step::CenterUnembed => "center_unembed",
            Step::FoldValueBiases => "fold_value_biases",
        }
    }

    /// Why this step cannot apply to the model, and whether TransformerLens leaves it out
    /// there (only then does `skip_inapplicable` skip it rather than fail).
    fn obstacle(self, cfg: &ModelConfig, w: &Weights) -> Option<(String, bool)> {
        let layer_norm = cfg.norm == NormKind::LayerNorm;
        match self {
            Step::FoldLn => {
                if cfg.moe.is_some() && layer_norm {
                    return Some((
                        "a mixture of experts' router has no bias to take a LayerNorm's bias"
                            .into(),
                        true,
                    ));
                }
                if layer_norm && cfg.gated_mlp {
                    return Some((
                        "a gated MLP's gate has no bias to take a LayerNorm's bias".into(),
                        false,
                    ));
                }
                None
            }
            Step::CenterWriting if !layer_norm => Some((
                format!(
                    "{:?} does not subtract the residual's mean, so centring the weights that write to it would change the model",
                    cfg.norm
                ),
                true,
            )),
            Step::CenterWriting => None,
            Step::CenterUnembed if cfg.final_softcap.is_some() => Some((
                "the final logits are softcapped, and a softcap does not ignore a constant added to the logits".into(),
                true,
            )),
            Step::CenterUnembed => None,
            Step::FoldValueBiases if w.layers.iter().all(|l| l.b_v.is_none()) => {
                Some(("the model has no value biases to fold".into(), true))
            }
            Step::FoldValueBiases => None,
        }
    }
}

/// Applies `p` to `w` (and records it in `cfg.processing`); returns the steps applied.
pub(crate) fn process(cfg: &mut ModelConfig, w: &mut Weights, p: Processing) -> Result<Processing> {
    let mut applied = Processing::NONE;
    let mut todo = Vec::new();
    for (step, on) in p.steps() {
        if !on {
            continue;
        }
        // folding a mixture of experts' norms is exact, but TransformerLens leaves them alone
        if step == Step::FoldLn && cfg.moe.is_some() && p.skip_inapplicable {
            continue;
        }
        match step.obstacle(cfg, w) {
            Some((_, tl_skips)) if p.skip_inapplicable && tl_skips => {}
            Some((why, _)) => {
                return Err(LensError::Unsupported {
                    what: format!("{} on {} ({})", step.name(), cfg.name, why),
                    fix: format!(
                        "leave {} out, or ask for TransformerLens's defaults (Processing::transformer_lens_defaults(), --tl-defaults), which leave it out where TransformerLens does",
                        step.name()
                    ),
                });
            }
            None => todo.push(step),
        }
    }
    let dtype = w.w_e.dtype();
    let mut f32w = to_dtype(w, DType::F32)?;
    for step in todo {
        match step {
            Step::FoldLn => {
                fold_ln(cfg, &mut f32w)?;
                applied.fold_ln = true;
            }
            Step::CenterWriting => {
                center_writing(&mut f32w)?;
                applied.center_writing_weights = true;
            }
            Step::CenterUnembed => {
                f32w.w_u = center(&f32w.w_u, 0)?;
                f32w.b_u = f32w.b_u.as_ref().map(|b| center(b, 0)).transpose()?;
                applied.center_unembed = true;
            }
            Step::FoldValueBiases => {
                fold_value_biases(cfg, &mut f32w)?;
                applied.fold_value_biases = true;
            }
        }
    }
    if !applied.is_none() {
        *w = to_dtype(&f32w, dtype)?;
        // the unembedding no longer shares the embedding's tensor
        cfg.tied_embeddings = false;
    }
    let before = cfg.processing;
    cfg.processing = Processing {
        fold_ln: before.fold_ln || applied.fold_ln,
        center_writing_weights: before.center_writing_weights || applied.center_writing_weights,
        center_unembed: before.center_unembed || applied.center_unembed,
        fold_value_biases: before.fold_value_biases || applied.fold_value_biases,
        skip_inapplicable: false,
    };
    Ok(applied)
}

/// `t` minus its mean over `dim` (kept), in `t`'s own memory layout.
fn center(t: &Tensor, dim: usize) -> Result<Tensor> {
    let c = t.broadcast_sub(&t.mean_keepdim(dim)?)?;
    same_layout(c, t)
}

/// `new` laid out as `old` is: contiguous, or the transposed view of a contiguous tensor (a
/// mixture of experts' `w_out`).
fn same_layout(new: Tensor, old: &Tensor) -> Result<Tensor> {
    if old.rank() == 2 && !old.is_contiguous() {
        Ok(new.t()?.contiguous()?.t()?)
    } else {
        Ok(new.contiguous()?)
    }
}

/// A linear map `[d_out, d_in]` that reads a norm's output, with its bias slot where it has
/// one.
struct Reader<'a> {
    w: &'a mut Tensor,
    b: Option<&'a mut Option<Tensor>>,
    /// Centred over `d_model` after folding a LayerNorm (TransformerLens centres `W_Q`, `W_K`,
    /// `W_V`, `W_in` and `W_U`, not `W_gate`).
    center: bool,
}

/// Folds `norm` into `readers` and leaves it a bare normalisation (weight 1, bias 0).
fn fold_norm(norm: &mut NormWeights, readers: Vec<Reader<'_>>) -> Result<()> {
    for r in readers {
        if let Some(nb) = &norm.b {
            // W (w ⊙ x̂ + b) = (W diag w) x̂ + W b, with the original W
            let wb = r.w.matmul(&nb.unsqueeze(1)?)?.squeeze(1)?;
            let slot = r.b.ok_or_else(|| {
                LensError::Internal("a LayerNorm bias with no bias slot to fold into".into())
            })?;
            *slot = Some(match slot.take() {
                Some(b) => (b + wb)?,
                None => wb,
            });
        }
        let scaled = r.w.broadcast_mul(&norm.w.unsqueeze(0)?)?;
        let scaled = if r.center && norm.b.is_some() {
            scaled.broadcast_sub(&scaled.mean_keepdim(1)?)?
        } else {
            scaled
        };
        *r.w = same_layout(scaled, r.w)?;
    }
    norm.w = norm.w.ones_like()?;
    norm.b = norm.b.as_ref().map(Tensor::zeros_like).transpose()?;
    Ok(())
}

fn fold_ln(cfg: &ModelConfig, w: &mut Weights) -> Result<()> {
    let reader = |w, b, center| Reader { w, b, center };
    for l in &mut w.layers {
        let mut attn = vec![
            reader(&mut l.w_q, Some(&mut l.b_q), true),
            reader(&mut l.w_k, Some(&mut l.b_k), true),
            reader(&mut l.w_v, Some(&mut l.b_v), true),
        ];
        let mut mlp = vec![reader(&mut l.w_in, Some(&mut l.b_in), true)];
        for t in [&mut l.w_gate, &mut l.router, &mut l.shared_expert_gate]
            .into_iter()
            .flatten()
        {
            mlp.push(reader(t, None, false));
        }
        // a parallel block without ln2 (GPT-J, Phi-2) feeds ln1's output to its MLP too
        if l.ln2.is_none() && cfg.parallel_attn_mlp {
            attn.append(&mut mlp);
        }
        if let Some(n) = l.ln1.as_mut() {
            fold_norm(n, attn)?;
        }
        if let Some(n) = l.ln2.as_mut() {
            fold_norm(n, mlp)?;
        }
    }
    fold_norm(
        &mut w.ln_final,
        vec![reader(&mut w.w_u, Some(&mut w.b_u), true)],
    )
}

fn center_writing(w: &mut Weights) -> Result<()> {
    w.w_e = center(&w.w_e, 1)?;
    w.w_pos = w.w_pos.as_ref().map(|p| center(p, 1)).transpose()?;
    for l in &mut w.layers {
        l.w_o = center(&l.w_o, 0)?;
        l.b_o = l.b_o.as_ref().map(|b| center(b, 0)).transpose()?;
        l.w_out = center(&l.w_out, 0)?;
        l.b_out = l.b_out.as_ref().map(|b| center(b, 0)).transpose()?;
    }
    Ok(())
}

fn fold_value_biases(cfg: &ModelConfig, w: &mut Weights) -> Result<()> {
    let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
    for l in &mut w.layers {
        let Some(b_v) = l.b_v.take() else { continue };
        // each query head reads its key/value head's bias: [n_kv, d_head] -> [n_heads · d_head]
        let full = b_v
            .reshape((kv, 1, dh))?
            .broadcast_as((kv, h / kv, dh))?
            .reshape(h * dh)?;
        let folded = l.w_o.matmul(&full.unsqueeze(1)?)?.squeeze(1)?;
        l.b_o = Some(match l.b_o.take() {
            Some(b) => (b + folded)?,
            None => folded,
        });
    }
    Ok(())
}

/// Every tensor of `w` in `dtype`.
fn to_dtype(w: &Weights, dtype: DType) -> Result<Weights> {
    let t = |x: &Tensor| -> Result<Tensor> { same_layout(x.to_dtype(dtype)?, x) };
    let o = |x: &Option<Tensor>| -> Result<Option<Tensor>> { x.as_ref().map(t).transpose() };
    let n = |x: &NormWeights| -> Result<NormWeights> {
        Ok(NormWeights {
            w: t(&x.w)?,
            b: o(&x.b)?,
        })
    };
    let on = |x: &Option<NormWeights>| x.as_ref().map(n).transpose();
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        layers.push(crate::engine::weights::LayerWeights {
            ln1: on(&l.ln1)?,
            ln1_post: on(&l.ln1_post)?,
            ln2: on(&l.ln2)?,
            ln2_post: on(&l.ln2_post)?,
            w_q: t(&l.w_q)?,
            b_q: o(&l.b_q)?,
            w_k: t(&l.w_k)?,
            b_k: o(&l.b_k)?,
            w_v: t(&l.w_v)?,
            b_v: o(&l.b_v)?,
            q_norm: o(&l.q_norm)?,
            k_norm: o(&l.k_norm)?,
            w_o: t(&l.w_o)?,
            b_o: o(&l.b_o)?,
            router: o(&l.router)?,
            shared_expert_gate: o(&l.shared_expert_gate)?,
            w_in: t(&l.w_in)?,
            b_in: o(&l.b_in)?,
            w_gate: o(&l.w_gate)?,
            w_out: t(&l.w_out)?,
            b_out: o(&l.b_out)?,
        });
    }
    Ok(Weights {
        w_e: t(&w.w_e)?,
        w_pos: o(&w.w_pos)?,
        layers,
        ln_final: n(&w.ln_final)?,
        w_u: t(&w.w_u)?,
        b_u: o(&w.b_u)?,
    })
}
