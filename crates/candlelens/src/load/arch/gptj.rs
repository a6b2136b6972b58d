//! GPT-J: attention and MLP read the same LayerNorm output and add to the residual in parallel;
//! rotary on the first `rotary_dim` dimensions of each head, rotating adjacent pairs; an
//! unembedding with a bias.

use candle_core::{DType, Device};

use super::{check_dim, get, hidden_act, norm, opt, Json};
use crate::engine::config::{
    AttentionKind, ModelConfig, NormKind, Positional, QkNorm, RotaryConfig,
};
use crate::engine::weights::{LayerWeights, TensorSource, Weights};
use crate::error::Result;

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let d_model = j.dim("n_embd")?;
    let n_heads = j.dim("n_head")?;
    let n_layers = j.dim("n_layer")?;
    check_dim("n_embd / n_head", d_model / n_heads)?;
    let d_head = d_model / n_heads;
    Ok(ModelConfig {
        architecture: "gptj".into(),
        name: name.to_string(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: j.dim_or("n_inner", 4 * d_model)?,
        d_vocab: j.dim("vocab_size")?,
        n_ctx: j.usize_or("n_positions", 2048),
        norm: NormKind::LayerNorm,
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        positional: Positional::Rotary(RotaryConfig {
            dim: j.usize_or("rotary_dim", d_head),
            base: 10_000.0,
            local_base: None,
            scaling: None,
            interleaved: true,
        }),
        act: hidden_act(j, "activation_function", "gelu_new")?,
        gated_mlp: false,
        moe: None,
        pre_norms: true,
        qk_norm: QkNorm::None,
        post_norms: false,
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        layer_attention: vec![AttentionKind::Global; n_layers],
        embed_scale: None,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: true,
        parallel_ln2: false,
        bos_token_id: j.opt_u32("bos_token_id").or(Some(50256)),
        eos_token_id: j.opt_u32("eos_token_id").or(Some(50256)),
        pad_token_id: j.opt_u32("eos_token_id").unwrap_or(50256),
        default_prepend_bos: true,
    })
}

pub(super) fn weights(
    cfg: &ModelConfig,
    src: &mut dyn TensorSource,
    dtype: DType,
    dev: &Device,
) -> Result<Weights> {
    let w_e = get(src, "transformer.wte.weight", dtype, dev)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let n = |s: &str| format!("transformer.h.{l}.{s}");
        layers.push(LayerWeights {
            ln1: Some(norm(src, &n("ln_1.weight"), false, dtype, dev)?),
            // the MLP reads ln_1's output too (parallel_attn_mlp without parallel_ln2)
            ln2: None,
            ln1_post: None,
            ln2_post: None,
            w_q: get(src, &n("attn.q_proj.weight"), dtype, dev)?,
            b_q: None,
            w_k: get(src, &n("attn.k_proj.weight"), dtype, dev)?,
            b_k: None,
            w_v: get(src, &n("attn.v_proj.weight"), dtype, dev)?,
            b_v: None,
            q_norm: None,
            k_norm: None,
            w_o: get(src, &n("attn.out_proj.weight"), dtype, dev)?,
            b_o: None,
            router: None,
            shared_expert_gate: None,
            w_in: get(src, &n("mlp.fc_in.weight"), dtype, dev)?,
            b_in: opt(src, &n("mlp.fc_in.bias"), dtype, dev)?,
            w_gate: None,
            w_out: get(src, &n("mlp.fc_out.weight"), dtype, dev)?,
            b_out: opt(src, &n("mlp.fc_out.bias"), dtype, dev)?,
        });
    }
    let w_u = if cfg.tied_embeddings {
        w_e.clone()
    } else {
        get(src, "lm_head.weight", dtype, dev)?
    };
    Ok(Weights {
        w_e,
        w_pos: None,
        layers,
        ln_final: norm(src, "transformer.ln_f.weight", false, dtype, dev)?,
        w_u,
        b_u: opt(src, "lm_head.bias", dtype, dev)?,
    })
}
