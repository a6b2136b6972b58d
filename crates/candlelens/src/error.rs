//! One typed error for the whole library. Every message names the problem and the fix, so a
//! notebook user can act on it without reading a backtrace.

use std::path::PathBuf;

/// Everything that can go wrong in Candlelens.
///
/// `Debug` prints the same message as `Display`, so that `?` in a notebook cell or in `main`
/// shows the message and its fix rather than a struct dump.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum LensError {
    /// A model name that is neither an alias, a local path, nor a plausible hub repo id.
    #[error("unknown model '{name}'{hint}. Use an alias (`lens models` lists them), a local folder with config.json, a .gguf file, or a hub repo id like 'owner/name'")]
    UnknownModel {
        /// The name given.
        name: String,
        /// A " (did you mean ...)" suggestion or a note on the name, or empty.
        hint: String,
    },

    /// An embedded model whose files have not been fetched yet.
    #[error(
        "model '{alias}' is not on this machine (looked for {path}). Fetch it with: {command}"
    )]
    ModelNotFetched {
        /// The embedded model's alias.
        alias: String,
        /// The path that was looked for.
        path: PathBuf,
        /// The command that fetches it.
        command: String,
    },

    /// An embedded model's file differs from the sha256 that `scripts/fetch-models` pinned: it
    /// was damaged after it was fetched.
    #[error("model file {path} is damaged: its sha256 is {got}, the pinned one is {want}. Fetch it again with: {command}")]
    ChecksumMismatch {
        /// The damaged file.
        path: PathBuf,
        /// The pinned sha256.
        want: String,
        /// The file's sha256.
        got: String,
        /// The command that replaces it.
        command: String,
    },

    /// A file the loader needs does not exist.
    #[error("file not found: {path}. {fix}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is needed for, or how to get it.
        fix: String,
    },

    /// A file exists but cannot be read as what it claims to be (truncated, corrupt, wrong format).
    #[error("corrupt or truncated file {path}: {detail}. Re-download it (for the embedded models: scripts/fetch-models)")]
    CorruptFile {
        /// The file that cannot be read.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// The checkpoint's architecture has no weight mapping.
    #[error("unsupported architecture '{arch}'. Supported: {supported}")]
    UnsupportedArchitecture {
        /// The architecture named by the checkpoint (`model_type`).
        arch: String,
        /// The architectures that are supported.
        supported: String,
    },

    /// A config field holds a value the forward pass does not implement.
    #[error("unsupported config value {field} = {value}: {fix}")]
    UnsupportedConfig {
        /// The config field.
        field: String,
        /// The value it holds.
        value: String,
        /// The values that are supported, or what to do instead.
        fix: String,
    },

    /// A weight the architecture needs is missing from the checkpoint, or has the wrong shape.
    #[error("weight '{name}' {problem}. The checkpoint does not match its config; re-download it or check the architecture")]
    BadWeight {
        /// The weight's name in the checkpoint.
        name: String,
        /// What is wrong (missing, or its shape and the expected one).
        problem: String,
    },

    /// A hook name that does not parse.
    #[error("unknown hook name '{name}'{hint}. Hook names follow TransformerLens, e.g. 'blocks.0.hook_resid_pre' (`lens inspect --model M` lists them all)")]
    UnknownHook {
        /// The name given.
        name: String,
        /// A " (did you mean ...)" suggestion, or empty.
        hint: String,
    },

    /// A hook point the model's architecture never fires (a hook there would silently never run).
    #[error("this {architecture} model has no hook point {hook}, so a hook or cache filter on it would never run. Its points are (layer 0 shown; every block has the same): {available}")]
    HookNotOnModel {
        /// The hook name given.
        hook: String,
        /// The model's architecture.
        architecture: String,
        /// The points it has.
        available: String,
    },

    /// A layer index beyond the model.
    #[error("layer {layer} is out of range: the model has {n_layers} layers (0..={max})", max = n_layers.saturating_sub(1))]
    LayerOutOfRange {
        /// The layer index given.
        layer: usize,
        /// How many layers the model has.
        n_layers: usize,
    },

    /// A position index beyond the prompt.
    #[error("position {pos} is out of range for a prompt of {len} tokens (0..={max}); negative positions count from the end", max = len.saturating_sub(1))]
    PositionOutOfRange {
        /// The position given (negative counts from the end).
        pos: i64,
        /// The prompt's length in tokens.
        len: usize,
    },

    /// A string expected to be one token is several (or none).
    #[error("'{text}' is {n} tokens ({tokens:?}), not one. Pick a single-token answer, or add/remove the leading space")]
    NotSingleToken {
        /// The string given.
        text: String,
        /// How many tokens it is.
        n: usize,
        /// The tokens it splits into.
        tokens: Vec<String>,
    },

    /// An empty prompt (no tokens to run).
    #[error("the prompt is empty (no tokens). Pass some text, or prepend BOS")]
    EmptyPrompt,

    /// An empty answer (`test_prompt`): nothing to score.
    #[error("the answer is empty (no tokens to score). Pass the text the model should continue with, e.g. \" Paris\"")]
    EmptyAnswer,

    /// A numeric parameter that is NaN, infinite or outside its range (a temperature, β, a
    /// token budget).
    #[error("{name} = {value} is not allowed: {fix}")]
    BadParameter {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// The allowed range.
        fix: String,
    },

    /// A patching metric the corruption does not move: normalised scores
    /// `(patched − corrupted) / (clean − corrupted)` would divide by zero.
    #[error("the corruption does not change the metric (clean {clean}, corrupted {corrupted}), so normalised patching scores would divide by zero. {fix}")]
    NoEffect {
        /// The metric on the clean run.
        clean: f32,
        /// The metric on the corrupted run.
        corrupted: f32,
        /// What to change.
        fix: String,
    },

    /// A prompt longer than the model's context.
    #[error("the prompt has {len} tokens but the model's context is {n_ctx}. Shorten it")]
    PromptTooLong {
        /// The prompt's length in tokens.
        len: usize,
        /// The model's context length.
        n_ctx: usize,
    },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {d_vocab})")]
    TokenOutOfRange {
        /// The token id given.
        id: u32,
        /// The vocabulary size.
        d_vocab: usize,
    },

    /// A hook returned a replacement of the wrong shape.
    #[error("hook on '{hook}' returned shape {got:?}, expected {want:?}. A hook must return a tensor of the activation's shape")]
    HookShape {
        /// The hook point's name.
        hook: String,
        /// The shape the hook returned.
        got: Vec<usize>,
        /// The activation's shape.
        want: Vec<usize>,
    },

    /// An activation that the cache does not hold.
    #[error("the cache has no '{name}'. Run run_with_cache with a filter that includes it (cached: {available})")]
    NotCached {
        /// The hook name asked for.
        name: String,
        /// The names the cache does hold (the first few), or "nothing".
        available: String,
    },

    /// A name that is not one of a fixed set of choices (a patch target, a dtype, a device, a
    /// method, a file format).
    #[error("unknown {what} '{given}'; use {choices}")]
    UnknownChoice {
        /// What kind of name (`"patch target"`, `"dtype"`, ...).
        what: String,
        /// The name given.
        given: String,
        /// The accepted names.
        choices: String,
    },

    /// Inputs that must agree in count or shape do not (answers and prompts, clean and
    /// corrupted prompts, lists aligned by index, vectors and the model).
    #[error("{what} do not match: {detail}")]
    Mismatch {
        /// The inputs that disagree (`"answer pairs and prompts"`).
        what: String,
        /// The counts or shapes, and what they must be.
        detail: String,
    },

    /// An index beyond what it indexes (a prompt of a batch, a head, a pair).
    #[error("{what} {index} is out of range (0..{len})")]
    OutOfRange {
        /// What is indexed (`"head"`, `"prompt"`, `"pair"`).
        what: String,
        /// The index given.
        index: usize,
        /// How many there are.
        len: usize,
    },

    /// Fewer items than a computation needs (training subjects, samples, tokens, pairs).
    #[error("{what}: need at least {need}, got {got}. {fix}")]
    TooFew {
        /// What is counted.
        what: String,
        /// The minimum.
        need: usize,
        /// How many there are.
        got: usize,
        /// What to do about it.
        fix: String,
    },

    /// A call asks for something this model or this input does not have (`resid_mid` of a
    /// parallel-block model, one position of a `Pos::All` stack, a call without an argument
    /// it needs).
    #[error("{what} is not available: {fix}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// Why not, and what to do instead.
        fix: String,
    },

    /// A computation reads each prompt's last real position, but the cache or stack holds no
    /// tokens to find it from.
    #[error("{what} needs the prompt's tokens to find each last position, but none are attached; use an explicit position such as Pos::At(-1), or a cache from run_with_cache")]
    NoTokens {
        /// What needed them.
        what: String,
    },

    /// BOS was asked for but the model's tokenizer has none.
    #[error("this model has no BOS token; call with prepend_bos = Some(false)")]
    NoBosToken,

    /// A device this build or this machine cannot use.
    #[error("cannot use device '{name}': {detail}. Build with `--features {feature}` on a machine with that GPU, or use cpu")]
    Device {
        /// The device asked for (`cuda:0`).
        name: String,
        /// What the back-end said.
        detail: String,
        /// The cargo feature that enables it.
        feature: String,
    },

    /// A prompt template without exactly one `{}` where the subject goes, or none at all.
    #[error("template {template:?}: {detail}")]
    BadTemplate {
        /// The template (empty when there is none).
        template: String,
        /// What is wrong and the fix.
        detail: String,
    },

    /// A dataset whose entries cannot be used as they are (objects that the next token cannot
    /// tell apart, an object with no tokens, lists of different lengths in a file).
    #[error("{what}: {detail}")]
    BadData {
        /// The dataset or file.
        what: String,
        /// What is wrong and the fix.
        detail: String,
    },

    /// A numerical routine failed (an SVD that did not converge).
    #[error("numerical failure in {what}: {detail}. Check the inputs for NaN or infinite values")]
    Numerical {
        /// The routine.
        what: String,
        /// What it reported.
        detail: String,
    },

    /// A run would need more memory than the machine has available (or than
    /// [`set_memory_limit`](crate::engine::runtime::memory::set_memory_limit) allows): refused
    /// before it allocates.
    #[error("{what} would need about {need} of memory beyond the weights, but {available} is available. {fix}")]
    TooMuchMemory {
        /// The run.
        what: String,
        /// Its estimate.
        need: String,
        /// What is available.
        available: String,
        /// What to change.
        fix: String,
    },

    /// Drawing a figure failed.
    #[error("drawing failed: {0}")]
    Drawing(String),

    /// An invariant of Candlelens itself does not hold: a bug, never the caller's input.
    #[error("internal error: {0}. This is a bug in Candlelens; please report it with the model and the call")]
    Internal(String),

    /// An error raised by user code run inside Candlelens (a hook, a metric) to stop the run
    /// with its own message.
    #[error("{0}")]
    Custom(String),

    /// Downloading from the hub failed.
    #[error("hub download of {repo}/{file} failed: {detail}. {fix}")]
    Hub {
        /// The hub repo id.
        repo: String,
        /// The file in the repo.
        file: String,
        /// What the download reported.
        detail: String,
        /// What to do about it.
        fix: String,
    },

    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A tensor operation failed (a bug, or a shape the caller passed). Candle's captured
    /// backtrace (with `RUST_BACKTRACE` set) is dropped so the message stays readable.
    #[error("tensor error: {0}")]
    Candle(candle_core::Error),

    /// An I/O error with the path involved.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A file could not be written (a full disk, a size limit, no write permission); nothing
    /// half-written is left at `path`.
    #[error("cannot write {path}: {source}; {fix}")]
    WriteFailed {
        /// The file being written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
        /// What to do.
        fix: String,
    },

    /// A JSON document that does not parse.
    #[error("invalid JSON in {what}: {detail}")]
    Json {
        /// The document (a file path, or `config.json`).
        what: String,
        /// The parse error, or the field that is missing.
        detail: String,
    },

    /// A piece of text that an analysis needs as one token (an entity, an answer word) is not
    /// a token of its own in the tokenized prompt: split into pieces, or merged with its
    /// neighbours.
    #[error("{what} '{text}' is not a token of its own in prompt {prompt} (its characters fall in the tokens {tokens:?}). {fix}")]
    NotOneToken {
        /// What the text is (`"entity E_0"`, `"attribute A_1"`).
        what: String,
        /// The text.
        text: String,
        /// The prompt's index in the batch.
        prompt: usize,
        /// The tokens its characters fall in.
        tokens: Vec<String>,
        /// How to make it one token.
        fix: String,
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
    /// [`LensError::TooFew`]: `got` of `what` where `need` are needed.
    pub fn too_few(what: &str, need: usize, got: usize, fix: &str) -> Self {
        LensError::TooFew {
            what: what.into(),
            need,
            got,
            fix: fix.into(),
        }
    }

    /// [`LensError::Mismatch`]: `what` do not fit together, as `detail` says.
    pub fn mismatch(what: &str, detail: impl Into<String>) -> Self {
        LensError::Mismatch {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// [`LensError::BadParameter`]: `name = value` is outside what `fix` allows.
    pub fn bad_parameter(name: &str, value: impl std::fmt::Display, fix: &str) -> Self {
        LensError::BadParameter {
            name: name.into(),
            value: value.to_string(),
            fix: fix.into(),
        }
    }

    /// [`LensError::WriteFailed`] with the fix the error's kind calls for.
    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let fix = match source.kind() {
            K::StorageFull | K::FileTooLarge | K::QuotaExceeded => {
                "the disk is full (or the file is over this process's size limit): free space and run again — nothing half-written was left, and a resumable run keeps its complete files"
            }
            K::PermissionDenied | K::ReadOnlyFilesystem => "choose a folder you can write to",
            _ => "check the folder and run again — nothing half-written was left",
        };
        let (path, fix) = (path.into(), fix.into());
        LensError::WriteFailed { path, source, fix }
    }

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

/// Candle errors without the backtrace candle attaches when `RUST_BACKTRACE` is set (it would
/// land in the middle of the message a notebook prints).
impl From<candle_core::Error> for LensError {
    fn from(e: candle_core::Error) -> Self {
        fn strip(e: candle_core::Error) -> candle_core::Error {
            match e {
                candle_core::Error::WithBacktrace { inner, .. } => strip(*inner),
                other => other,
            }
        }
        LensError::Candle(strip(e))
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
    fn candle_backtraces_stay_out_of_the_message() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch in matmul".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(
            LensError::from(e).to_string(),
            "tensor error: shape mismatch in matmul"
        );
    }

    #[test]
    fn debug_is_the_message() {
        let e = LensError::EmptyPrompt;
        assert_eq!(format!("{e:?}"), e.to_string());
    }

    #[test]
    fn bad_arguments_get_their_own_kind() {
        use crate::interp::patching::PatchTarget;
        let e = PatchTarget::parse("resid_pree").unwrap_err();
        assert!(
            matches!(&e, LensError::UnknownChoice { given, .. } if given == "resid_pree"),
            "{e}"
        );
        assert!(e.to_string().contains("resid_pre, resid_mid"), "{e}");
        let e = crate::load::LoadOptions::parse("cpu", "f64").unwrap_err();
        assert!(
            matches!(&e, LensError::UnknownChoice { what, .. } if what == "dtype"),
            "{e}"
        );
        let e = crate::load::LoadOptions::parse("tpu", "f32").unwrap_err();
        assert!(
            matches!(&e, LensError::UnknownChoice { what, .. } if what == "device"),
            "{e}"
        );
        let e = crate::studies::lre::check_template("{} and {}").unwrap_err();
        assert!(matches!(e, LensError::BadTemplate { .. }), "{e}");
        let mut r = crate::util::pyrandom::PyRandom::seed(0);
        let names = vec!["a".to_string(), "b".to_string()];
        let e = crate::studies::binding::sample_prompts(
            &mut r,
            1,
            &names,
            &names,
            crate::studies::binding::Task::Fruit,
            None,
            3,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LensError::TooFew {
                    need: 3,
                    got: 2,
                    ..
                }
            ),
            "{e}"
        );
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
