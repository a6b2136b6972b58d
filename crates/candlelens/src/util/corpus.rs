//! Text corpora for reading a model over many contexts (training an SAE, finding where a
//! feature fires): the embedded `python-docs` corpus that `scripts/fetch-models` writes, any
//! JSONL file of `{"text": ...}` lines, or texts in memory; and the fixed-length token contexts
//! SAELens's activation store cuts from them.

use std::path::{Path, PathBuf};

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// One document of a corpus.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Document {
    /// Its title (empty when the source has none).
    #[serde(default)]
    pub title: String,
    /// Its text.
    pub text: String,
}

/// A named list of documents.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Where it came from.
    pub name: String,
    /// The documents, in order.
    pub documents: Vec<Document>,
}

/// Where `scripts/fetch-models python-docs` writes the embedded corpus.
pub fn python_docs_path() -> PathBuf {
    crate::load::registry::models_dir()
        .join("python-docs")
        .join("topics.jsonl")
}

impl Corpus {
    /// The embedded corpus: the 79 topics of the Python language reference that CPython ships
    /// as `pydoc_data/topics.py` (PSF License), as `scripts/fetch-models python-docs` wrote
    /// them.
    ///
    /// # Errors
    /// [`LensError::MissingFile`] (with the command that fetches it) when it is not on this
    /// machine; as [`Self::from_jsonl`].
    pub fn python_docs() -> Result<Corpus> {
        let path = python_docs_path();
        if !path.exists() {
            return Err(LensError::MissingFile {
                path,
                fix: "Fetch the embedded corpus with: scripts/fetch-models python-docs".into(),
            });
        }
        let mut c = Self::from_jsonl(&path)?;
        c.name = "python-docs (CPython's pydoc topics)".into();
        Ok(c)
    }

    /// Reads a JSONL file: one `{"text": ..., "title": ...}` object per line (`title`
    /// optional; blank lines skipped).
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::Io`]; [`LensError::BadData`] naming the line that
    /// is not such an object, or for a file with no documents.
    pub fn from_jsonl(path: impl AsRef<Path>) -> Result<Corpus> {
        let path = path.as_ref();
        let text = crate::util::fs::read_text(
            path,
            "Pass a JSONL file with one {\"text\": ...} object per line",
        )?;
        let mut documents = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let d: Document = serde_json::from_str(line).map_err(|e| LensError::BadData {
                what: path.display().to_string(),
                detail: format!(
                    "line {} is not a {{\"text\": ...}} object ({e}); write one JSON object per line",
                    i + 1
                ),
            })?;
            documents.push(d);
        }
        Self::from_documents(&path.display().to_string(), documents)
    }

    /// A corpus of texts in memory.
    ///
    /// # Errors
    /// [`LensError::BadData`] for no texts.
    pub fn from_texts<S: AsRef<str>>(name: &str, texts: &[S]) -> Result<Corpus> {
        let documents = texts
            .iter()
            .map(|t| Document {
                title: String::new(),
                text: t.as_ref().to_string(),
            })
            .collect();
        Self::from_documents(name, documents)
    }

    fn from_documents(name: &str, documents: Vec<Document>) -> Result<Corpus> {
        if documents.iter().all(|d| d.text.trim().is_empty()) {
            return Err(LensError::BadData {
                what: name.to_string(),
                detail: "the corpus has no text; give it at least one non-empty document".into(),
            });
        }
        Ok(Corpus {
            name: name.to_string(),
            documents,
        })
    }

    /// Characters over all documents.
    pub fn n_chars(&self) -> usize {
        self.documents.iter().map(|d| d.text.chars().count()).sum()
    }

    /// Contexts of exactly `context_size` tokens, as SAELens's activation store packs them:
    /// the documents are tokenized, joined with the BOS token between them (where the model
    /// has one), and cut into windows of `context_size` tokens — each starting with BOS when
    /// the model's tokenizer prepends one — in document order, at most `max_contexts` of them.
    /// The last, shorter window is dropped.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for a `context_size` below 2 or above the model's context,
    /// or no contexts asked for;
    /// [`LensError::TooFew`] when the corpus fills no window; tokenizer errors.
    pub fn contexts(
        &self,
        model: &HookedTransformer,
        context_size: usize,
        max_contexts: usize,
    ) -> Result<Tokens> {
        let n_ctx = model.cfg.n_ctx;
        if context_size < 2 || context_size > n_ctx {
            return Err(LensError::bad_parameter(
                "context_size",
                context_size,
                &format!("use 2..={n_ctx} tokens per context (SAELens's default is 128)"),
            ));
        }
        if max_contexts == 0 {
            return Err(LensError::bad_parameter(
                "max_contexts",
                "0",
                "ask for at least one context",
            ));
        }
        let tk = model.tokenizer();
        let bos = tk.bos_token_id;
        let begin = if tk.add_bos_by_default { bos } else { None };
        let width = context_size - usize::from(begin.is_some());
        let mut rows = Vec::new();
        let mut window: Vec<u32> = Vec::with_capacity(width);
        'docs: for (i, d) in self.documents.iter().enumerate() {
            let mut ids = Vec::new();
            if i > 0 {
                ids.extend(bos);
            }
            ids.extend(tk.encode(&d.text)?);
            for id in ids {
                window.push(id);
                if window.len() == width {
                    if rows.len() == max_contexts {
                        break 'docs;
                    }
                    let mut row = Vec::with_capacity(context_size);
                    row.extend(begin);
                    row.append(&mut window);
                    rows.push(row);
                }
            }
        }
        if rows.is_empty() {
            return Err(LensError::too_few(
                &format!("tokens in the corpus {}", self.name),
                width,
                window.len(),
                "use a shorter context_size or a larger corpus",
            ));
        }
        let t = Tokens::new(rows, model.cfg.pad_token_id)?;
        Ok(t)
    }
}
