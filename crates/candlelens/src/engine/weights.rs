//! The one canonical weight layout every architecture is mapped into.
//!
//! Linear maps are kept in the checkpoint's `[d_out, d_in]` layout (the forward multiplies by
//! the transpose without copying); TransformerLens-shaped views (`W_Q [n_heads, d_model,
//! d_head]`, ...) are derived on demand by [`crate::HookedTransformer`]'s accessors.

use candle_core::{DType, Device, Tensor};

use crate::engine::config::{ModelConfig, NormKind, QkNorm};
use crate::error::{LensError, Result};

/// A normalisation's parameters: effective scale `w` (Gemma's `1 + w` already added) and an
/// optional bias (LayerNorm).
#[derive(Clone, Debug)]
pub struct NormWeights {
    /// Effective scale `[d_model]`.
    pub w: Tensor,
    /// Bias `[d_model]` (LayerNorm only).
    pub b: Option<Tensor>,
}

/// One block's weights.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Norm before attention (`ln1`); parallel blocks without an `ln2` also feed its output
    /// to the MLP. `None` where the family has no pre-norms (OLMo 2).
    pub ln1: Option<NormWeights>,
    /// Norm on the attention output before it joins the residual (Gemma 2/3).
    pub ln1_post: Option<NormWeights>,
    /// Norm before the MLP (`ln2`); `None` for parallel blocks whose MLP reads `ln1`'s output
    /// (GPT-J, Phi-2) and for families without pre-norms (OLMo 2).
    pub ln2: Option<NormWeights>,
    /// Norm on the MLP output before it joins the residual (Gemma 2/3).
    pub ln2_post: Option<NormWeights>,
    /// `[n_heads * d_head, d_model]`.
    pub w_q: Tensor,
    /// `[n_heads * d_head]`.
    pub b_q: Option<Tensor>,
    /// `[n_kv_heads * d_head, d_model]`.
    pub w_k: Tensor,
    /// `[n_kv_heads * d_head]`.
    pub b_k: Option<Tensor>,
    /// `[n_kv_heads * d_head, d_model]`.
    pub w_v: Tensor,
    /// `[n_kv_heads * d_head]`.
    pub b_v: Option<Tensor>,
    /// RMSNorm scale of the queries: `[d_head]` per head (Qwen3, Gemma 3) or
    /// `[n_heads * d_head]` over all heads (OLMo 2).
    pub q_norm: Option<Tensor>,
    /// RMSNorm scale of the keys: `[d_head]` or `[n_kv_heads * d_head]`.
    pub k_norm: Option<Tensor>,
    /// `[d_model, n_heads * d_head]`.
    pub w_o: Tensor,
    /// `[d_model]`.
    pub b_o: Option<Tensor>,
    /// The router of a mixture of experts, `[n_experts, d_model]` (its logits are `x Rᵀ`).
    pub router: Option<Tensor>,
    /// The gate of the shared expert, `[1, d_model]` (Qwen 2 MoE: `sigmoid(x gᵀ)` scales it).
    pub shared_expert_gate: Option<Tensor>,
    /// `[d_mlp, d_model]` (the "up" projection; for a mixture of experts, every expert's rows
    /// in turn, then the shared expert's).
    pub w_in: Tensor,
    /// `[d_mlp]`.
    pub b_in: Option<Tensor>,
    /// `[d_mlp, d_model]` for gated MLPs.
    pub w_gate: Option<Tensor>,
    /// `[d_model, d_mlp]` (for a mixture of experts a transposed view of `[d_mlp, d_model]`,
    /// so that each expert's columns are contiguous rows of the storage).
    pub w_out: Tensor,
    /// `[d_model]`.
    pub b_out: Option<Tensor>,
}

impl LayerWeights {
    /// The matrices every block has — the q/k/v/o projections `[n · d_head, d_model]` (`w_o`
    /// `[d_model, n_heads · d_head]`) and the MLP's `w_in` `[d_mlp, d_model]` and `w_out`
    /// `[d_model, d_mlp]` — with every optional tensor absent, for a family's mapping to add
    /// what its family has (struct update syntax).
    pub fn projections(
        w_q: Tensor,
        w_k: Tensor,
        w_v: Tensor,
        w_o: Tensor,
        w_in: Tensor,
        w_out: Tensor,
    ) -> LayerWeights {
        LayerWeights {
            ln1: None,
            ln2: None,
            ln1_post: None,
            ln2_post: None,
            w_q,
            b_q: None,
            w_k,
            b_k: None,
            w_v,
            b_v: None,
            q_norm: None,
            k_norm: None,
            w_o,
            b_o: None,
            router: None,
            shared_expert_gate: None,
            w_in,
            b_in: None,
            w_gate: None,
            w_out,
            b_out: None,
        }
    }
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `[d_vocab, d_model]`.
    pub w_e: Tensor,
    /// `[n_ctx, d_model]` for learned positions.
    pub w_pos: Option<Tensor>,
    /// One entry per block, `n_layers` in all.
    pub layers: Vec<LayerWeights>,
    /// The final norm before the unembedding (`ln_final`).
    pub ln_final: NormWeights,
    /// `[d_vocab, d_model]` (the transpose of TransformerLens's `W_U`); shares `w_e` when tied.
    pub w_u: Tensor,
    /// `[d_vocab]`.
    pub b_u: Option<Tensor>,
}

/// Where a family mapping reads tensors from, by Hugging Face name, in HF layout (a float dtype;
/// the mapping converts to the compute dtype).
pub trait TensorSource {
    /// The tensor, or `None` if the checkpoint does not have it.
    ///
    /// # Errors
    /// Corrupt data or an unsupported dtype.
    fn get(&mut self, name: &str) -> Result<Option<Tensor>>;

    /// A human description for error messages.
    fn describe(&self) -> String;

    /// The checkpoint's tensors (as the checkpoint names them) that no [`Self::get`] has
    /// returned, sorted: after a family mapping has read a model, the ones it left unused.
    /// Empty for a source that cannot list its tensors.
    fn unread(&self) -> Vec<String> {
        Vec::new()
    }

    /// The tensor, or an error naming it.
    ///
    /// # Errors
    /// [`LensError::BadWeight`] if missing.
    fn require(&mut self, name: &str) -> Result<Tensor> {
        self.get(name)?.ok_or_else(|| LensError::BadWeight {
            name: name.to_string(),
            problem: format!("is missing from {}", self.describe()),
        })
    }
}

/// The names of `all` not in `read`, sorted: what [`TensorSource::unread`] lists.
pub(crate) fn unread_of<'a>(
    all: impl Iterator<Item = &'a String>,
    read: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut out: Vec<String> = all.filter(|k| !read.contains(*k)).cloned().collect();
    out.sort();
    out
}

/// How many values of `t` are NaN or infinite (0 for a finite tensor, found with one sum).
pub(crate) fn non_finite(t: &Tensor) -> Result<usize> {
    let t = t.to_dtype(DType::F32)?;
    if t.sum_all()?.to_scalar::<f32>()?.is_finite() {
        return Ok(0);
    }
    // a sum can overflow on finite values; count exactly
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|x| !x.is_finite())
        .count())
}

/// Checks a tensor's shape.
pub(crate) fn expect_shape(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(LensError::BadWeight {
            name: name.to_string(),
            problem: format!("has shape {:?}, expected {:?}", t.dims(), want),
        });
    }
    Ok(())
}

/// Converts a loaded tensor to the compute dtype and device.
pub(crate) fn to_compute(t: Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

impl Weights {
    /// Every tensor with its TransformerLens-style name (`embed.W_E`, `blocks.3.attn.W_Q`,
    /// `blocks.3.ln1.w`, ...), in the checkpoint's layout.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![("embed.W_E".into(), &self.w_e)];
        fn opt<'a>(out: &mut Vec<(String, &'a Tensor)>, name: String, t: Option<&'a Tensor>) {
            if let Some(t) = t {
                out.push((name, t));
            }
        }
        opt(&mut out, "pos_embed.W_pos".into(), self.w_pos.as_ref());
        for (l, w) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blocks.{l}.{s}");
            for (name, norm) in [
                ("ln1", &w.ln1),
                ("ln1_post", &w.ln1_post),
                ("ln2", &w.ln2),
                ("ln2_post", &w.ln2_post),
            ] {
                if let Some(norm) = norm {
                    out.push((n(&format!("{name}.w")), &norm.w));
                    opt(&mut out, n(&format!("{name}.b")), norm.b.as_ref());
                }
            }
            for (name, t) in [
                ("attn.W_Q", &w.w_q),
                ("attn.W_K", &w.w_k),
                ("attn.W_V", &w.w_v),
                ("attn.W_O", &w.w_o),
                ("mlp.W_in", &w.w_in),
                ("mlp.W_out", &w.w_out),
            ] {
                out.push((n(name), t));
            }
            for (name, t) in [
                ("attn.b_Q", &w.b_q),
                ("attn.b_K", &w.b_k),
                ("attn.b_V", &w.b_v),
                ("attn.b_O", &w.b_o),
                ("attn.q_norm.w", &w.q_norm),
                ("attn.k_norm.w", &w.k_norm),
                ("mlp.router", &w.router),
                ("mlp.shared_expert_gate", &w.shared_expert_gate),
                ("mlp.b_in", &w.b_in),
                ("mlp.W_gate", &w.w_gate),
                ("mlp.b_out", &w.b_out),
            ] {
                opt(&mut out, n(name), t.as_ref());
            }
        }
        out.push(("ln_final.w".into(), &self.ln_final.w));
        opt(&mut out, "ln_final.b".into(), self.ln_final.b.as_ref());
        out.push(("unembed.W_U".into(), &self.w_u));
        opt(&mut out, "unembed.b_U".into(), self.b_u.as_ref());
        out
    }

    /// Checks that every weight is a finite number: one NaN or infinite value in a checkpoint
    /// turns every logit into NaN.
    ///
    /// # Errors
    /// [`LensError::BadWeight`] naming the first tensor with such values and how many.
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in self.named() {
            let n = non_finite(t)?;
            if n > 0 {
                return Err(LensError::BadWeight {
                    name,
                    problem: format!(
                        "holds {n} NaN or infinite value(s) of {}: the checkpoint is damaged (download it again) or was saved from a model that diverged",
                        t.elem_count()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Bytes held by the weights (shared tensors, like a tied unembedding, counted once).
    pub fn n_bytes(&self, cfg: &ModelConfig) -> usize {
        let t = |x: &Tensor| x.elem_count() * x.dtype().size_in_bytes();
        let o = |x: &Option<Tensor>| x.as_ref().map_or(0, t);
        let n = |x: &NormWeights| t(&x.w) + o(&x.b);
        let on = |x: &Option<NormWeights>| x.as_ref().map_or(0, n);
        let mut total = t(&self.w_e) + o(&self.w_pos) + n(&self.ln_final) + o(&self.b_u);
        if !cfg.tied_embeddings {
            total += t(&self.w_u);
        }
        for l in &self.layers {
            total += on(&l.ln1) + on(&l.ln2) + on(&l.ln1_post) + on(&l.ln2_post);
            total += t(&l.w_q) + t(&l.w_k) + t(&l.w_v) + t(&l.w_o) + t(&l.w_in) + t(&l.w_out);
            total += o(&l.b_q) + o(&l.b_k) + o(&l.b_v) + o(&l.b_o) + o(&l.b_in) + o(&l.b_out);
            total += o(&l.w_gate) + o(&l.q_norm) + o(&l.k_norm);
            total += o(&l.router) + o(&l.shared_expert_gate);
        }
        total
    }

    /// Checks every shape against the config.
    ///
    /// # Errors
    /// [`LensError::BadWeight`] naming the first mismatch.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let (dm, dh, h, kv, dmlp) = (
            cfg.d_model,
            cfg.d_head,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_mlp,
        );
        expect_shape("W_E", &self.w_e, &[cfg.d_vocab, dm])?;
        expect_shape("W_U", &self.w_u, &[cfg.d_vocab, dm])?;
        if let Some(p) = &self.w_pos {
            if p.dim(1)? != dm || p.dim(0)? < cfg.n_ctx {
                expect_shape("W_pos", p, &[cfg.n_ctx, dm])?;
            }
        }
        expect_shape("ln_final.w", &self.ln_final.w, &[dm])?;
        if self.layers.len() != cfg.n_layers {
            return Err(LensError::BadWeight {
                name: "blocks".into(),
                problem: format!(
                    "has {} layers, config says {}",
                    self.layers.len(),
                    cfg.n_layers
                ),
            });
        }
        for (l, w) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("blocks.{l}.{s}");
            // the norms the config's switches promise, each [d_model]
            let ln2_expected =
                cfg.pre_norms && crate::engine::block::kind::BlockKind::of(cfg).has_ln2();
            for (name, nw, expected) in [
                ("ln1", &w.ln1, cfg.pre_norms),
                ("ln2", &w.ln2, ln2_expected),
                ("ln1_post", &w.ln1_post, cfg.post_norms),
                ("ln2_post", &w.ln2_post, cfg.post_norms),
            ] {
                match nw {
                    Some(nw) if expected => {
                        expect_shape(&n(&format!("{name}.w")), &nw.w, &[dm])?;
                        if cfg.norm == NormKind::LayerNorm && nw.b.is_none() {
                            return Err(LensError::BadWeight {
                                name: n(&format!("{name}.b")),
                                problem: "is missing (LayerNorm needs a bias)".into(),
                            });
                        }
                    }
                    None if !expected => {}
                    _ => {
                        return Err(LensError::Internal(format!(
                            "{}: the weights {} a norm the config {} (a family mapping bug)",
                            n(name),
                            if nw.is_some() { "hold" } else { "lack" },
                            if expected { "needs" } else { "does not use" },
                        )))
                    }
                }
            }
            expect_shape(&n("attn.W_Q"), &w.w_q, &[h * dh, dm])?;
            expect_shape(&n("attn.W_K"), &w.w_k, &[kv * dh, dm])?;
            expect_shape(&n("attn.W_V"), &w.w_v, &[kv * dh, dm])?;
            expect_shape(&n("attn.W_O"), &w.w_o, &[dm, h * dh])?;
            expect_shape(&n("mlp.W_in"), &w.w_in, &[dmlp, dm])?;
            expect_shape(&n("mlp.W_out"), &w.w_out, &[dm, dmlp])?;
            if let Some(g) = &w.w_gate {
                expect_shape(&n("mlp.W_gate"), g, &[dmlp, dm])?;
            }
            match (&cfg.moe, &w.router) {
                (Some(moe), Some(r)) => {
                    expect_shape(&n("mlp.router"), r, &[moe.n_experts, dm])?;
                    match (&w.shared_expert_gate, moe.d_shared) {
                        (Some(g), s) if s > 0 => {
                            expect_shape(&n("mlp.shared_expert_gate"), g, &[1, dm])?
                        }
                        (None, 0) => {}
                        _ => {
                            return Err(LensError::BadWeight {
                                name: n("mlp.shared_expert_gate"),
                                problem: "does not match the config's shared expert".into(),
                            })
                        }
                    }
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(LensError::BadWeight {
                        name: n("mlp.router"),
                        problem: "is missing (the config has a mixture of experts)".into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(LensError::Internal(format!(
                        "{}: a router without a mixture of experts in the config",
                        n("mlp")
                    )))
                }
            }
            let (qw, kw) = match cfg.qk_norm {
                QkNorm::None => (0, 0),
                QkNorm::PerHead => (dh, dh),
                QkNorm::AllHeads => (h * dh, kv * dh),
            };
            match (&w.q_norm, &w.k_norm) {
                (Some(q), Some(k)) if qw > 0 => {
                    expect_shape(&n("attn.q_norm"), q, &[qw])?;
                    expect_shape(&n("attn.k_norm"), k, &[kw])?;
                }
                (None, None) if qw == 0 => {}
                _ => {
                    return Err(LensError::Internal(format!(
                    "{}: q/k norm weights do not match the config's {:?} (a family mapping bug)",
                    n("attn"),
                    cfg.qk_norm
                )))
                }
            }
        }
        Ok(())
    }
}
