//! What the subcommands share: the model-and-prompt arguments, output, memory readings, the
//! answer-pair metric.

use candlelens::prelude::*;
use clap::Args;
use serde::Serialize;

/// A model and one prompt (text or token ids), with device and dtype.
#[derive(Args)]
pub struct Input {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    pub model: String,
    /// Prompt text.
    #[arg(
        long,
        conflicts_with_all = ["tokens", "prompts"],
        required_unless_present_any = ["tokens", "prompts"]
    )]
    pub prompt: Option<String>,
    /// A file with one prompt per line, run as one padded batch (empty lines skipped).
    #[arg(long, conflicts_with = "tokens")]
    pub prompts: Option<std::path::PathBuf>,
    /// Which side a batch of prompts is padded on: right (default) or left.
    #[arg(long, default_value = "right", value_parser = ["left", "right"])]
    pub padding: String,
    /// Comma-separated token ids (used as given; no BOS added, so --bos / --no-bos do not apply).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["bos", "no_bos"])]
    pub tokens: Option<Vec<u32>>,
    #[command(flatten)]
    pub bos: BosArgs,
    /// Device: cpu (default), cuda, cuda:N, metal (GPU builds: --features cuda / metal).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[command(flatten)]
    pub processing: ProcessingArgs,
}

impl Input {
    /// Loads the model on the chosen device and dtype, processed as the flags say.
    pub fn load(&self) -> candlelens::Result<HookedTransformer> {
        let mut opts = LoadOptions::parse(&self.device, &self.dtype)?;
        opts.processing = self.processing.processing();
        HookedTransformer::from_pretrained_with(&self.model, &opts)
    }

    /// The prompts' tokens: the ids as given, the text tokenized, or the file's lines as one
    /// batch padded on `--padding`'s side.
    pub fn tokens(&self, model: &HookedTransformer) -> candlelens::Result<Tokens> {
        let bos = self.bos.flag();
        match (&self.prompt, &self.tokens, &self.prompts) {
            (_, Some(ids), _) => model.tokens_from_ids(ids.clone()),
            (Some(p), None, _) => model.to_tokens(p.as_str(), bos),
            (None, None, Some(path)) => {
                let padding = candlelens::tokens::Padding::parse(&self.padding)?;
                model.to_tokens_padded(read_prompts(path)?, bos, padding)
            }
            (None, None, None) => Err(LensError::EmptyPrompt),
        }
    }
}

/// TransformerLens's weight processing on load (none by default).
#[derive(clap::Args)]
pub struct ProcessingArgs {
    /// Fold each norm's weight (and LayerNorm's bias) into the matrices that read it.
    #[arg(long)]
    pub fold_ln: bool,
    /// Centre the weights that write to the residual stream (LayerNorm models).
    #[arg(long)]
    pub center_writing_weights: bool,
    /// Centre the unembedding over the vocabulary.
    #[arg(long)]
    pub center_unembed: bool,
    /// Fold the value biases into the attention output bias.
    #[arg(long)]
    pub fold_value_biases: bool,
    /// TransformerLens's from_pretrained defaults: all four, each where TransformerLens applies it.
    #[arg(long, conflicts_with_all = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"])]
    pub tl_defaults: bool,
}

impl ProcessingArgs {
    /// The processing the flags ask for.
    pub fn processing(&self) -> Processing {
        if self.tl_defaults {
            return Processing::transformer_lens_defaults();
        }
        Processing {
            fold_ln: self.fold_ln,
            center_writing_weights: self.center_writing_weights,
            center_unembed: self.center_unembed,
            fold_value_biases: self.fold_value_biases,
            skip_inapplicable: false,
        }
    }

    /// Loads `model` on the CPU in f32, processed as the flags say.
    pub fn load(&self, model: &str) -> candlelens::Result<HookedTransformer> {
        let opts = LoadOptions {
            processing: self.processing(),
            ..Default::default()
        };
        HookedTransformer::from_pretrained_with(model, &opts)
    }
}

/// A whole number from `lo` to `hi` (a clap value parser's body).
fn bounded(s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number; give {lo} to {hi}"))?;
    if n < lo || n > hi {
        return Err(format!("{n} is out of range; give {lo} to {hi}"));
    }
    Ok(n)
}

/// `--runs`: 1 to 10,000 timed runs.
pub fn runs_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 10_000)
}

/// `--ig-steps`: 1 to the library's bound.
pub fn ig_steps_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, candlelens::attribution::MAX_IG_STEPS)
}

/// `--batch-size`: 1 to 4096 prompts per forward.
pub fn batch_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 4096)
}

/// A count that must be at least 1 (`--causality-rank`, `--top-k`).
pub fn positive_arg(s: &str) -> Result<usize, String> {
    bounded(s, 1, 1 << 24)
}

/// One prompt per non-empty line of `path`.
pub fn read_prompts(path: &std::path::Path) -> candlelens::Result<Vec<String>> {
    let text = candlelens::util::fs::read_text(path, "pass a text file with one prompt per line")?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(LensError::EmptyPrompt);
    }
    Ok(prompts)
}

/// `--bos` / `--no-bos`: whether to prepend BOS.
#[derive(clap::Args)]
pub struct BosArgs {
    /// Prepend BOS (default: the model's tokenizer default).
    #[arg(long, conflicts_with = "no_bos")]
    pub bos: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    pub no_bos: bool,
}

impl BosArgs {
    /// `Some(true)` for `--bos`, `Some(false)` for `--no-bos`, else the model's default.
    pub fn flag(&self) -> Option<bool> {
        if self.bos {
            Some(true)
        } else if self.no_bos {
            Some(false)
        } else {
            None
        }
    }
}

/// The shared model, the clean and corrupted prompts as tokens, and the answer pair.
pub type Pair = (
    std::sync::Arc<HookedTransformer>,
    candlelens::Tokens,
    candlelens::Tokens,
    Vec<(u32, u32)>,
);

/// What every circuit command reads: the model, a clean and a corrupted prompt, and the answer
/// pair whose logit difference is the metric.
#[derive(clap::Args)]
pub struct PairArgs {
    /// Alias, local folder, .gguf path, or hub repo id.
    #[arg(long)]
    pub model: String,
    /// The clean prompt.
    #[arg(long)]
    pub clean: String,
    /// The corrupted prompt (the same number of tokens, unless --align-last).
    #[arg(long)]
    pub corrupt: String,
    /// For prompts of different lengths: align the last K tokens of the clean and corrupted
    /// prompts (patches elsewhere change nothing and score 0).
    #[arg(long, value_name = "K")]
    pub align_last: Option<usize>,
    /// Correct and incorrect answer (each one token, e.g. " Peb" " Rachel").
    #[arg(long, num_args = 2, value_names = ["CORRECT", "INCORRECT"])]
    pub answers: Vec<String>,
    #[command(flatten)]
    pub bos: BosArgs,
    #[command(flatten)]
    pub processing: ProcessingArgs,
}

impl PairArgs {
    /// The patchers' options the flags ask for (the alignment).
    pub fn options(&self) -> candlelens::patching::PatchOptions {
        candlelens::patching::PatchOptions {
            alignment: match self.align_last {
                Some(k) => Alignment::LastK(k),
                None => Alignment::Same,
            },
            ..Default::default()
        }
    }

    /// The prompt whose tokens label a grid's positions: the clean one, or the corrupted one
    /// when they differ in length (the grid is in the corrupted prompt's positions).
    pub fn label_tokens<'t>(&self, clean: &'t Tokens, corrupt: &'t Tokens) -> &'t Tokens {
        if clean.lengths() == corrupt.lengths() {
            clean
        } else {
            corrupt
        }
    }

    /// The model (shared, for the patchers), the clean and corrupted prompts as tokens, and
    /// the checked answer pair.
    pub fn load(&self) -> candlelens::Result<Pair> {
        let model = std::sync::Arc::new(self.processing.load(&self.model)?);
        let clean = model.to_tokens(self.clean.as_str(), self.bos.flag())?;
        let corrupt = model.to_tokens(self.corrupt.as_str(), self.bos.flag())?;
        let pairs = answer_pair(&model, &self.answers)?;
        Ok((model, clean, corrupt, pairs))
    }
}

/// Writes the buffer to stdout; a closed pipe (`lens ... | head`) is not an error.
pub fn emit(o: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(o.as_bytes());
}

/// Prints a result as JSON: one line with `--json`, indented otherwise.
pub fn emit_json<T: Serialize>(out: &T, as_json: bool) {
    let text = if as_json {
        serde_json::to_string(out)
    } else {
        serde_json::to_string_pretty(out)
    };
    emit(&format!("{}\n", text.unwrap_or_default()));
}

/// A field of `/proc/self/status` (`VmRSS:`, `VmHWM:`) in MiB; 0 where there is none.
pub fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `(correct, incorrect)` token pair of `--answers`, checked: two answers that differ,
/// each one token.
pub fn answer_pair(
    model: &HookedTransformer,
    answers: &[String],
) -> candlelens::Result<Vec<(u32, u32)>> {
    if answers.len() != 2 {
        return Err(candlelens::LensError::mismatch("--answers", format!(
                "got {} answer(s) {answers:?}; give the correct and the incorrect answer, e.g. --answers \" Peb\" \" Rachel\"",
                answers.len()
            )));
    }
    if answers[0] == answers[1] {
        return Err(candlelens::LensError::mismatch("--answers", format!("both answers are {:?}: their logit difference is always 0; give two different answers", answers[0])));
    }
    model.answer_pairs(&[(answers[0].as_str(), answers[1].as_str())])
}

/// A patching or attribution grid as text: `what`, the normalisation and the axes on one line,
/// then one line per row (labels right-aligned in `width` columns).
pub fn grid_text(o: &mut String, grid: &candlelens::patching::PatchGrid, what: &str, width: usize) {
    use candlelens::patching::PatchTarget;
    let (rows, cols) = match grid.target {
        PatchTarget::HeadsByPos => ("heads", "positions"),
        t if t.by_head() => ("layers", "heads"),
        _ => ("layers", "positions"),
    };
    p!(
        o,
        "{what} (patched - corrupted) / (clean - corrupted); rows {rows}, columns {cols}"
    );
    for (label, row) in grid.row_labels.iter().zip(&grid.values) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:6.2}")).collect();
        p!(o, "{label:>width$} {}", cells.join(" "));
    }
}

/// The first line of a circuit command's text report: the model, what was computed, and the
/// metric on the clean and corrupted runs.
pub fn circuit_header(model: &str, what: &str, clean: f32, corrupted: f32) -> String {
    format!("model {model}  {what}  clean diff {clean:.4}  corrupted diff {corrupted:.4}\n")
}
