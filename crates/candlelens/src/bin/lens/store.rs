//! `lens store`: a corpus's activations at one or more hook points, written to disk as a
//! resumable, shardable dataset (candlelens::dataset).

use candlelens::dataset::{store_activations, StoreOptions};
use candlelens::prelude::*;
use candlelens::util::corpus::{Corpus, SampleBy};
use clap::Args;

use crate::common::{emit, emit_json, ProcessingArgs};

#[derive(Args)]
pub struct StoreArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    model: String,
    /// python-docs (the embedded corpus), a JSONL file of {"text": ...} lines (.jsonl), or a
    /// plain-text file cut by --sample-by.
    #[arg(long, default_value = "python-docs")]
    corpus: String,
    /// How a plain-text corpus is cut into documents (as Hugging Face datasets' text loader):
    /// line, paragraph (up to a blank line) or document (the whole file).
    #[arg(long, default_value = "line")]
    sample_by: SampleBy,
    /// A hook point to store (repeatable), e.g. blocks.6.hook_resid_pre.
    #[arg(long, required = true)]
    hook: Vec<String>,
    /// Tokens per context.
    #[arg(long, default_value_t = 128, value_parser = crate::common::positive_arg)]
    context: usize,
    /// Contexts per forward.
    #[arg(long, default_value_t = 16, value_parser = crate::common::batch_arg)]
    batch: usize,
    /// Contexts per shard (bounds the memory of a run).
    #[arg(long, default_value_t = 64, value_parser = crate::common::batch_arg)]
    contexts_per_shard: usize,
    /// Stop after this many tokens of contexts.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// i/n: write only the shards k with k % n == i (n processes together write the whole).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// The dataset folder.
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    processing: ProcessingArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_shard(s: &str) -> candlelens::Result<(usize, usize)> {
    let bad =
        || LensError::bad_parameter("--shard", s, "write i/n with 0 <= i < n, e.g. --shard 2/8");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

pub fn store(args: &StoreArgs) -> candlelens::Result<()> {
    let shard = parse_shard(&args.shard)?;
    let model = args.processing.load(&args.model)?;
    let hooks = args
        .hook
        .iter()
        .map(|h| HookPoint::parse_for(h, &model.cfg))
        .collect::<candlelens::Result<Vec<_>>>()?;
    let corpus = Corpus::from_name(&args.corpus, args.sample_by)?;
    let opts = StoreOptions {
        context_size: args.context,
        batch_size: args.batch,
        contexts_per_shard: args.contexts_per_shard,
        max_tokens: args.max_tokens,
        shard,
        progress: !args.json,
    };
    let report = store_activations(&model, &corpus, &hooks, &args.out, &opts)?;
    if args.json {
        #[derive(serde::Serialize)]
        struct WithPeak<'a> {
            #[serde(flatten)]
            report: &'a candlelens::dataset::StoreReport,
            /// The process's peak resident memory (Linux; 0 elsewhere), MB.
            peak_rss_mb: f64,
        }
        emit_json(
            &WithPeak {
                report: &report,
                peak_rss_mb: crate::common::rss_mb("VmHWM:"),
            },
            true,
        );
    } else {
        emit(&format!(
            "{} file(s) written, {} kept, {} rows per hook, {} tokens in {:.1} s; {}",
            report.files_written,
            report.files_kept,
            report.rows_written,
            report.tokens_run,
            report.seconds,
            if report.complete {
                format!("complete: {}", args.out.join("manifest.json").display())
            } else {
                "other shards are still to be written (run the other --shard parts, or this command again)".to_string()
            }
        ));
    }
    Ok(())
}
