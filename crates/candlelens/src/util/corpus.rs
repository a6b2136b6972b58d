//! Text corpora for reading a model over many contexts (training an SAE, finding where a
//! feature fires): the embedded `python-docs` corpus that `scripts/fetch-models` writes, any
//! JSONL file of `{"text": ...}` lines, a plain-text file (one document per line, paragraph or
//! file, as Hugging Face `datasets`' text loader cuts it), or texts in memory; and the
//! fixed-length token contexts SAELens's activation store cuts from them.

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

/// How a plain-text file is cut into documents: Hugging Face `datasets`' `load_dataset("text",
/// sample_by=...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SampleBy {
    /// One document per line (`datasets`' default).
    #[default]
    Line,
    /// One document per paragraph: lines up to a blank line.
    Paragraph,
    /// The whole file, one document.
    Document,
}

impl SampleBy {
    /// `line`, `paragraph` or `document`.
    pub fn name(self) -> &'static str {
        match self {
            SampleBy::Line => "line",
            SampleBy::Paragraph => "paragraph",
            SampleBy::Document => "document",
        }
    }
}

impl std::str::FromStr for SampleBy {
    type Err = LensError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "line" => Ok(SampleBy::Line),
            "paragraph" => Ok(SampleBy::Paragraph),
            "document" => Ok(SampleBy::Document),
            other => Err(LensError::bad_parameter(
                "sample_by",
                other,
                "give line, paragraph or document",
            )),
        }
    }
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

    /// Reads a plain-text (UTF-8) file cut into documents by `sample_by`: each line, each
    /// paragraph (lines up to a blank line, joined with their line breaks), or the whole file.
    /// Blank documents are skipped; line ends (`\n` or `\r\n`) are not part of a line's text,
    /// as in `datasets` (`keep_linebreaks=False`).
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::Io`] (including a file that is not UTF-8);
    /// [`LensError::BadData`] for a file with no text.
    pub fn from_text_file(path: impl AsRef<Path>, sample_by: SampleBy) -> Result<Corpus> {
        let path = path.as_ref();
        let text = crate::util::fs::read_text(path, "Pass a UTF-8 text file")?;
        let texts: Vec<String> = match sample_by {
            SampleBy::Line => text.lines().map(str::to_string).collect(),
            SampleBy::Paragraph => {
                let mut out = vec![String::new()];
                for line in text.lines() {
                    if line.trim().is_empty() {
                        out.push(String::new());
                    } else {
                        let p = out.last_mut().expect("one paragraph at least");
                        if !p.is_empty() {
                            p.push('\n');
                        }
                        p.push_str(line);
                    }
                }
                out
            }
            SampleBy::Document => vec![text.clone()],
        };
        let texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
        // the cut is part of the name: a dataset's plan tells two cuts of one file apart
        let name = format!("{} (text, by {})", path.display(), sample_by.name());
        Self::from_texts(&name, &texts)
    }

    /// The corpus a command line names: `python-docs` (the embedded corpus), a `.jsonl` file
    /// ([`Self::from_jsonl`]), or any other file as plain text ([`Self::from_text_file`]).
    ///
    /// # Errors
    /// As those readers.
    pub fn from_name(name: &str, sample_by: SampleBy) -> Result<Corpus> {
        if name == "python-docs" {
            Self::python_docs()
        } else if name.ends_with(".jsonl") {
            Self::from_jsonl(name)
        } else {
            Self::from_text_file(name, sample_by)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(c: &Corpus) -> Vec<&str> {
        c.documents.iter().map(|d| d.text.as_str()).collect()
    }

    #[test]
    fn text_files_are_cut_as_datasets_cuts_them() {
        let dir = std::env::temp_dir().join(format!("candlelens-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.txt");
        std::fs::write(&f, "one\r\ntwo\n\n  \nthree\nfour\n").unwrap();
        let by = |s: &str| Corpus::from_text_file(&f, s.parse().unwrap()).unwrap();
        assert_eq!(texts(&by("line")), ["one", "two", "three", "four"]);
        assert_eq!(texts(&by("paragraph")), ["one\ntwo", "three\nfour"]);
        assert_eq!(texts(&by("document")), ["one\r\ntwo\n\n  \nthree\nfour\n"]);
        assert!(by("line").name.ends_with("(text, by line)"));
        assert!("sentence".parse::<SampleBy>().is_err());
        std::fs::write(&f, "\n \n").unwrap();
        let e = Corpus::from_text_file(&f, SampleBy::Line).unwrap_err();
        assert!(matches!(e, LensError::BadData { .. }), "{e:?}");
        std::fs::write(&f, [0xffu8, 0xfe, 0x00]).unwrap();
        assert!(Corpus::from_text_file(&f, SampleBy::Line).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
