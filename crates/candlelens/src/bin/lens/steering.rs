//! `lens steering-vector`: Contrastive Activation Addition's vector — the mean of
//! `blocks.L.hook_resid_pre` at each positive prompt's last real token minus the same over the
//! negative prompts — written as a float32 `.npy` for `lens generate --steer`.

use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, read_prompts, BosArgs, ProcessingArgs};

#[derive(Args)]
pub struct SteeringVectorArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// The block whose input (blocks.L.hook_resid_pre) the vector is read at and steers.
    #[arg(long)]
    layer: usize,
    /// A file of positive prompts, one per line.
    #[arg(long)]
    positive: std::path::PathBuf,
    /// A file of negative prompts, one per line.
    #[arg(long)]
    negative: std::path::PathBuf,
    /// Where to write the vector (float32 .npy, shape `[d_model]`).
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    processing: ProcessingArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    hook: String,
    norm: f32,
    n_positive: usize,
    n_negative: usize,
    out: String,
}

pub fn steering_vector(args: &SteeringVectorArgs) -> candlelens::Result<()> {
    let model = args.processing.load(&args.model)?;
    if args.layer >= model.cfg.n_layers {
        return Err(LensError::LayerOutOfRange {
            layer: args.layer,
            n_layers: model.cfg.n_layers,
        });
    }
    let bos = args.bos.flag();
    let pos = model.to_tokens(read_prompts(&args.positive)?, bos)?;
    let neg = model.to_tokens(read_prompts(&args.negative)?, bos)?;
    let hook = format!("blocks.{}.hook_resid_pre", args.layer);
    let v = SteeringVector::contrastive(&model, &hook, &pos, &neg)?;
    v.save_npy(&args.out)?;
    let report = Report {
        model: model.cfg.name.clone(),
        hook,
        norm: v.norm()?,
        n_positive: pos.batch(),
        n_negative: neg.batch(),
        out: args.out.display().to_string(),
    };
    if args.json {
        emit_json(&report, true);
    } else {
        emit(&format!(
            "{}: {} positive and {} negative prompts, |v| = {:.4}, written to {}",
            report.hook, report.n_positive, report.n_negative, report.norm, report.out
        ));
    }
    Ok(())
}
