//! The source's five per-model LRE notebooks (seed 001, `lre-experiment`): which model each
//! ran, the modules it tested and what it printed. One notebook (`notebooks/lre.rs`) reproduces
//! any of them; `scripts/run-notebooks` runs it once per entry, writing `reports/lre-<name>.html`.

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
}

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
