//! The mixtures of experts among the Llama-style families — Mixtral and Qwen 2/3 MoE: their
//! config fields (`num_local_experts` / `num_experts`, `num_experts_per_tok`,
//! `moe_intermediate_size`, `norm_topk_prob`, Qwen 2's shared expert) and their experts' weights
//! laid side by side as one wide gated MLP ([`MoeConfig`]).

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::{check_dim, get, opt, Family, Json};
use crate::engine::config::MoeConfig;
use crate::engine::weights::TensorSource;
use crate::error::{LensError, Result};

/// The mixture of experts of Mixtral (`num_local_experts`, always renormalised) and Qwen 2/3
/// MoE (`num_experts`, `moe_intermediate_size`, `norm_topk_prob`, Qwen 2's shared expert);
/// `None` for the dense families.
pub(super) fn moe_config(family: Family, j: &Json) -> Result<Option<MoeConfig>> {
    let (n_experts, d_expert, d_shared, norm_topk_prob) = match family {
        Family::Mixtral => (
            j.dim("num_local_experts")?,
            j.dim("intermediate_size")?,
            0,
            true,
        ),
        Family::Qwen2Moe | Family::Qwen3Moe => {
            let step = j.usize_or("decoder_sparse_step", 1);
            let dense_layers =
                j.v.get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
            if step != 1 || dense_layers > 0 {
                return Err(LensError::UnsupportedConfig {
                    field: "decoder_sparse_step / mlp_only_layers".into(),
                    value: format!("{step} / {dense_layers} dense layers"),
                    fix: "mixing dense and sparse MLP layers is not implemented; the released Qwen MoE models use 1 / []".into(),
                });
            }
            let shared = if family == Family::Qwen2Moe {
                j.dim_or("shared_expert_intermediate_size", 0)
                    .or_else(|_| j.dim("shared_expert_intermediate_size"))?
            } else {
                0
            };
            // the hub's configs say num_experts; transformers 5 saves num_local_experts
            let n_experts = match j.v.get("num_experts") {
                Some(_) => j.dim("num_experts")?,
                None => j.dim("num_local_experts")?,
            };
            (
                n_experts,
                j.dim("moe_intermediate_size")?,
                shared,
                j.bool_or("norm_topk_prob", false),
            )
        }
        _ => return Ok(None),
    };
    let top_k = j.dim("num_experts_per_tok")?;
    Ok(Some(MoeConfig {
        n_experts: check_dim("num_experts", n_experts)?,
        top_k,
        d_expert,
        d_shared,
        norm_topk_prob,
    }))
}

/// One layer's experts side by side: `gate` and `up` `[d_mlp, d_model]` (expert after expert,
/// then the shared expert), `down_t` `[d_mlp, d_model]` (the transpose of `W_out`'s
/// `[d_model, d_mlp]`), the router `[n_experts, d_model]` and the shared expert's gate.
pub(super) struct Experts {
    pub router: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down_t: Tensor,
    pub shared_gate: Option<Tensor>,
}

/// Reads a layer's experts from the hub layout (`experts.{e}.w1/w3/w2` under
/// `block_sparse_moe` for Mixtral, `experts.{e}.gate_proj/up_proj/down_proj` under `mlp` for
/// Qwen) or from transformers 5's fused one (`mlp.experts.gate_up_proj [E, 2 d_expert,
/// d_model]`, `mlp.experts.down_proj [E, d_model, d_expert]`).
pub(super) fn experts(
    family: Family,
    moe: &MoeConfig,
    pre: &str,
    src: &mut dyn TensorSource,
    d: usize,
    dtype: DType,
    dev: &Device,
) -> Result<Experts> {
    let (ne, de) = (moe.n_experts, moe.d_expert);
    let (block, names) = if family == Family::Mixtral {
        ("block_sparse_moe", ["w1", "w3", "w2"])
    } else {
        ("mlp", ["gate_proj", "up_proj", "down_proj"])
    };
    let router_name = [
        format!("{pre}.{block}.gate.weight"),
        format!("{pre}.mlp.gate.weight"),
    ];
    let router = match opt(src, &router_name[0], dtype, dev)? {
        Some(r) => r,
        None => get(src, &router_name[1], dtype, dev)?,
    };
    let (mut gates, mut ups, mut downs) = (Vec::new(), Vec::new(), Vec::new());
    let first = format!("{pre}.{block}.experts.0.{}.weight", names[0]);
    if src.get(&first)?.is_some() {
        for e in 0..ne {
            let n = |w: &str| format!("{pre}.{block}.experts.{e}.{w}.weight");
            gates.push(get(src, &n(names[0]), dtype, dev)?);
            ups.push(get(src, &n(names[1]), dtype, dev)?);
            downs.push(get(src, &n(names[2]), dtype, dev)?.t()?);
        }
    } else {
        let gu_name = format!("{pre}.mlp.experts.gate_up_proj");
        let gate_up = get(src, &gu_name, dtype, dev)?;
        let down_name = format!("{pre}.mlp.experts.down_proj");
        let down = get(src, &down_name, dtype, dev)?;
        for (name, t, want) in [
            (&gu_name, &gate_up, [ne, 2 * de, d]),
            (&down_name, &down, [ne, d, de]),
        ] {
            if t.dims() != want {
                return Err(LensError::BadWeight {
                    name: name.clone(),
                    problem: format!("has shape {:?}, expected {want:?}", t.dims()),
                });
            }
        }
        for e in 0..ne {
            let gu = gate_up.get(e)?;
            gates.push(gu.narrow(0, 0, de)?);
            ups.push(gu.narrow(0, de, de)?);
            downs.push(down.get(e)?.t()?);
        }
    }
    let mut shared_gate = None;
    if moe.d_shared > 0 {
        let n = |w: &str| format!("{pre}.mlp.shared_expert.{w}.weight");
        gates.push(get(src, &n("gate_proj"), dtype, dev)?);
        ups.push(get(src, &n("up_proj"), dtype, dev)?);
        downs.push(get(src, &n("down_proj"), dtype, dev)?.t()?);
        shared_gate = Some(get(
            src,
            &format!("{pre}.mlp.shared_expert_gate.weight"),
            dtype,
            dev,
        )?);
    }
    // every expert's [d_expert, d_model] block (the shared one [d_shared, d_model]) checked
    // before they are stacked
    let mut widths = vec![de; ne];
    if moe.d_shared > 0 {
        widths.push(moe.d_shared);
    }
    for (what, parts) in [
        ("gate", &gates),
        ("up", &ups),
        ("down (transposed)", &downs),
    ] {
        for (i, (t, &w)) in parts.iter().zip(&widths).enumerate() {
            if t.dims() != [w, d] {
                return Err(LensError::BadWeight {
                    name: format!("{pre}.{block} expert {i} {what}"),
                    problem: format!("has shape {:?}, expected {:?}", t.dims(), [w, d]),
                });
            }
        }
    }
    Ok(Experts {
        router,
        gate: Tensor::cat(&gates, 0)?,
        up: Tensor::cat(&ups, 0)?,
        down_t: Tensor::cat(&downs, 0)?,
        shared_gate,
    })
}
