//! `lens inspect`: the architecture summary and every hook name with its shape.

use candlelens::config::{AttentionKind, ModelConfig};
use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, ProcessingArgs};

#[derive(Args)]
pub struct InspectArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    processing: ProcessingArgs,
}

/// A hook point and its shape (`[batch, pos, d_model]`, ...).
#[derive(Serialize)]
struct HookShape {
    name: String,
    shape: String,
}

/// What `lens inspect --json` prints.
#[derive(Serialize)]
struct InspectReport<'a> {
    config: &'a ModelConfig,
    n_params: usize,
    hooks: Vec<HookShape>,
}

pub fn inspect(a: &InspectArgs) -> candlelens::Result<()> {
    let model = a.processing.load(&a.model)?;
    let cfg = &model.cfg;
    let hooks = HookPoint::all_for(cfg);
    if a.json {
        let report = InspectReport {
            config: cfg,
            n_params: cfg.n_params(),
            hooks: hooks
                .iter()
                .map(|(h, s)| HookShape {
                    name: h.to_string(),
                    shape: s.to_string(),
                })
                .collect(),
        };
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = String::new();
    p!(
        o,
        "{}  ({} architecture, {:.1}M parameters)",
        cfg.name,
        cfg.architecture,
        cfg.n_params() as f64 / 1e6
    );
    p!(o, "  n_layers {}  d_model {}  n_heads {}  n_kv_heads {}  d_head {}  d_mlp {}  d_vocab {}  n_ctx {}",
        cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx);
    p!(
        o,
        "  norm {:?} (eps {:e})  act {:?}  gated_mlp {}  pre_norms {}  qk_norm {:?}  post_norms {}",
        cfg.norm,
        cfg.norm_eps,
        cfg.act,
        cfg.gated_mlp,
        cfg.pre_norms,
        cfg.qk_norm,
        cfg.post_norms
    );
    p!(o, "  positional {:?}", cfg.positional);
    p!(
        o,
        "  attn_scale {:.6}  attn_softcap {:?}  final_softcap {:?}  embed_scale {:?}  tied {}",
        cfg.attn_scale,
        cfg.attn_softcap,
        cfg.final_softcap,
        cfg.embed_scale,
        cfg.tied_embeddings
    );
    let kinds: Vec<String> = cfg
        .layer_attention
        .iter()
        .map(|k| match k {
            AttentionKind::Global => "G".to_string(),
            AttentionKind::Local { window } => format!("L{window}"),
        })
        .collect();
    p!(o, "  layer attention {}", kinds.join(" "));
    p!(o, "  weight processing: {}", cfg.processing.describe());
    let block = match candlelens::block::BlockKind::of(cfg) {
        candlelens::block::BlockKind::Sequential => "sequential (attention, then MLP)",
        candlelens::block::BlockKind::Parallel { own_ln2: false } => {
            "parallel attention + MLP from one norm"
        }
        candlelens::block::BlockKind::Parallel { own_ln2: true } => {
            "parallel attention + MLP, a norm each"
        }
    };
    p!(o, "  blocks {block}");
    if let Some(moe) = &cfg.moe {
        p!(
            o,
            "  mixture of experts: {} experts of {} units, top {}{}{} (d_mlp {} = all experts side by side)",
            moe.n_experts,
            moe.d_expert,
            moe.top_k,
            if moe.norm_topk_prob { " renormalised" } else { "" },
            if moe.d_shared > 0 {
                format!(", a shared expert of {} units", moe.d_shared)
            } else {
                String::new()
            },
            cfg.d_mlp
        );
    }
    p!(
        o,
        "  BOS {:?} (prepended by default: {})  EOS {:?}  pad {}",
        cfg.bos_token_id,
        cfg.default_prepend_bos,
        cfg.eos_token_id,
        cfg.pad_token_id
    );
    p!(o, "\nhook points ({}):", hooks.len());
    for (h, s) in hooks
        .iter()
        .filter(|(h, _)| h.layer().is_none_or(|l| l == 0))
    {
        p!(o, "  {:<40} {}", h.to_string(), s);
    }
    p!(
        o,
        "  ... and the same block hooks for blocks 1..{}",
        cfg.n_layers - 1
    );
    emit(&o);
    Ok(())
}
