//! GPT-2 (small, medium, large, XL): LayerNorm, learned positions, `gelu_new`, tied
//! unembedding, and Conv1D weights stored `[d_in, d_out]` (transposed here) with q, k, v fused
//! in `c_attn`.

use candle_core::{DType, Device, Tensor};

use super::{
    endoftext_tokens, hidden_act, norm, read_model, Checkpoint, DimKeys, Json, ModelNames,
};
use crate::engine::config::ModelConfig;
use crate::engine::weights::{to_compute, LayerWeights, TensorSource, Weights};
use crate::error::Result;

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let dims = j.dims(&DimKeys::GPT2)?;
    // TransformerLens prepends <|endoftext|> for GPT-2 (the sources' tokenizations show it)
    let cfg = ModelConfig {
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        act: hidden_act(j, "activation_function", "gelu_new")?,
        tied_embeddings: true,
        ..ModelConfig::plain("gpt2", name, dims)
    };
    Ok(endoftext_tokens(j, cfg, 50256, "eos_token_id"))
}

/// A Conv1D weight `[d_in, d_out]` as `[d_out, d_in]`.
fn conv1d(src: &mut dyn TensorSource, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
    to_compute(src.require(name)?.t()?.contiguous()?, dtype, dev)
}

pub(super) fn weights(ck: Checkpoint) -> Result<Weights> {
    let (cfg, dtype, dev) = (ck.cfg, ck.dtype, ck.dev);
    // The original `gpt2` checkpoints name tensors without the `transformer.` prefix.
    let p = if ck.src.get("transformer.wte.weight")?.is_some() {
        "transformer."
    } else {
        ""
    };
    let (embed, pos, ln_final) = (
        format!("{p}wte.weight"),
        format!("{p}wpe.weight"),
        format!("{p}ln_f.weight"),
    );
    // the unembedding is the embedding (the config ties them)
    let names = ModelNames {
        embed: &embed,
        pos: Some(&pos),
        ln_final: &ln_final,
        unembed: "lm_head.weight",
        unembed_bias: None,
    };
    let d = cfg.d_model;
    read_model(ck, &names, |src, l| {
        let n = |s: &str| format!("{p}h.{l}.{s}");
        let qkv = conv1d(src, &n("attn.c_attn.weight"), dtype, dev)?; // [3d, d]
        let qkv_b = to_compute(src.require(&n("attn.c_attn.bias"))?, dtype, dev)?;
        let part =
            |t: &Tensor, i: usize| -> Result<Tensor> { Ok(t.narrow(0, i * d, d)?.contiguous()?) };
        let bias = |src: &mut dyn TensorSource, s: &str| -> Result<Option<Tensor>> {
            Ok(Some(to_compute(src.require(&n(s))?, dtype, dev)?))
        };
        Ok(LayerWeights {
            ln1: Some(norm(src, &n("ln_1.weight"), false, dtype, dev)?),
            ln2: Some(norm(src, &n("ln_2.weight"), false, dtype, dev)?),
            b_q: Some(part(&qkv_b, 0)?),
            b_k: Some(part(&qkv_b, 1)?),
            b_v: Some(part(&qkv_b, 2)?),
            b_o: bias(src, "attn.c_proj.bias")?,
            b_in: bias(src, "mlp.c_fc.bias")?,
            b_out: bias(src, "mlp.c_proj.bias")?,
            ..LayerWeights::projections(
                part(&qkv, 0)?,
                part(&qkv, 1)?,
                part(&qkv, 2)?,
                conv1d(src, &n("attn.c_proj.weight"), dtype, dev)?,
                conv1d(src, &n("mlp.c_fc.weight"), dtype, dev)?,
                conv1d(src, &n("mlp.c_proj.weight"), dtype, dev)?,
            )
        })
    })
}
