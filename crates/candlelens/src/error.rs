//! One typed error for the whole library. Every message names the problem and the fix, so a
//! notebook user can act on it without reading a backtrace.

use std::path::PathBuf;

/// Everything that can go wrong in Candlelens.
///
/// `Debug` prints the same message as `Display`, so that `?` in a notebook cell or in `main`
/// shows the message and its fix rather than a struct dump.
#[derive(thiserror::Error)]
pub enum LensError {
    /// A model name that is neither an alias, a local path, nor a plausible hub repo id.
    #[error("unknown model '{name}'{hint}. Use an alias (`lens models` lists them), a local folder with config.json, a .gguf file, or a hub repo id like 'owner/name'")]
    UnknownModel { name: String, hint: String },

    /// An embedded model whose files have not been fetched yet.
    #[error(
        "model '{alias}' is not on this machine (looked for {path}). Fetch it with: {command}"
    )]
    ModelNotFetched {
        alias: String,
        path: PathBuf,
        command: String,
    },

    /// A file the loader needs does not exist.
    #[error("file not found: {path}. {fix}")]
    MissingFile { path: PathBuf, fix: String },

    /// A file exists but cannot be read as what it claims to be (truncated, corrupt, wrong format).
    #[error("corrupt or truncated file {path}: {detail}. Re-download it (for the embedded models: scripts/fetch-models)")]
    CorruptFile { path: PathBuf, detail: String },

    /// The checkpoint's architecture has no weight mapping.
    #[error("unsupported architecture '{arch}'. Supported: {supported}")]
    UnsupportedArchitecture { arch: String, supported: String },

    /// A config field holds a value the forward pass does not implement.
    #[error("unsupported config value {field} = {value}: {fix}")]
    UnsupportedConfig {
        field: String,
        value: String,
        fix: String,
    },

    /// A weight the architecture needs is missing from the checkpoint, or has the wrong shape.
    #[error("weight '{name}' {problem}. The checkpoint does not match its config; re-download it or check the architecture")]
    BadWeight { name: String, problem: String },

    /// A hook name that does not parse.
    #[error("unknown hook name '{name}'{hint}. Hook names follow TransformerLens, e.g. 'blocks.0.hook_resid_pre' (`lens inspect --model M` lists them all)")]
    UnknownHook { name: String, hint: String },

    /// A layer index beyond the model.
    #[error("layer {layer} is out of range: the model has {n_layers} layers (0..={max})", max = n_layers.saturating_sub(1))]
    LayerOutOfRange { layer: usize, n_layers: usize },

    /// A position index beyond the prompt.
    #[error("position {pos} is out of range for a prompt of {len} tokens (0..={max}); negative positions count from the end", max = len.saturating_sub(1))]
    PositionOutOfRange { pos: i64, len: usize },

    /// A string expected to be one token is several (or none).
    #[error("'{text}' is {n} tokens ({tokens:?}), not one. Pick a single-token answer, or add/remove the leading space")]
    NotSingleToken {
        text: String,
        n: usize,
        tokens: Vec<String>,
    },

    /// An empty prompt (no tokens to run).
    #[error("the prompt is empty (no tokens). Pass some text, or prepend BOS")]
    EmptyPrompt,

    /// A prompt longer than the model's context.
    #[error("the prompt has {len} tokens but the model's context is {n_ctx}. Shorten it")]
    PromptTooLong { len: usize, n_ctx: usize },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {d_vocab})")]
    TokenOutOfRange { id: u32, d_vocab: usize },

    /// A hook returned a replacement of the wrong shape.
    #[error("hook on '{hook}' returned shape {got:?}, expected {want:?}. A hook must return a tensor of the activation's shape")]
    HookShape {
        hook: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },

    /// An activation that the cache does not hold.
    #[error("the cache has no '{name}'. Run run_with_cache with a filter that includes it (cached: {available})")]
    NotCached { name: String, available: String },

    /// Bad arguments to a call.
    #[error("{0}")]
    InvalidArgument(String),

    /// Downloading from the hub failed.
    #[error("hub download of {repo}/{file} failed: {detail}. {fix}")]
    Hub {
        repo: String,
        file: String,
        detail: String,
        fix: String,
    },

    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A tensor operation failed (a bug, or a shape the caller passed).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// An I/O error with the path involved.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A JSON document that does not parse.
    #[error("invalid JSON in {what}: {detail}")]
    Json { what: String, detail: String },

    /// An entity or attribute of a binding prompt that is not a token of its own in the
    /// tokenized prompt (split into pieces, or merged with its neighbours).
    #[error("{role} '{entry}' of prompt {prompt} is not a token of its own there (its characters fall in the tokens {tokens:?}). Keep only entries that are single tokens (binding::one_token_rows), and check that the template separates them from their neighbours")]
    BindingPosition {
        role: String,
        entry: String,
        prompt: usize,
        tokens: Vec<String>,
    },
}

impl std::fmt::Debug for LensError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Result type of the library.
pub type Result<T> = std::result::Result<T, LensError>;

impl LensError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LensError::Io {
            path: path.into(),
            source,
        }
    }
}

/// " (did you mean 'x'?)" for the closest candidate within a small edit distance, else "".
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::levenshtein(name, c);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    match best {
        Some((d, c)) if d <= (name.len() / 3).max(2) => format!(" (did you mean '{c}'?)"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_names() {
        let hint = did_you_mean("hook_resid_pr", ["hook_resid_pre", "hook_resid_post"]);
        assert_eq!(hint, " (did you mean 'hook_resid_pre'?)");
        assert_eq!(did_you_mean("zzzzzzzz", ["hook_resid_pre"]), "");
    }

    #[test]
    fn debug_is_the_message() {
        let e = LensError::EmptyPrompt;
        assert_eq!(format!("{e:?}"), e.to_string());
    }

    #[test]
    fn messages_name_the_fix() {
        let e = LensError::LayerOutOfRange {
            layer: 40,
            n_layers: 30,
        };
        assert_eq!(
            e.to_string(),
            "layer 40 is out of range: the model has 30 layers (0..=29)"
        );
    }
}
