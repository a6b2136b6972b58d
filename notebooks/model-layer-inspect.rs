// -*- coding: utf-8 -*-
// ---
// jupyter:
//   candlelens:
//     expect:
//     - text/html
//   jupytext:
//     notebook_metadata_filter: candlelens
//     text_representation:
//       extension: .rs
//       format_name: percent
//       format_version: '1.3'
//       jupytext_version: 1.19.6
//   kernelspec:
//     display_name: Rust
//     language: rust
//     name: rust
// ---

// %% [markdown]
// # Model layer inspection
//
// The source's utility notebook (`shared/seeds/001`, `model-layer-inspect.ipynb`): inspect a model's
// architecture and layer names to configure an experiment with a new model. Here: the config as
// Candlelens reads it, the PyTorch module names the source's notebooks use (`transformer.h.15`,
// `model.layers.15`) and the TransformerLens hook names they map to, and every hook point with the
// shape it actually has on a prompt.
//
// Set `CANDLELENS_INSPECT_MODEL` to any alias (`lens models`), local folder, `.gguf` file or hub id;
// the default is the embedded Gemma 3 270M.

// %%
// :dep candlelens = { path = "../crates/candlelens", default-features = false }
use candlelens::prelude::*;

// %%
let name = std::env::var("CANDLELENS_INSPECT_MODEL").unwrap_or_else(|_| "gemma-3-270m".to_string());
let model = HookedTransformer::from_pretrained(&name)?;
{
    let c = &model.cfg;
    println!("{name}: {} architecture, {:.1}M parameters", c.architecture, c.n_params() as f64 / 1e6);
    println!("n_layers {}  d_model {}  n_heads {}  n_kv_heads {}  d_head {}  d_mlp {}  d_vocab {}  n_ctx {}",
        c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_head, c.d_mlp, c.d_vocab, c.n_ctx);
    println!("norm {:?}  activation {:?}  gated MLP {}  pre-norms {}  q/k norm {:?}  post-norms {}  positional {:?}",
        c.norm, c.act, c.gated_mlp, c.pre_norms, c.qk_norm, c.post_norms, c.positional);
    println!("attention per layer: {}", c.layer_attention.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(" "));
}

// %% [markdown]
// ## Layer names: the source's and ours
//
// A source notebook's `LAYER_NAME = "transformer.h.15"` (GPT-2) or `"model.layers.15"` (Llama, Qwen,
// Gemma) is the output of block 15: `blocks.15.hook_resid_post` here. `layer_from_module_name`
// translates and checks the range.

// %%
{
    let mut t = Table::new("Layer names", ["PyTorch module (GPT-2)", "PyTorch module (Llama / Qwen / Gemma)", "Candlelens / TransformerLens"]);
    let n = model.cfg.n_layers;
    for l in [0, n / 2, n - 1] {
        let hf = format!("model.layers.{l}");
        let layer = layer_from_module_name(&hf, n)?;
        t.row([format!("transformer.h.{l}"), hf, format!("blocks.{layer}.hook_resid_post")]);
    }
    t.evcxr_display();
}

// %% [markdown]
// ## Every hook point, with its shape on a prompt
//
// `run_with_cache` on a short prompt; the table lists each cached activation of the embedding, the
// first block and the final norm with the shape it has (`[batch, pos, ...]`). Every block has the
// same points.

// %%
{
    let tokens = model.to_tokens("The capital of France is", None)?;
    let (logits, cache) = model.run_with_cache(&tokens, None)?;
    println!("{:?} -> logits {:?}; {} cached activations", model.to_str_tokens("The capital of France is", None)?, logits.dims(), cache.len());
    let mut t = Table::new("Hook points (block 0 shown; blocks 1.. alike)", ["hook", "shape"]);
    for (hp, _) in HookPoint::all_for(&model.cfg) {
        let n = hp.to_string();
        if n.starts_with("blocks.") && !n.starts_with("blocks.0.") { continue; }
        if let Ok(a) = cache.at(hp.clone()) { t.row([n, format!("{:?}", a.dims())]); }
    }
    t.evcxr_display();
}

// %% [markdown]
// ## Weight views
//
// TransformerLens's weight matrices under their names and shapes (`model.W_Q` in Python,
// `model.W_Q()?` here), as the checkpoint holds them: no LayerNorm folding, as TransformerLens's
// `from_pretrained_no_processing`. Grouped-query models repeat each key/value head for the query
// heads that share it. The check below recomputes head 0's values from the normalised residual,
// `hook_v = ln1.hook_normalized @ W_V[0, 0] + b_V[0, 0]`, and compares with the cached `hook_v`
// (values, because Gemma 3 and Qwen 3 normalise queries and keys per head before `hook_q`/`hook_k`).

// %%
{
    let mut t = Table::new("Weight views", ["view", "shape"]);
    for (name, shape) in model.weight_view_shapes() {
        t.row([name.to_string(), format!("{shape:?}")]);
    }
    let tokens = model.to_tokens("The capital of France is", None)?;
    let (_, cache) = model.run_with_cache(&tokens, None)?;
    let x = cache.get("blocks.0.ln1.hook_normalized")?.get(0)?;
    let v = x.matmul(&model.W_V_at(0)?.get(0)?)?.broadcast_add(&model.b_V()?.get(0)?.get(0)?)?;
    let cached = cache.get("blocks.0.attn.hook_v")?.get(0)?.narrow(1, 0, 1)?.squeeze(1)?;
    let err = (v - cached)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("head 0.0 values from W_V vs the cached hook_v: max |difference| = {err:.2e}");
    if err > 1e-3 {
        Err(LensError::Custom(format!("W_V does not reproduce hook_v (max difference {err})")))?;
    }
    t.evcxr_display();
}

// %% [markdown]
// ## Per-head circuits
//
// Each head's OV circuit `W_V W_O` (what it writes, given what it attends to) and QK circuit
// `W_Q W_Kᵀ` (which directions attend to which) is a `[d_model, d_model]` matrix of rank at most
// `d_head`, kept factored as TransformerLens's `FactoredMatrix`: the spectra below come from
// `d_head`-sized matrices. The copying score `Σ Re λ / Σ |λ|` over the OV circuit's eigenvalues
// is near 1 for a head that writes back what it reads (Elhage et al. 2021).

// %%
{
    let l = model.cfg.n_layers - 1;
    let mut t = Table::new(&format!("Layer {l}: OV and QK circuits per head"),
        ["head", "OV Frobenius norm", "OV top σ", "OV copying score", "QK top σ"]);
    for h in 0..model.cfg.n_heads {
        let ov = model.OV(l, h)?;
        let s = ov.singular_values()?;
        let ev = ov.eigenvalues()?;
        let copying = ev.iter().map(|e| e.re).sum::<f64>() / ev.iter().map(|e| e.norm()).sum::<f64>();
        let qk = model.QK(l, h)?.singular_values()?;
        t.row([h.to_string(), format!("{:.3}", ov.norm()?), format!("{:.3}", s[0]), format!("{copying:+.3}"), format!("{:.3}", qk[0])]);
    }
    t.evcxr_display();
}
