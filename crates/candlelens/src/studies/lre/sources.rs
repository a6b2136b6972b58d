//! The source's five per-model LRE notebooks (seed 001, `lre-experiment`): which model each
//! ran, the modules it tested and what it printed. One notebook (`notebooks/lre.rs`) reproduces
//! any of them; `scripts/run-notebooks` runs it once per entry, writing `reports/lre-<name>.html`.

use std::path::Path;

use serde::Deserialize;

use super::eval::{source_match, LreEval};
use crate::error::{LensError, Result};

/// One of the source's per-model notebooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceNotebook {
    /// Its short name (`gpt2`, `gpt2-xl`, `llama-3.2-1b`, `qwen3-0.6b`, `gemma3-270m`): the
    /// notebook `lre-<name>.ipynb` of the source and the report `reports/lre-<name>.html`.
    pub name: &'static str,
    /// The model it ran, in words.
    pub title: &'static str,
    /// What the source says of it (or what differs from its README).
    pub about: &'static str,
    /// The model to load in source mode (an alias or hub id).
    pub model: &'static str,
    /// The embedded model that stands in for it offline.
    pub standin: &'static str,
    /// The modules whose outputs it read `h` from (`blocks.{l}.hook_resid_post`).
    pub modules: [&'static str; 3],
    /// The model's depth, to scale the modules to a stand-in of another depth.
    pub n_layers: usize,
    /// The held-out counts it printed at the three modules (prompt's last token).
    pub held_out_counts: &'static str,
    /// Its second template, [`ALT_TEMPLATE`], run at this module (the middle one).
    pub alt_module: &'static str,
    /// The held-out count it printed with the second template.
    pub alt_count: &'static str,
    /// Its per-subject tables, as `data/lre-source/<name>.json` holds them, when they were
    /// transcribed ([`SourceTable`]).
    pub table: Option<&'static str>,
}

/// The source's first template (its notebooks' `TEMPLATE`).
pub const TEMPLATE: &str = "{} students are typically";

/// The source's second template (its notebooks' `ALT_TEMPLATE`).
pub const ALT_TEMPLATE: &str = "Most {} majors are";

/// The environment variable that picks which of the source's notebooks `notebooks/lre.rs`
/// reproduces.
pub const SOURCE_VAR: &str = "CANDLELENS_LRE_MODEL";

/// The source's five notebooks, in its README's order.
pub const SOURCE_NOTEBOOKS: [SourceNotebook; 5] = [
    SourceNotebook {
        name: "gpt2",
        title: "GPT-2 (124M, 12 layers)",
        about: "The source's lightweight variant: faster, good for limited hardware.",
        model: "gpt2",
        standin: "smollm2-135m",
        modules: ["transformer.h.3", "transformer.h.6", "transformer.h.9"],
        n_layers: 12,
        held_out_counts: "10/16, 6/16, 7/16",
        alt_module: "transformer.h.6",
        alt_count: "13/16",
        table: None,
    },
    SourceNotebook {
        name: "gpt2-xl",
        title: "GPT-2-XL (1.5B, 48 layers)",
        about: "The source's recommended starting point; its README's example run (`transformer.h.15`) prints `Faithfulness: 28/38 (73.68%)`.",
        model: "gpt2-xl",
        standin: "smollm2-135m",
        modules: ["transformer.h.5", "transformer.h.15", "transformer.h.35"],
        n_layers: 48,
        held_out_counts: "11/16, 11/16, 14/16",
        alt_module: "transformer.h.15",
        alt_count: "11/16",
        table: None,
    },
    SourceNotebook {
        name: "llama-3.2-1b",
        title: "Llama 3.2 1B",
        about: "A modern architecture for comparison (RMSNorm, SwiGLU, grouped-query attention, RoPE).",
        model: "llama-3.2-1b",
        standin: "smollm2-135m",
        modules: ["model.layers.5", "model.layers.10", "model.layers.15"],
        n_layers: 16,
        held_out_counts: "14/16, 14/16, 15/16",
        alt_module: "model.layers.15",
        alt_count: "13/16",
        table: None,
    },
    SourceNotebook {
        name: "qwen3-0.6b",
        title: "Qwen3 0.6B",
        about: "The source's README calls this notebook \"Qwen 2.5 (0.6B)\"; its file name and the model are Qwen3 0.6B, which is what runs here.",
        model: "qwen3-0.6b",
        standin: "smollm2-135m",
        modules: ["model.layers.5", "model.layers.15", "model.layers.25"],
        n_layers: 28,
        held_out_counts: "11/16, 13/16, 12/16",
        alt_module: "model.layers.15",
        alt_count: "10/16",
        table: None,
    },
    SourceNotebook {
        name: "gemma3-270m",
        title: "Gemma 3 270M",
        about: "The source's README calls this notebook \"Gemma 2 (2.6B)\"; its file name and the model are Gemma 3 270M — here the embedded GGUF of that very model runs offline.",
        model: "gemma-3-270m-hf",
        standin: "gemma-3-270m",
        modules: ["model.layers.5", "model.layers.10", "model.layers.15"],
        n_layers: 18,
        held_out_counts: "11/16, 12/16, 10/16",
        alt_module: "model.layers.15",
        alt_count: "14/16",
        table: Some("lre-source/gemma3-270m.json"),
    },
];

impl SourceNotebook {
    /// The source's notebook called `name`.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] listing the five names.
    pub fn named(name: &str) -> Result<&'static SourceNotebook> {
        SOURCE_NOTEBOOKS
            .iter()
            .find(|s| s.name == name.trim())
            .ok_or_else(|| LensError::UnknownChoice {
                what: format!("LRE source notebook ({SOURCE_VAR})"),
                given: name.to_string(),
                choices: SOURCE_NOTEBOOKS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The notebook `CANDLELENS_LRE_MODEL` names, or `default` when it is unset.
    ///
    /// # Errors
    /// As [`Self::named`], for either name.
    pub fn from_env(default: &str) -> Result<&'static SourceNotebook> {
        match std::env::var(SOURCE_VAR) {
            Ok(name) if !name.trim().is_empty() => Self::named(&name),
            _ => Self::named(default),
        }
    }

    /// A paragraph naming the source notebook, its model and the stand-in that runs offline.
    pub fn describe(&self) -> String {
        format!(
            "Reproducing the source's notebook `lre-{}.ipynb`: {}. {}\nOffline the embedded `{}` stands in; \
             CANDLELENS_MODEL_SET=source loads `{}` from the hub. Another of the source's notebooks: set {SOURCE_VAR} to one of {}.",
            self.name,
            self.title,
            self.about,
            self.standin,
            self.model,
            SOURCE_NOTEBOOKS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        )
    }
}

/// One row of the source's printed table.
#[derive(Clone, Debug, Deserialize)]
pub struct SourceRow {
    /// The held-out subject.
    pub subject: String,
    /// The dataset's object.
    pub expected: String,
    /// The word the source printed as `LRE Pred`.
    pub predicted: String,
    /// Its ✓ or ✗.
    pub correct: bool,
}

/// One evaluation the source printed: a module, a template and a row per held-out subject.
#[derive(Clone, Debug, Deserialize)]
pub struct SourceEvaluation {
    /// The module `h` was read from (`model.layers.5`).
    pub module: String,
    /// The template.
    pub template: String,
    /// The count it printed (`11/16`).
    pub printed_score: String,
    /// One per held-out subject, in its order.
    pub rows: Vec<SourceRow>,
}

/// The source's per-subject tables of one notebook, transcribed from its printed outputs
/// (`data/lre-source/<name>.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct SourceTable {
    /// The repository and commit the notebook was read at.
    pub source: String,
    /// The notebook's file.
    pub notebook: String,
    /// The held-out subjects, in the source's order.
    pub test_subjects: Vec<String>,
    /// Every evaluation it printed.
    pub evaluations: Vec<SourceEvaluation>,
}

/// Our evaluation set beside the source's, subject by subject.
#[derive(Clone, Debug)]
pub struct SourceComparison {
    /// Subjects whose predicted word is the source's.
    pub agree: usize,
    /// Subjects compared.
    pub n: usize,
    /// The source's count (its ✓).
    pub source_correct: usize,
    /// Ours, by the same rule.
    pub ours_correct: usize,
    /// The two tables side by side.
    pub table: String,
}

impl SourceTable {
    /// Reads a transcribed table.
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::Json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<SourceTable> {
        let path = path.as_ref();
        let json = crate::util::fs::read_json(path, "the source's tables are in data/lre-source/")?;
        serde_json::from_value(json).map_err(|e| LensError::Json {
            what: path.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// The evaluation at `module` with `template`.
    pub fn find(&self, module: &str, template: &str) -> Option<&SourceEvaluation> {
        self.evaluations
            .iter()
            .find(|e| e.module == module && e.template == template)
    }
}

impl SourceEvaluation {
    /// Compares `ours` (the same subjects, `h` at the prompt's last token) with the source's
    /// rows: the predicted word (our operator's top token over the vocabulary, stripped) against
    /// the one it printed, and the two counts by its rule.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when a source subject is not among ours (another split or data
    /// file).
    pub fn compare(&self, ours: &LreEval) -> Result<SourceComparison> {
        let mut table = format!(
            "{:<24}| {:<9}| {:<16}| {:<16}| same\n",
            "Subject", "Expected", "source LRE Pred", "ours"
        );
        let (mut agree, mut source_correct, mut ours_correct) = (0, 0, 0);
        for row in &self.rows {
            let p = ours
                .predictions
                .iter()
                .find(|p| p.subject == row.subject)
                .ok_or_else(|| {
                    LensError::mismatch(
                        "the source's table",
                        format!(
                            "its subject {:?} is not among ours; use the source's data file and split (data/data_sample.json, seed 42)",
                            row.subject
                        ),
                    )
                })?;
            let word = p.lre_vocab_top1.trim();
            let (same, ours_ok) = (
                word == row.predicted.trim(),
                source_match(word, &row.expected),
            );
            let mark = |ok: bool| if ok { "✓" } else { "✗" };
            agree += usize::from(same);
            source_correct += usize::from(row.correct);
            ours_correct += usize::from(ours_ok);
            table += &format!(
                "{:<24}| {:<9}| {:<14}{} | {:<14}{} | {}\n",
                row.subject,
                row.expected,
                row.predicted,
                mark(row.correct),
                word,
                mark(ours_ok),
                if same { "=" } else { "≠" }
            );
        }
        Ok(SourceComparison {
            agree,
            n: self.rows.len(),
            source_correct,
            ours_correct,
            table,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_unknown_ones_list_the_choices() {
        assert_eq!(SourceNotebook::named("gpt2-xl").unwrap().n_layers, 48);
        let err = SourceNotebook::named("gpt3").unwrap_err().to_string();
        assert!(err.contains("gemma3-270m"), "{err}");
        for s in &SOURCE_NOTEBOOKS {
            assert!(s.modules.iter().all(|m| m.ends_with(char::is_numeric)));
        }
    }
}
