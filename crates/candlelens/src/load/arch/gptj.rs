//! GPT-J: attention and MLP read the same LayerNorm output and add to the residual in parallel;
//! rotary on the first `rotary_dim` dimensions of each head, rotating adjacent pairs; an
//! unembedding with a bias.

use super::{
    endoftext_tokens, hidden_act, read_block, read_model, BlockNames, Checkpoint, DimKeys, Json,
    ModelNames,
};
use crate::engine::config::{ModelConfig, Positional, RotaryConfig};
use crate::engine::weights::Weights;
use crate::error::Result;

pub(super) fn config(j: &Json, name: &str) -> Result<ModelConfig> {
    let dims = j.dims(&DimKeys {
        n_ctx: ("n_positions", 2048),
        ..DimKeys::GPT2
    })?;
    let cfg = ModelConfig {
        norm_eps: j.f64_or("layer_norm_epsilon", 1e-5),
        positional: Positional::Rotary(RotaryConfig {
            dim: j.usize_or("rotary_dim", dims.d_head),
            base: 10_000.0,
            local_base: None,
            scaling: None,
            interleaved: true,
        }),
        act: hidden_act(j, "activation_function", "gelu_new")?,
        tied_embeddings: j.bool_or("tie_word_embeddings", false),
        parallel_attn_mlp: true,
        ..ModelConfig::plain("gptj", name, dims)
    };
    Ok(endoftext_tokens(j, cfg, 50256, "eos_token_id"))
}

pub(super) fn weights(ck: Checkpoint) -> Result<Weights> {
    let (dtype, dev) = (ck.dtype, ck.dev);
    let names = ModelNames {
        unembed_bias: Some("lm_head.bias"),
        ..ModelNames::new(
            "transformer.wte.weight",
            "transformer.ln_f.weight",
            "lm_head.weight",
        )
    };
    // the MLP reads ln_1's output too (parallel_attn_mlp without parallel_ln2)
    let block = BlockNames {
        attn: ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"],
        mlp: ["mlp.fc_in", "mlp.fc_out"],
        ln1: "ln_1",
        ln2: None,
    };
    read_model(ck, &names, |src, l| {
        read_block(src, &format!("transformer.h.{l}."), &block, dtype, dev)
    })
}
