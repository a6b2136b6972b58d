//! Writing an activation dataset: contexts → batches → shards, resumable and shardable.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{shard_path, tokens_sha256, Manifest, Plan, ShardFile, StoredHook};
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{HookAxis, HookFilter, HookPoint};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::util::corpus::Corpus;

/// How [`store_activations`] cuts and runs the corpus.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Tokens per context (default 128, SAELens's).
    pub context_size: usize,
    /// Contexts per forward (default 16).
    pub batch_size: usize,
    /// Contexts per shard (default 64): bounds the memory of a run.
    pub contexts_per_shard: usize,
    /// Stop after this many tokens of contexts (default: the whole corpus).
    pub max_tokens: Option<usize>,
    /// `(i, n)`: write only the shards `k` with `k % n == i` (default `(0, 1)`: all).
    pub shard: (usize, usize),
    /// Show a progress bar (default on).
    pub progress: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            context_size: 128,
            batch_size: 16,
            contexts_per_shard: 64,
            max_tokens: None,
            shard: (0, 1),
            progress: true,
        }
    }
}

/// What one [`store_activations`] run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoreReport {
    /// Shard files written by this run.
    pub files_written: usize,
    /// Shard files that were already there (a resumed run, or another process's).
    pub files_kept: usize,
    /// Rows written by this run, per hook.
    pub rows_written: usize,
    /// Tokens run through the model by this run.
    pub tokens_run: usize,
    /// Whether every shard is now present and `manifest.json` was written.
    pub complete: bool,
    /// Wall time.
    pub seconds: f64,
}

/// The width of one row at `hp` (heads flattened), or an error for points whose rows are not
/// one vector per position.
fn width(hp: &HookPoint, model: &HookedTransformer) -> Result<usize> {
    hp.check(&model.cfg)?;
    let axes = hp.axes(&model.cfg).unwrap_or_default();
    if axes.contains(&HookAxis::KeyPos) {
        return Err(LensError::Unsupported {
            what: format!("storing {hp}"),
            fix: "attention patterns and scores hold a row per key position; store hook_z, hook_attn_out or the residual stream".into(),
        });
    }
    Ok(axes
        .iter()
        .map(|a| match a {
            HookAxis::Size(n) => *n,
            _ => 1,
        })
        .product())
}

/// Writes `plan.json`, or checks that the folder's plan is this one.
fn claim(dir: &Path, plan: &Plan) -> Result<()> {
    let path = dir.join("plan.json");
    if path.exists() {
        let there: Plan =
            serde_json::from_value(crate::util::fs::read_json(&path, "")?).map_err(|e| {
                LensError::BadData {
                    what: path.display().to_string(),
                    detail: format!("not a dataset plan ({e}); choose an empty folder for --out"),
                }
            })?;
        if &there != plan {
            return Err(LensError::BadData {
                what: dir.display().to_string(),
                detail: format!(
                    "the folder holds another dataset (model {}, hooks {:?}, context {}, {} contexts, corpus {}) than this run would write (model {}, hooks {:?}, context {}, {} contexts, corpus {}); choose another folder, or delete it to start again",
                    there.model,
                    there.hooks.iter().map(|h| &h.name).collect::<Vec<_>>(),
                    there.context_size,
                    there.n_contexts,
                    there.corpus,
                    plan.model,
                    plan.hooks.iter().map(|h| &h.name).collect::<Vec<_>>(),
                    plan.context_size,
                    plan.n_contexts,
                    plan.corpus
                ),
            });
        }
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(plan).map_err(|e| LensError::Internal(e.to_string()))?;
    crate::util::fs::write_bytes(&path, &json)
}

/// Removes the temporary shard files (`.shard-….safetensors.PID-N.tmp`) that a killed run
/// left in `dir`: those of processes no longer running (on Linux; elsewhere none are removed),
/// so that processes of one array job writing into the same folder never remove each other's.
fn sweep_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name
            .strip_prefix(".shard-")
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let pid = rest
            .rsplit('.')
            .next()
            .and_then(|t| t.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        let proc_root = Path::new("/proc");
        if let Some(pid) = pid {
            if proc_root.is_dir() && !proc_root.join(pid.to_string()).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The rows of one batch at each hook: activations `[rows, d]` and `(token, context, position)`.
type BatchRows = (Vec<Tensor>, Vec<(u32, u32, u32)>);

fn run_batch(
    model: &HookedTransformer,
    rows: &[Vec<u32>],
    first_context: usize,
    hooks: &[HookPoint],
) -> Result<BatchRows> {
    let batch = Tokens::new(rows.to_vec(), model.cfg.pad_token_id)?;
    let mut rec = ActivationCache::recorder(HookFilter::Points(hooks.to_vec()));
    let stop = hooks
        .iter()
        .map(|h| match h {
            HookPoint::Embed | HookPoint::PosEmbed => Some(0),
            _ => h.layer().map(|l| l + 1),
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or(0));
    match stop {
        Some(s) => {
            model.run_until(&batch, s, &mut rec)?;
        }
        None => {
            model.forward_with(&batch, LogitsAt::Last, &mut rec)?;
        }
    }
    let mut keep = Vec::new();
    let mut index = Vec::new();
    let p = batch.max_len();
    let bos = model.tokenizer().bos_token_id;
    for (i, pos) in crate::sae::store::positions_without_bos(rows, bos) {
        keep.push((i * p + pos) as u32);
        index.push((rows[i][pos], (first_context + i) as u32, pos as u32));
    }
    let keep = Tensor::new(keep, &Device::Cpu)?;
    let acts = hooks
        .iter()
        .map(|h| {
            let a = rec.at(*h)?;
            let (b, p) = (a.dim(0)?, a.dim(1)?);
            Ok(a.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .reshape((b * p, ()))?
                .index_select(&keep, 0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((acts, index))
}

/// Streams `corpus` through `model` in contexts of `opts.context_size` tokens and writes
/// `hooks`' activations to `dir` as described in [the module docs](super): a resumable,
/// shardable dataset of safetensors shards and a manifest.
///
/// # Errors
/// [`LensError::BadParameter`] for no hooks, a zero batch or shard size, or a shard `(i, n)`
/// with `i >= n`; [`LensError::HookNotOnModel`] / [`LensError::Unsupported`] for a hook the
/// model does not fire or whose rows are not one vector per position (patterns);
/// [`LensError::BadData`] when `dir` holds another dataset; [`LensError::Io`] when a shard
/// cannot be written (a full disk leaves no shard that looks complete: the run can be resumed
/// once there is room); as [`Corpus::contexts`] and the forward.
pub fn store_activations(
    model: &HookedTransformer,
    corpus: &Corpus,
    hooks: &[HookPoint],
    dir: &Path,
    opts: &StoreOptions,
) -> Result<StoreReport> {
    let t0 = std::time::Instant::now();
    let (i, n) = opts.shard;
    if hooks.is_empty() {
        return Err(LensError::bad_parameter(
            "hooks",
            "none",
            "store at least one hook point",
        ));
    }
    if opts.batch_size == 0 || opts.contexts_per_shard == 0 || n == 0 || i >= n {
        return Err(LensError::bad_parameter(
            "store options",
            format!(
                "batch {}, contexts per shard {}, shard {i}/{n}",
                opts.batch_size, opts.contexts_per_shard
            ),
            "give a batch and a shard size of at least 1, and a shard i/n with i < n",
        ));
    }
    for h in hooks {
        h.check(&model.cfg)?;
    }
    let max_contexts = opts
        .max_tokens
        .map_or(usize::MAX, |t| (t / opts.context_size).max(1));
    let tokens = corpus.contexts(model, opts.context_size, max_contexts)?;
    let n_contexts = tokens.batch();
    let plan = Plan {
        model: model.cfg.name.clone(),
        corpus: corpus.name.clone(),
        hooks: hooks
            .iter()
            .map(|h| {
                Ok(StoredHook {
                    name: h.to_string(),
                    d: width(h, model)?,
                })
            })
            .collect::<Result<_>>()?,
        context_size: opts.context_size,
        batch_size: opts.batch_size,
        contexts_per_shard: opts.contexts_per_shard,
        n_contexts,
        n_shards: n_contexts.div_ceil(opts.contexts_per_shard),
        tokens_sha256: tokens_sha256(&tokens),
    };
    std::fs::create_dir_all(dir).map_err(|e| LensError::io(dir, e))?;
    claim(dir, &plan)?;
    for h in &plan.hooks {
        let d = dir.join(&h.name);
        std::fs::create_dir_all(&d).map_err(|e| LensError::io(&d, e))?;
        sweep_temporaries(&d);
    }
    let mine: Vec<usize> = (0..plan.n_shards).filter(|k| k % n == i).collect();
    let bar = crate::util::progress::Progress::new(
        &format!("storing {} shard(s)", mine.len()),
        mine.len() as u64,
        opts.progress,
    );
    let mut report = StoreReport {
        files_written: 0,
        files_kept: 0,
        rows_written: 0,
        tokens_run: 0,
        complete: false,
        seconds: 0.0,
    };
    let rows = tokens.rows();
    for k in mine {
        let missing: Vec<usize> = (0..hooks.len())
            .filter(|&h| !dir.join(shard_path(&plan.hooks[h].name, k)).exists())
            .collect();
        report.files_kept += hooks.len() - missing.len();
        if missing.is_empty() {
            bar.inc();
            continue;
        }
        let lo = k * opts.contexts_per_shard;
        let hi = (lo + opts.contexts_per_shard).min(n_contexts);
        let mut acts: Vec<Vec<Tensor>> = vec![Vec::new(); hooks.len()];
        let mut index = Vec::new();
        for start in (lo..hi).step_by(opts.batch_size) {
            let end = (start + opts.batch_size).min(hi);
            let (a, ix) = run_batch(model, &rows[start..end], start, hooks)?;
            report.tokens_run += rows[start..end].iter().map(Vec::len).sum::<usize>();
            for (all, one) in acts.iter_mut().zip(a) {
                all.push(one);
            }
            index.extend(ix);
        }
        let col = |f: fn(&(u32, u32, u32)) -> u32| -> Result<Tensor> {
            Ok(Tensor::new(
                index.iter().map(f).collect::<Vec<u32>>(),
                &Device::Cpu,
            )?)
        };
        let (ids, ctx, pos) = (col(|r| r.0)?, col(|r| r.1)?, col(|r| r.2)?);
        for h in missing {
            let mut tensors: HashMap<String, Tensor> = HashMap::new();
            tensors.insert("activations".into(), Tensor::cat(&acts[h], 0)?);
            tensors.insert("token_ids".into(), ids.clone());
            tensors.insert("context_index".into(), ctx.clone());
            tensors.insert("position".into(), pos.clone());
            let path = dir.join(shard_path(&plan.hooks[h].name, k));
            crate::util::fs::write_atomically(&path, |tmp| {
                crate::util::fs::write_safetensors(&tensors, tmp, &path)
            })?;
            report.files_written += 1;
        }
        report.rows_written += index.len();
        bar.inc();
    }
    bar.finish();
    report.complete = finish(dir, &plan)?;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes `manifest.json` when every shard of `plan` is present; whether it did.
fn finish(dir: &Path, plan: &Plan) -> Result<bool> {
    let all_there = (0..plan.n_shards).all(|k| {
        plan.hooks
            .iter()
            .all(|h| dir.join(shard_path(&h.name, k)).exists())
    });
    if !all_there {
        return Ok(false);
    }
    let shards = (0..plan.n_shards)
        .map(|k| {
            plan.hooks
                .iter()
                .map(|h| {
                    let rel = shard_path(&h.name, k);
                    let path = dir.join(&rel);
                    let rows = super::read::rows_in(&path)?;
                    Ok(ShardFile {
                        path: rel,
                        rows,
                        bytes: std::fs::metadata(&path)
                            .map_err(|e| LensError::io(&path, e))?
                            .len(),
                        sha256: crate::load::verify::sha256_file(&path)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        plan: plan.clone(),
        shards,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| LensError::Internal(e.to_string()))?;
    crate::util::fs::write_bytes(&dir.join("manifest.json"), &json)?;
    Ok(true)
}
