//! `lens sae`: an SAE or transcoder spliced into one prompt's run — its sparsity, how well it
//! reconstructs, and the strongest features at one position.

use candlelens::prelude::*;
use candlelens::sae::splice::Splice;
use candlelens::sae::Sae;
use clap::Args;
use serde::Serialize;

use crate::common::{emit, emit_json, BosArgs, ProcessingArgs};

#[derive(Args)]
pub struct SaeArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    processing: ProcessingArgs,
    /// The SAE: a folder in SAELens's format (cfg.json + sae_weights.safetensors) or Gemma
    /// Scope's (params.npz, with --hook), or RELEASE/ID of SAELens's release table
    /// (gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium), downloaded from the hub.
    #[arg(long)]
    sae: String,
    /// For a Gemma Scope params.npz, which names none: the hook point it reads
    /// (e.g. blocks.12.hook_resid_post).
    #[arg(long)]
    hook: Option<String>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// The position to read (negative counts from the end).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pos: i64,
    /// How many of the strongest features to list.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    #[command(flatten)]
    bos: BosArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Feature {
    pos: usize,
    feature: usize,
    act: f32,
}

/// What `lens sae --json` prints.
#[derive(Serialize)]
struct Report {
    model: String,
    hook: String,
    hook_out: Option<String>,
    d_sae: usize,
    pos: usize,
    token: String,
    /// Active features at the position.
    l0: usize,
    /// `‖x − recons‖ / ‖x‖` at the position (x the activation the SAE predicts).
    recon_rel_error: f32,
    top_features: Vec<Feature>,
    notes: Vec<String>,
}

pub fn sae(a: &SaeArgs) -> candlelens::Result<()> {
    let path = std::path::Path::new(&a.sae);
    let looks_like_path = a.sae.starts_with(['.', '/', '~']) || path.exists();
    let sae = match (&a.hook, a.sae.split_once('/')) {
        (Some(h), _) => Sae::load_gemma_scope(path, h)?,
        (None, Some((release, id))) if !looks_like_path => {
            Sae::from_pretrained(release, id).map_err(|e| match e {
                // neither a folder nor a release: say both, in the CLI's terms
                LensError::UnknownChoice { .. } => LensError::MissingFile {
                    path: path.to_path_buf(),
                    fix: format!(
                        "--sae is neither an SAE folder (no such path) nor RELEASE/ID of SAELens's release table ({e}); check the path, or pass a folder with cfg.json and sae_weights.safetensors"
                    ),
                },
                other => other,
            })?
        }
        (None, _) => Sae::load(path).map_err(|e| match e {
            // a Gemma Scope params.npz folder: the CLI's way to say the hook
            LensError::MissingFile { path: p, .. }
                if path.join("params.npz").exists() =>
            {
                LensError::MissingFile {
                    path: p,
                    fix: "this is a Gemma Scope folder (params.npz), whose file names no hook point: pass --hook, e.g. --hook blocks.12.hook_resid_post".into(),
                }
            }
            other => other,
        })?,
    };
    let model = a.processing.load(&a.model)?;
    let tokens = model.to_tokens(a.prompt.as_str(), a.bos.flag())?;
    let pos = tokens.resolve_pos(0, a.pos)?;
    let (_, cache) = model.run_with_saes(&tokens, &mut [Splice::new(&sae)])?;
    let name = |w: &str| format!("{}.{w}", sae.output_hook());
    let acts: Vec<f32> = cache
        .get(&name("hook_sae_acts_post"))?
        .i((0, pos))?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let recons = cache.get(&name("hook_sae_recons"))?.i((0, pos))?;
    // what the SAE predicts: its output point's activation, the reconstruction plus the error
    let target = (&recons + cache.get(&name("hook_sae_error"))?.i((0, pos))?)?;
    let norm = |t: &Tensor| -> candlelens::Result<f32> {
        Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
    };
    let recon_rel_error = norm(&(&target - &recons)?)? / norm(&target)?.max(1e-12);
    let mut order: Vec<usize> = (0..acts.len()).filter(|&f| acts[f] > 0.0).collect();
    let l0 = order.len();
    order.sort_by(|&x, &y| acts[y].total_cmp(&acts[x]));
    let top_features: Vec<Feature> = order
        .into_iter()
        .take(a.top_k)
        .map(|f| Feature {
            pos,
            feature: f,
            act: acts[f],
        })
        .collect();
    let token = model
        .ids_to_str_tokens(&tokens.row(0)?[pos..pos + 1])?
        .pop()
        .unwrap_or_default();
    let report = Report {
        model: model.cfg.name.clone(),
        hook: sae.hook.to_string(),
        hook_out: sae.hook_out.map(|h| h.to_string()),
        d_sae: sae.d_sae(),
        pos,
        token,
        l0,
        recon_rel_error,
        top_features,
        notes: sae.notes.clone(),
    };
    if a.json {
        emit_json(&report, true);
        return Ok(());
    }
    let mut o = String::new();
    p!(
        o,
        "model {}  SAE at {}{} ({} features)",
        report.model,
        report.hook,
        report
            .hook_out
            .as_ref()
            .map(|h| format!(" -> {h}"))
            .unwrap_or_default(),
        report.d_sae
    );
    p!(
        o,
        "position {} ({:?}): L0 {}, relative reconstruction error {:.4}",
        pos,
        report.token,
        l0,
        recon_rel_error
    );
    for f in &report.top_features {
        p!(o, "  feature {:>7}  {:.4}", f.feature, f.act);
    }
    for n in &report.notes {
        p!(o, "note: {n}");
    }
    emit(&o);
    Ok(())
}
