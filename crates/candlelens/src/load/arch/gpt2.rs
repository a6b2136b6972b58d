//! GPT-2 (small, medium, large, XL): LayerNorm, learned positions, `gelu_new`, tied
//! unembedding, and Conv1D weights stored `[d_in, d_out]` (transposed here) with q, k, v fused
//! in `c_attn`.

use candle_core::{DType, Device, Tensor};

use super::{check_dim, hidden_act, norm, Json};
use crate::engine::config::{AttentionKind, ModelConfig, NormKind, Positional, QkNorm};
use crate::engine::weights::{to_compute, LayerWeights, TensorSource, Weights};
use crate::error::Result;

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let d_model = j.dim("n_embd")?;
    let n_heads = j.dim("n_head")?;
    let n_layers = j.dim("n_layer")?;
    check_dim("n_embd / n_head", d_model / n_heads)?;
    Ok(ModelConfig {
        architecture: "gpt2".into(),
        name: name.to_string(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads,
        d_mlp: j.dim_or("n_inner", 4 * d_model)?,
        d_vocab: j.dim("vocab_size")?,
        n_ctx: j.usize_or("n_positions", 1024),
        norm: NormKind::LayerNorm,
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        positional: Positional::Learned,
        act: hidden_act(j, "activation_function", "gelu_new")?,
        gated_mlp: false,
        moe: None,
        pre_norms: true,
        qk_norm: QkNorm::None,
        post_norms: false,
        attn_scale: 1.0 / ((d_model / n_heads) as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        layer_attention: vec![AttentionKind::Global; n_layers],
        embed_scale: None,
        tied_embeddings: true,
        parallel_attn_mlp: false,
        parallel_ln2: false,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(50256)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(50256)),
        pad_token_id: j.opt_u32("eos_token_id").unwrap_or(50256),
        // TransformerLens prepends <|endoftext|> for GPT-2 (the sources' tokenizations show it).
        default_prepend_bos: true,
    })
}

/// A Conv1D weight `[d_in, d_out]` as `[d_out, d_in]`.
fn conv1d(src: &mut dyn TensorSource, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
    to_compute(src.require(name)?.t()?.contiguous()?, dtype, dev)
}

pub(super) fn weights(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    // The original `gpt2` checkpoints name tensors without the `transformer.` prefix.
    let p = if src.get("transformer.wte.weight")?.is_some() {
        "transformer."
    } else {
        ""
    };
    let w_e = to_compute(src.require(&format!("{p}wte.weight"))?, dtype, dev)?;
    let w_pos = to_compute(src.require(&format!("{p}wpe.weight"))?, dtype, dev)?;
    let d = cfg.d_model;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("{p}h.{l}.{s}");
        let qkv = conv1d(src, &n("attn.c_attn.weight"), dtype, dev)?; // [3d, d]
        let qkv_b = to_compute(src.require(&n("attn.c_attn.bias"))?, dtype, dev)?;
        let part =
            |t: &Tensor, i: usize| -> Result<Tensor> { Ok(t.narrow(0, i * d, d)?.contiguous()?) };
        layers.push(LayerWeights {
            ln1: Some(norm(src, &n("ln_1.weight"), false, dtype, dev)?),
            ln1_post: None,
            ln2: Some(norm(src, &n("ln_2.weight"), false, dtype, dev)?),
            ln2_post: None,
            w_q: part(&qkv, 0)?,
            b_q: Some(part(&qkv_b, 0)?),
            w_k: part(&qkv, 1)?,
            b_k: Some(part(&qkv_b, 1)?),
            w_v: part(&qkv, 2)?,
            b_v: Some(part(&qkv_b, 2)?),
            q_norm: None,
            k_norm: None,
            w_o: conv1d(src, &n("attn.c_proj.weight"), dtype, dev)?,
            b_o: Some(to_compute(
                src.require(&n("attn.c_proj.bias"))?,
                dtype,
                dev,
            )?),
            router: None,
            shared_expert_gate: None,
            w_in: conv1d(src, &n("mlp.c_fc.weight"), dtype, dev)?,
            b_in: Some(to_compute(src.require(&n("mlp.c_fc.bias"))?, dtype, dev)?),
            w_gate: None,
            w_out: conv1d(src, &n("mlp.c_proj.weight"), dtype, dev)?,
            b_out: Some(to_compute(src.require(&n("mlp.c_proj.bias"))?, dtype, dev)?),
        });
    }
    Ok(Weights {
        w_u: w_e.clone(),
        w_e,
        w_pos: Some(w_pos),
        layers,
        ln_final: norm(src, &format!("{p}ln_f.weight"), false, dtype, dev)?,
        b_u: None,
    })
}
