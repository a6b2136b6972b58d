//! [`HookedTransformer`]: the one generic forward pass, with TransformerLens hook points.
//!
//! Every architecture runs this code; the differences are switches in [`ModelConfig`]. The
//! pass is split into [`HookedTransformer::embed`], [`HookedTransformer::run_block`] and
//! [`HookedTransformer::unembed`] so that analysis code (patching sweeps) can start at any
//! layer from a cached residual stream.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::cache::ActivationCache;
use crate::config::{Activation, AttentionKind, ModelConfig, NormKind, Positional, RopeScaling};
use crate::error::{LensError, Result};
use crate::hooks::{Chain, HookFilter, HookPoint, HookSink, Hooks, NoHooks};
use crate::tokenizer::LensTokenizer;
use crate::tokens::Tokens;
use crate::weights::{NormWeights, Weights};

/// A transformer with hook points, weights in the canonical layout, and its tokenizer.
pub struct HookedTransformer {
    /// The architecture description.
    pub cfg: ModelConfig,
    /// The weights.
    pub weights: Weights,
    tokenizer: LensTokenizer,
    device: Device,
    dtype: DType,
}

/// Which positions' logits to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsAt {
    /// `[batch, pos, d_vocab]`.
    All,
    /// Each prompt's final real position: `[batch, d_vocab]`.
    Last,
}

/// Per-forward tables: rotary cos/sin per base and causal masks per attention kind.
pub struct ForwardCtx {
    seq: usize,
    rope_global: Option<(Tensor, Tensor)>,
    rope_local: Option<(Tensor, Tensor)>,
    masks: Vec<(AttentionKind, Tensor)>,
}

fn hook(sink: &mut dyn HookSink, hp: HookPoint, x: Tensor) -> Result<Tensor> {
    if sink.wants(&hp) {
        sink.visit(&hp, x)
    } else {
        Ok(x)
    }
}

/// `x W^T + b` for `x [.., d_in]`, `w [d_out, d_in]`.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = *dims.last().unwrap_or(&0);
    let rows = x.elem_count() / d_in.max(1);
    let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    Ok(y.reshape(out)?)
}

fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
    })
}

/// Inverse frequencies of rotary dimension pairs, as HF computes them (f32).
fn inv_freq(dim: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = base as f32;
    let mut f: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
        .collect();
    match scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for x in f.iter_mut() {
                *x /= *factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let (factor, low, high, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *old as f32,
            );
            let low_wl = old / low;
            let high_wl = old / high;
            for x in f.iter_mut() {
                let wl = 2.0 * std::f32::consts::PI / *x;
                let scaled = if wl > low_wl { *x / factor } else { *x };
                let medium = wl >= high_wl && wl <= low_wl;
                *x = if medium {
                    let s = (old / wl - low) / (high - low);
                    (1.0 - s) * scaled / factor + s * scaled
                } else {
                    scaled
                };
            }
        }
    }
    f
}

fn rope_tables(
    dim: usize,
    base: f64,
    scaling: Option<&RopeScaling>,
    seq: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let f = inv_freq(dim, base, scaling);
    let mut cos = Vec::with_capacity(seq * f.len());
    let mut sin = Vec::with_capacity(seq * f.len());
    for p in 0..seq {
        for &w in &f {
            let a = p as f32 * w;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let shape = (seq, f.len());
    Ok((
        Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    ))
}

fn causal_mask(kind: AttentionKind, seq: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let window = match kind {
        AttentionKind::Global => usize::MAX,
        AttentionKind::Local { window } => window,
    };
    let mask: Vec<f32> = (0..seq)
        .flat_map(|q| {
            (0..seq).map(move |k| {
                if k > q || q - k >= window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (seq, seq), dev)?.to_dtype(dtype)?)
}

impl HookedTransformer {
    /// Builds a model from parts (loaders call this).
    ///
    /// # Errors
    /// Inconsistent config or weights.
    pub fn from_parts(
        cfg: ModelConfig,
        weights: Weights,
        tokenizer: LensTokenizer,
        device: Device,
    ) -> Result<Self> {
        cfg.validate()?;
        weights.validate(&cfg)?;
        let dtype = weights.w_e.dtype();
        Ok(HookedTransformer {
            cfg,
            weights,
            tokenizer,
            device,
            dtype,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LensTokenizer {
        &self.tokenizer
    }

    // ----- tokens --------------------------------------------------------------------------

    /// Tokenizes one or more prompts into a right-padded batch. `prepend_bos: None` follows the
    /// model's tokenizer default (Gemma: yes; SmolLM2: no; GPT-2 as in TransformerLens: yes).
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::PromptTooLong`].
    pub fn to_tokens<P: crate::Prompts>(
        &self,
        prompts: P,
        prepend_bos: Option<bool>,
    ) -> Result<Tokens> {
        let rows = prompts
            .prompts()
            .iter()
            .map(|p| self.tokenizer.encode_with_bos(p, prepend_bos))
            .collect::<Result<Vec<_>>>()?;
        let t = Tokens::new(rows, self.cfg.pad_token_id)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    /// Token ids as they would be fed to the model, from ids the caller has.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::TokenOutOfRange`], [`LensError::PromptTooLong`].
    pub fn tokens_from_ids(&self, ids: Vec<u32>) -> Result<Tokens> {
        let t = Tokens::new(vec![ids], self.cfg.pad_token_id)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    fn check_tokens(&self, t: &Tokens) -> Result<()> {
        if t.max_len() > self.cfg.n_ctx {
            return Err(LensError::PromptTooLong {
                len: t.max_len(),
                n_ctx: self.cfg.n_ctx,
            });
        }
        for row in t.rows() {
            if let Some(&id) = row.iter().find(|&&id| id as usize >= self.cfg.d_vocab) {
                return Err(LensError::TokenOutOfRange {
                    id,
                    d_vocab: self.cfg.d_vocab,
                });
            }
        }
        Ok(())
    }

    /// Each token of `text` as a string (`["<bos>", "Is", " Paris", ...]`).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn to_str_tokens(&self, text: &str, prepend_bos: Option<bool>) -> Result<Vec<String>> {
        let ids = self.tokenizer.encode_with_bos(text, prepend_bos)?;
        self.tokenizer.str_tokens(&ids)
    }

    /// The strings of given ids.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn ids_to_str_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        self.tokenizer.str_tokens(ids)
    }

    /// The id of a string that must be exactly one token (no BOS).
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] naming the pieces.
    pub fn to_single_token(&self, text: &str) -> Result<u32> {
        let ids = self.tokenizer.encode(text)?;
        if ids.len() != 1 {
            return Err(LensError::NotSingleToken {
                text: text.to_string(),
                n: ids.len(),
                tokens: self.tokenizer.str_tokens(&ids)?,
            });
        }
        Ok(ids[0])
    }

    /// Decodes ids to text.
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn to_string(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    // ----- forward -------------------------------------------------------------------------

    /// Logits `[batch, pos, d_vocab]`.
    ///
    /// # Errors
    /// Tensor errors (a bug) or bad tokens.
    pub fn forward(&self, tokens: &Tokens) -> Result<Tensor> {
        self.forward_with(tokens, LogitsAt::All, &mut NoHooks)
    }

    /// Logits at each prompt's final real position `[batch, d_vocab]` (cheap for big vocabularies).
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn last_logits(&self, tokens: &Tokens) -> Result<Tensor> {
        self.forward_with(tokens, LogitsAt::Last, &mut NoHooks)
    }

    /// Runs with user hooks; returns logits `[batch, pos, d_vocab]`.
    ///
    /// # Errors
    /// Whatever a hook returns, [`LensError::HookShape`], [`LensError::LayerOutOfRange`].
    pub fn run_with_hooks(&self, tokens: &Tokens, hooks: &mut Hooks) -> Result<Tensor> {
        for hp in hooks.points() {
            hp.check(&self.cfg)?;
        }
        self.forward_with(tokens, LogitsAt::All, hooks)
    }

    /// Runs and caches every activation the filter selects (`None`: all of them).
    /// Returns `(logits [batch, pos, d_vocab], cache)`.
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn run_with_cache(
        &self,
        tokens: &Tokens,
        filter: Option<HookFilter>,
    ) -> Result<(Tensor, ActivationCache)> {
        let mut cache = ActivationCache::recorder(filter.unwrap_or(HookFilter::All));
        let logits = self.forward_with(tokens, LogitsAt::All, &mut cache)?;
        Ok((logits, cache.finish(tokens.clone())))
    }

    /// Hooks and a cache in one run: the cache sees the hooked activations.
    ///
    /// # Errors
    /// As [`Self::run_with_hooks`].
    pub fn run_with_hooks_and_cache(
        &self,
        tokens: &Tokens,
        hooks: &mut Hooks,
        filter: Option<HookFilter>,
        at: LogitsAt,
    ) -> Result<(Tensor, ActivationCache)> {
        for hp in hooks.points() {
            hp.check(&self.cfg)?;
        }
        let mut cache = ActivationCache::recorder(filter.unwrap_or(HookFilter::All));
        let logits = self.forward_with(tokens, at, &mut Chain(hooks, &mut cache))?;
        Ok((logits, cache.finish(tokens.clone())))
    }

    /// Mean next-token cross-entropy over every real position of every prompt.
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] if no prompt has two tokens.
    pub fn loss(&self, tokens: &Tokens) -> Result<f32> {
        let logits = self.forward(tokens)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let (mut sum, mut n) = (0f64, 0usize);
        for (b, row) in tokens.rows().iter().enumerate() {
            if row.len() < 2 {
                continue;
            }
            let lp = logp.i(b)?;
            let targets = Tensor::new(&row[1..], &self.device)?;
            let picked = lp
                .narrow(0, 0, row.len() - 1)?
                .gather(&targets.unsqueeze(1)?, 1)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            sum -= picked as f64;
            n += row.len() - 1;
        }
        if n == 0 {
            return Err(LensError::InvalidArgument(
                "loss needs a prompt of at least two tokens".into(),
            ));
        }
        Ok((sum / n as f64) as f32)
    }

    /// The full forward with a hook sink.
    ///
    /// # Errors
    /// As [`Self::forward`].
    pub fn forward_with(
        &self,
        tokens: &Tokens,
        at: LogitsAt,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        let ctx = self.context(tokens.max_len())?;
        let mut x = self.embed(tokens, sink)?;
        for l in 0..self.cfg.n_layers {
            x = self.run_block(l, x, &ctx, sink)?;
        }
        self.unembed(&x, tokens, at, sink)
    }

    /// Rotary tables and masks for sequences of up to `seq` positions.
    ///
    /// # Errors
    /// Tensor allocation failure.
    pub fn context(&self, seq: usize) -> Result<ForwardCtx> {
        let (dt, dev) = (self.dtype, &self.device);
        let (rope_global, rope_local) = match &self.cfg.positional {
            Positional::Learned => (None, None),
            Positional::Rotary(r) => {
                let g = rope_tables(r.dim, r.base, r.scaling.as_ref(), seq, dt, dev)?;
                let l = match r.local_base {
                    Some(b) => Some(rope_tables(r.dim, b, None, seq, dt, dev)?),
                    None => None,
                };
                (Some(g), l)
            }
        };
        let mut masks: Vec<(AttentionKind, Tensor)> = Vec::new();
        for &kind in &self.cfg.layer_attention {
            if !masks.iter().any(|(k, _)| *k == kind) {
                masks.push((kind, causal_mask(kind, seq, dt, dev)?));
            }
        }
        Ok(ForwardCtx {
            seq,
            rope_global,
            rope_local,
            masks,
        })
    }

    /// Token (and learned positional) embedding: the residual stream entering block 0,
    /// `[batch, pos, d_model]`. Fires `hook_embed`, `hook_pos_embed`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn embed(&self, tokens: &Tokens, sink: &mut dyn HookSink) -> Result<Tensor> {
        let ids = tokens.to_tensor(&self.device)?;
        let (b, p) = ids.dims2()?;
        let mut x = self
            .weights
            .w_e
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, p, self.cfg.d_model))?;
        if let Some(s) = self.cfg.embed_scale {
            // HF multiplies by the scale rounded to the weights' dtype
            let s = Tensor::new(&[s as f32], &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&s)?;
        }
        x = hook(sink, HookPoint::Embed, x)?;
        if let Some(wpos) = &self.weights.w_pos {
            let pos = wpos.narrow(0, 0, p)?.unsqueeze(0)?.repeat((b, 1, 1))?;
            let pos = hook(sink, HookPoint::PosEmbed, pos)?;
            x = (x + pos)?;
        }
        Ok(x)
    }

    /// Normalises `x [batch, pos, d]`, firing the scale and normalized hooks if given.
    fn norm(
        &self,
        w: &NormWeights,
        x: &Tensor,
        hooks: Option<(HookPoint, HookPoint)>,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let centred = match self.cfg.norm {
            NormKind::LayerNorm => x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?,
            NormKind::RmsNorm => x32,
        };
        let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm_eps)?.sqrt()?;
        let scale = match hooks {
            Some((hs, _)) => hook(sink, hs, scale.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?,
            None => scale,
        };
        let mut y = centred
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(&w.w)?;
        if let Some(b) = &w.b {
            y = y.broadcast_add(b)?;
        }
        match hooks {
            Some((_, hn)) => hook(sink, hn, y),
            None => Ok(y),
        }
    }

    /// Per-head RMSNorm over `d_head` for `x [batch, pos, heads, d_head]` (Qwen3/Gemma 3 q/k norm).
    fn head_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let scale = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.cfg.norm_eps)?.sqrt()?;
        Ok(x32
            .broadcast_div(&scale)?
            .to_dtype(self.dtype)?
            .broadcast_mul(w)?)
    }

    /// Rotary on `x [batch, pos, heads, d_head]`: the first `dim` dims of each head rotate,
    /// as two halves (HF / NeoX) or as adjacent pairs (`interleaved`, GPT-J).
    fn rotate(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dim: usize,
        interleaved: bool,
    ) -> Result<Tensor> {
        let seq = x.dim(1)?;
        let (cos, sin) = (cos.narrow(0, 0, seq)?, sin.narrow(0, 0, seq)?);
        let d_head = x.dim(3)?;
        let apply = |r: &Tensor| -> Result<Tensor> {
            if interleaved {
                let bhtd = r.transpose(1, 2)?.contiguous()?;
                let out = candle_nn::rotary_emb::rope_i(&bhtd, &cos, &sin)?;
                Ok(out.transpose(1, 2)?.contiguous()?)
            } else {
                Ok(candle_nn::rotary_emb::rope_thd(
                    &r.contiguous()?,
                    &cos,
                    &sin,
                )?)
            }
        };
        if dim == d_head {
            return apply(x);
        }
        let rot = apply(&x.narrow(3, 0, dim)?)?;
        let pass = x.narrow(3, dim, d_head - dim)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }

    /// One transformer block: `resid_pre [batch, pos, d_model]` -> `resid_post`.
    ///
    /// # Errors
    /// Tensor errors, hook errors.
    pub fn run_block(
        &self,
        l: usize,
        x: Tensor,
        ctx: &ForwardCtx,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let w = self
            .weights
            .layers
            .get(l)
            .ok_or(LensError::LayerOutOfRange {
                layer: l,
                n_layers: self.cfg.n_layers,
            })?;
        let resid_pre = hook(sink, HookPoint::ResidPre(l), x)?;
        let n1 = self.norm(
            &w.ln1,
            &resid_pre,
            Some((HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l))),
            sink,
        )?;
        let mut attn_out = self.attention(l, &n1, ctx, sink)?;
        if let Some(pn) = &w.ln1_post {
            attn_out = self.norm(pn, &attn_out, None, sink)?;
            attn_out = hook(sink, HookPoint::Ln1PostNormalized(l), attn_out)?;
        }
        let attn_out = hook(sink, HookPoint::AttnOut(l), attn_out)?;
        if self.cfg.parallel_attn_mlp {
            let mlp_out = self.mlp(l, &n1, sink)?;
            let resid_post = ((resid_pre + attn_out)? + mlp_out)?;
            return hook(sink, HookPoint::ResidPost(l), resid_post);
        }
        let resid_mid = hook(sink, HookPoint::ResidMid(l), (resid_pre + attn_out)?)?;
        let n2 = self.norm(
            &w.ln2,
            &resid_mid,
            Some((HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l))),
            sink,
        )?;
        let mlp_out = self.mlp(l, &n2, sink)?;
        hook(sink, HookPoint::ResidPost(l), (resid_mid + mlp_out)?)
    }

    fn mlp(&self, l: usize, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let w = &self.weights.layers[l];
        let post = match &w.w_gate {
            Some(gate) => {
                let pre = hook(sink, HookPoint::MlpPre(l), linear(x, gate, None)?)?;
                let lin = hook(
                    sink,
                    HookPoint::MlpPreLinear(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                (activation(self.cfg.act, &pre)? * lin)?
            }
            None => {
                let pre = hook(
                    sink,
                    HookPoint::MlpPre(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                activation(self.cfg.act, &pre)?
            }
        };
        let post = hook(sink, HookPoint::MlpPost(l), post)?;
        let mut out = linear(&post, &w.w_out, w.b_out.as_ref())?;
        if let Some(pn) = &w.ln2_post {
            out = self.norm(pn, &out, None, sink)?;
            out = hook(sink, HookPoint::Ln2PostNormalized(l), out)?;
        }
        hook(sink, HookPoint::MlpOut(l), out)
    }

    fn attention(
        &self,
        l: usize,
        x: &Tensor,
        ctx: &ForwardCtx,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let (b, p, _) = x.dims3()?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);
        let mut q = linear(x, &w.w_q, w.b_q.as_ref())?.reshape((b, p, h, dh))?;
        let mut k = linear(x, &w.w_k, w.b_k.as_ref())?.reshape((b, p, kv, dh))?;
        let v = linear(x, &w.w_v, w.b_v.as_ref())?.reshape((b, p, kv, dh))?;
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            q = self.head_norm(&q, qn)?;
            k = self.head_norm(&k, kn)?;
        }
        let q = hook(sink, HookPoint::Q(l), q)?;
        let k = hook(sink, HookPoint::K(l), k)?;
        let v = hook(sink, HookPoint::V(l), v)?;
        let kind = cfg.layer_attention[l];
        let (q, k) = match &cfg.positional {
            Positional::Rotary(r) => {
                let tables = match (kind, &ctx.rope_local) {
                    (AttentionKind::Local { .. }, Some(t)) => t,
                    _ => ctx.rope_global.as_ref().ok_or_else(|| {
                        LensError::InvalidArgument("rotary tables missing".into())
                    })?,
                };
                let q = self.rotate(&q, &tables.0, &tables.1, r.dim, r.interleaved)?;
                let k = self.rotate(&k, &tables.0, &tables.1, r.dim, r.interleaved)?;
                (
                    hook(sink, HookPoint::RotQ(l), q)?,
                    hook(sink, HookPoint::RotK(l), k)?,
                )
            }
            Positional::Learned => (q, k),
        };
        // [batch, heads, pos, d_head]
        let qt = q.transpose(1, 2)?.contiguous()?;
        let expand = |t: &Tensor| -> Result<Tensor> {
            let t = t.transpose(1, 2)?; // [b, kv, p, dh]
            if kv == h {
                return Ok(t.contiguous()?);
            }
            let g = h / kv;
            Ok(t.unsqueeze(2)?
                .expand((b, kv, g, p, dh))?
                .reshape((b, h, p, dh))?)
        };
        let kt = expand(&k)?;
        let vt = expand(&v)?;
        let mut scores = (qt.matmul(&kt.t()?)? * cfg.attn_scale)?;
        if let Some(cap) = cfg.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = ctx
            .masks
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m)
            .ok_or_else(|| LensError::InvalidArgument("mask missing".into()))?;
        let mask = if p == ctx.seq {
            mask.clone()
        } else {
            mask.narrow(0, 0, p)?.narrow(1, 0, p)?
        };
        let scores = hook(sink, HookPoint::AttnScores(l), scores.broadcast_add(&mask)?)?;
        let pattern = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let pattern = hook(sink, HookPoint::Pattern(l), pattern)?;
        // z: [b, p, h, dh]
        let z = pattern.matmul(&vt)?.transpose(1, 2)?.contiguous()?;
        let z = hook(sink, HookPoint::Z(l), z)?;
        if sink.wants(&HookPoint::Result(l)) {
            // result[b, p, h, :] = z[b, p, h, :] @ W_O[h]  with W_O[h] = w_o[:, h*dh..(h+1)*dh]^T
            let w_o = w.w_o.t()?.reshape((h, dh, cfg.d_model))?; // [h, dh, dm]
            let zh = z.permute((2, 0, 1, 3))?.reshape((h, b * p, dh))?;
            let result = zh
                .matmul(&w_o.contiguous()?)?
                .reshape((h, b, p, cfg.d_model))?
                .permute((1, 2, 0, 3))?
                .contiguous()?;
            let result = hook(sink, HookPoint::Result(l), result)?;
            let mut out = result.sum(2)?;
            if let Some(bo) = &w.b_o {
                out = out.broadcast_add(bo)?;
            }
            return Ok(out);
        }
        linear(&z.reshape((b, p, h * dh))?, &w.w_o, w.b_o.as_ref())
    }

    /// Final norm and unembedding from the residual stream after the last block.
    /// Fires `ln_final.hook_scale` and `ln_final.hook_normalized`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn unembed(
        &self,
        x: &Tensor,
        tokens: &Tokens,
        at: LogitsAt,
        sink: &mut dyn HookSink,
    ) -> Result<Tensor> {
        let n = self.norm(
            &self.weights.ln_final,
            x,
            Some((HookPoint::LnFinalScale, HookPoint::LnFinalNormalized)),
            sink,
        )?;
        let n = match at {
            LogitsAt::All => n,
            LogitsAt::Last => self.gather_last(&n, tokens)?,
        };
        let mut logits = linear(&n, &self.weights.w_u, self.weights.b_u.as_ref())?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Picks each prompt's final real position from `x [batch, pos, ...]` -> `[batch, ...]`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn gather_last(&self, x: &Tensor, tokens: &Tokens) -> Result<Tensor> {
        let rows = tokens
            .last_positions()
            .iter()
            .enumerate()
            .map(|(b, &p)| x.i((b, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}
