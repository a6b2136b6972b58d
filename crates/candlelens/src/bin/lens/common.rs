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
    /// A file with one prompt per line, run as one right-padded batch (empty lines skipped).
    #[arg(long, conflicts_with = "tokens")]
    pub prompts: Option<std::path::PathBuf>,
    /// Comma-separated token ids (used as given; no BOS added).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Prepend BOS (default: the model's tokenizer default).
    #[arg(long, conflicts_with = "no_bos")]
    pub bos: bool,
    /// Do not prepend BOS.
    #[arg(long)]
    pub no_bos: bool,
    /// Device: cpu (default), cuda, cuda:N, metal (GPU builds: --features cuda / metal).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl Input {
    /// Loads the model on the chosen device and dtype.
    pub fn load(&self) -> candlelens::Result<HookedTransformer> {
        let opts = LoadOptions::parse(&self.device, &self.dtype)?;
        HookedTransformer::from_pretrained_with(&self.model, &opts)
    }

    /// The prompts' tokens: the ids as given, the text tokenized, or the file's lines as one
    /// right-padded batch.
    pub fn tokens(&self, model: &HookedTransformer) -> candlelens::Result<Tokens> {
        let bos = bos_flag(self.bos, self.no_bos);
        match (&self.prompt, &self.tokens, &self.prompts) {
            (_, Some(ids), _) => model.tokens_from_ids(ids.clone()),
            (Some(p), None, _) => model.to_tokens(p.as_str(), bos),
            (None, None, Some(path)) => model.to_tokens(read_prompts(path)?, bos),
            (None, None, None) => Err(LensError::EmptyPrompt),
        }
    }
}

/// One prompt per non-empty line of `path`.
fn read_prompts(path: &std::path::Path) -> candlelens::Result<Vec<String>> {
    if !path.exists() {
        return Err(LensError::MissingFile {
            path: path.to_path_buf(),
            fix: "pass a text file with one prompt per line".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| LensError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
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

/// `--bos` / `--no-bos` as `prepend_bos` (`None`: the tokenizer's default).
pub fn bos_flag(bos: bool, no_bos: bool) -> Option<bool> {
    if bos {
        Some(true)
    } else if no_bos {
        Some(false)
    } else {
        None
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

/// The logit difference of `answers[0]` over `answers[1]` (each one token), averaged over the
/// batch.
pub fn answer_metric(
    model: &HookedTransformer,
    answers: &[String],
) -> candlelens::Result<candlelens::patching::Metric> {
    Ok(metrics::logit_diff_metric(&answer_pair(model, answers)?))
}

/// The `(correct, incorrect)` token pair of `--answers`, checked: two answers that differ,
/// each one token.
pub fn answer_pair(
    model: &HookedTransformer,
    answers: &[String],
) -> candlelens::Result<Vec<(u32, u32)>> {
    if answers.len() != 2 {
        return Err(candlelens::LensError::Mismatch {
            what: "--answers".into(),
            detail: format!(
                "got {} answer(s) {answers:?}; give the correct and the incorrect answer, e.g. --answers \" Peb\" \" Rachel\"",
                answers.len()
            ),
        });
    }
    if answers[0] == answers[1] {
        return Err(candlelens::LensError::Mismatch {
            what: "--answers".into(),
            detail: format!("both answers are {:?}: their logit difference is always 0; give two different answers", answers[0]),
        });
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
