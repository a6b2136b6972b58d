//! Loading a model from a name: an alias, a local folder, a `.gguf` file, or a hub repo id.

pub mod arch;
pub mod gguf;
mod guard;
pub mod hub;
mod layers;
pub(crate) use layers::check_layers;
pub mod processing;
pub mod registry;
pub mod safetensors;
pub mod verify;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokenizer::LensTokenizer;
use crate::error::{did_you_mean, LensError, Result};
use crate::load::arch::{config_from_hf, load_weights, Family};
pub use processing::Processing;
use registry::Source;

/// How to load: device, compute dtype and weight processing.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where the weights live and the forward runs (CPU by default).
    pub device: Device,
    /// Compute dtype; f32 by default (bf16/f16 checkpoints are converted on load).
    pub dtype: DType,
    /// TransformerLens's weight processing ([`Processing::NONE`] by default: the checkpoint's
    /// own weights; [`Processing::transformer_lens_defaults`] for what TransformerLens's
    /// `from_pretrained` does).
    pub processing: Processing,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            processing: Processing::NONE,
        }
    }
}

impl LoadOptions {
    /// Options from the names a user types: device `cpu`, `cuda`, `cuda:N`, `metal`; dtype
    /// `f32`, `bf16`, `f16`.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for an unknown name, [`LensError::Device`] for a GPU this build
    /// or machine lacks.
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        Ok(LoadOptions {
            processing: Processing::NONE,
            device: parse_device(device)?,
            dtype: match dtype {
                "f32" | "float32" => DType::F32,
                "bf16" | "bfloat16" => DType::BF16,
                "f16" | "float16" => DType::F16,
                other => {
                    return Err(LensError::UnknownChoice {
                        what: "dtype".into(),
                        given: other.to_string(),
                        choices: "f32 (default), bf16 or f16".into(),
                    })
                }
            },
        })
    }
}

/// A device from its name: `cpu`, `cuda` / `cuda:N`, `metal` / `metal:N`.
///
/// # Errors
/// [`LensError::UnknownChoice`] for an unknown name, [`LensError::Device`] naming the fix (build
/// with `--features cuda` / `metal`).
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>().map_err(|_| LensError::UnknownChoice {
                what: "device".into(),
                given: name.to_string(),
                choices: "cpu, cuda, cuda:N (N a number, e.g. cuda:0) or metal".into(),
            })?,
        ),
        None => (name, 0),
    };
    let gpu = |r: candle_core::Result<Device>, feature: &str| {
        r.map_err(|e| LensError::Device {
            name: name.to_string(),
            detail: e.to_string(),
            feature: feature.to_string(),
        })
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => gpu(Device::new_cuda(ordinal), "cuda"),
        "metal" => gpu(Device::new_metal(ordinal), "metal"),
        other => Err(LensError::UnknownChoice {
            what: "device".into(),
            given: other.to_string(),
            choices: "cpu, cuda, cuda:N or metal".into(),
        }),
    }
}

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A local checkpoint folder.
    Folder(PathBuf),
    /// A hub repository id, at a revision (branch, tag or commit; `None`: `main`).
    Hub {
        /// `owner/name`.
        repo: String,
        /// What followed `@` in the name (`"step3000"` in `pythia-70m@step3000`).
        revision: Option<String>,
    },
}

/// Resolves a model name without loading anything.
///
/// # Errors
/// [`LensError::ModelNotFetched`] for an embedded model whose file is absent,
/// [`LensError::ChecksumMismatch`] for one whose file differs from its pinned sha256,
/// [`LensError::UnknownModel`] with a did-you-mean for anything else unrecognised.
pub fn resolve(name: &str) -> Result<Resolved> {
    resolve_in(name, &registry::models_dir())
}

/// [`resolve`] with an explicit folder for the embedded models.
///
/// # Errors
/// As [`resolve`].
pub fn resolve_in(name: &str, models_dir: &Path) -> Result<Resolved> {
    // `alias@revision` / `owner/name@revision`: a hub model at a branch, tag or commit
    if let Some((base, rev)) = name.rsplit_once('@').filter(|_| !Path::new(name).exists()) {
        let valid = !rev.is_empty()
            && rev
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid {
            return Err(LensError::bad_parameter("revision", rev, &format!("write the model as NAME@REVISION with a branch, tag or commit after '@' (e.g. pythia-70m@step3000); got '{name}'")));
        }
        return match resolve_in(base, models_dir)? {
            Resolved::Hub { repo, .. } => Ok(Resolved::Hub {
                repo,
                revision: Some(rev.to_string()),
            }),
            _ => Err(LensError::BadParameter {
                name: "revision".into(),
                value: rev.to_string(),
                fix: format!(
                    "'{base}' is a local or embedded model; only hub models have revisions"
                ),
            }),
        };
    }
    if let Some(e) = registry::lookup(name) {
        return match e.source {
            Source::Embedded { dir, file, sha256 } => {
                let path = models_dir.join(dir).join(file);
                if path.exists() {
                    verify::check_pinned(&path, sha256, e.alias)?;
                    Ok(Resolved::Gguf(path))
                } else {
                    Err(LensError::ModelNotFetched {
                        alias: e.alias.to_string(),
                        path,
                        command: format!("scripts/fetch-models {}", e.alias),
                    })
                }
            }
            Source::Hub { repo } => Ok(Resolved::Hub {
                repo: repo.to_string(),
                revision: None,
            }),
        };
    }
    let path = Path::new(name);
    if path.is_file() {
        return if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        {
            Ok(Resolved::Gguf(path.to_path_buf()))
        } else {
            Err(LensError::UnknownModel {
                name: name.into(),
                hint: " (a file that is not .gguf)".into(),
            })
        };
    }
    if path.is_dir() {
        if path.join("config.json").exists() {
            return Ok(Resolved::Folder(path.to_path_buf()));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| LensError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        if ggufs.len() == 1 {
            return Ok(Resolved::Gguf(ggufs[0].clone()));
        }
        return Err(LensError::MissingFile {
            path: path.join("config.json"),
            fix: "A model folder needs config.json + safetensors + tokenizer.json, or exactly one .gguf file".into(),
        });
    }
    // a name written as a path (./x, ../x, /abs, ~/x, or a model file's extension) that is not
    // there is a missing file, not an unknown model or a hub id
    let file_like = [".gguf", ".safetensors", ".json", ".bin", ".pt"]
        .iter()
        .any(|ext| name.to_ascii_lowercase().ends_with(ext));
    if file_like || ["./", "../", "/", "~"].iter().any(|p| name.starts_with(p)) || name == "." {
        return Err(LensError::MissingFile {
            path: path.to_path_buf(),
            fix: "no such file or folder: check the path (a model is a .gguf file, or a folder with config.json + safetensors + tokenizer.json; `~` is not expanded)".into(),
        });
    }
    let looks_like_repo = name.split('/').count() == 2
        && !name.starts_with('.')
        && !name.starts_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if looks_like_repo {
        return Ok(Resolved::Hub {
            repo: name.to_string(),
            revision: None,
        });
    }
    Err(LensError::UnknownModel {
        name: name.into(),
        hint: did_you_mean(name, registry::REGISTRY.iter().map(|e| e.alias)),
    })
}

/// GPT-2's tokenizer from the files `scripts/fetch-models gpt2-tokenizer` installs (offline).
///
/// # Errors
/// [`LensError::MissingFile`] naming the fetch command.
pub fn gpt2_tokenizer() -> Result<LensTokenizer> {
    let dir = registry::models_dir().join("gpt2-tokenizer");
    crate::engine::text::tokenizer::gpt2_from_files(
        &dir.join("encoder.json"),
        &dir.join("vocab.bpe"),
    )
}

impl HookedTransformer {
    /// Loads a model by alias (`"smollm2-135m"`), local folder, `.gguf` path or hub repo id,
    /// on the CPU in f32.
    ///
    /// # Errors
    /// See [`resolve`]; missing, corrupt or unsupported checkpoints; hub errors.
    pub fn from_pretrained(name: &str) -> Result<Self> {
        Self::from_pretrained_with(name, &LoadOptions::default())
    }

    /// [`Self::from_pretrained`], said explicitly: the checkpoint's weights as they are, with
    /// no TransformerLens processing (TransformerLens's `from_pretrained_no_processing`; our
    /// `from_pretrained` never processes unless [`LoadOptions::processing`] asks).
    ///
    /// # Errors
    /// As [`Self::from_pretrained`].
    pub fn from_pretrained_no_processing(name: &str) -> Result<Self> {
        Self::from_pretrained(name)
    }

    /// [`Self::from_pretrained`] with a device, dtype and weight processing.
    ///
    /// # Errors
    /// As [`Self::from_pretrained`]; as [`Self::process_weights`] for processing the model
    /// cannot take.
    pub fn from_pretrained_with(name: &str, opts: &LoadOptions) -> Result<Self> {
        let mut model = Self::load_unprocessed(name, opts)?;
        if !opts.processing.is_none() {
            model.process_weights(opts.processing)?;
        }
        Ok(model)
    }

    /// TransformerLens's `process_weights_`: applies the steps `p` asks for to the loaded
    /// weights (see [`processing`] for what each does) and returns the steps applied — with
    /// [`Processing::skip_inapplicable`], those this model can take; `cfg.processing` records
    /// every step applied so far. The next-token distribution is unchanged (tested against
    /// TransformerLens 3.9's processed weights, logits and attributions).
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a step the model cannot take or has nothing for (without
    /// `skip_inapplicable`): centring writing weights under RMSNorm, centring the unembedding
    /// under a final-logit softcap, folding value biases the model does not have, folding a
    /// LayerNorm's bias into a gate or router that has none.
    pub fn process_weights(&mut self, p: Processing) -> Result<Processing> {
        processing::process(&mut self.cfg, &mut self.weights, p)
    }

    fn load_unprocessed(name: &str, opts: &LoadOptions) -> Result<Self> {
        let display = registry::lookup(name).map_or(name, |e| e.alias);
        match resolve(name)? {
            Resolved::Gguf(path) => {
                let (cfg, w, tok) = gguf::load(&path, display, opts.dtype, &opts.device)?;
                HookedTransformer::from_parts(cfg, w, tok, opts.device.clone())
            }
            Resolved::Folder(dir) => {
                let files = FolderFiles {
                    config: dir.join("config.json"),
                    tokenizer: dir.join("tokenizer.json"),
                    shards: safetensors::shard_paths(&dir)?,
                };
                load_folder(&files, display, opts)
            }
            Resolved::Hub { repo, revision } => {
                let hub = hub::HubRepo::at_revision(&repo, revision.as_deref())?;
                let config = hub.get("config.json")?;
                let tokenizer = hub.get("tokenizer.json")?;
                let shards = match hub.get("model.safetensors.index.json") {
                    Ok(index) => {
                        let dir = index.parent().map(Path::to_path_buf).unwrap_or_default();
                        let names = safetensors::shard_paths(&dir)?;
                        names
                            .iter()
                            .map(|p| {
                                let f = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
                                hub.get(f)
                            })
                            .collect::<Result<Vec<_>>>()?
                    }
                    Err(_) => vec![hub.get("model.safetensors")?],
                };
                load_folder(
                    &FolderFiles {
                        config,
                        tokenizer,
                        shards,
                    },
                    display,
                    opts,
                )
                .map_err(in_hub_cache)
            }
        }
    }
}

/// A damaged file inside the Hugging Face cache: name the repo's cache folder to delete, since
/// the hub client trusts a cached file and would hand back the same bytes.
fn in_hub_cache(e: LensError) -> LensError {
    match e {
        LensError::CorruptFile { path, detail } => {
            let folder = path.ancestors().find(|a| {
                a.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--"))
            });
            let detail = match folder {
                Some(f) => format!(
                    "{detail}; it is in the Hugging Face cache, which would serve the same bytes again: delete {} and load the model again to re-download it",
                    f.display()
                ),
                None => detail,
            };
            LensError::CorruptFile { path, detail }
        }
        other => other,
    }
}

struct FolderFiles {
    config: PathBuf,
    tokenizer: PathBuf,
    shards: Vec<PathBuf>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    crate::util::fs::read_json(path, "The checkpoint folder needs this file")
}

fn load_folder(files: &FolderFiles, name: &str, opts: &LoadOptions) -> Result<HookedTransformer> {
    let json = read_json(&files.config)?;
    let (family, mut cfg) = config_from_hf(&json, name)?;
    let tok = LensTokenizer::from_file(&files.tokenizer, cfg.bos_token_id, false)?;
    // The tokenizer's own post-processor says whether it adds BOS; the GPT-2-tokenizer families
    // (and OLMo 2's) follow TransformerLens, which prepends <|endoftext|> although their
    // tokenizers do not.
    let probe = tok
        .inner()
        .encode("a", true)
        .map_err(|e| LensError::Tokenizer(e.to_string()))?;
    cfg.hf_prepends_bos = cfg
        .bos_token_id
        .is_some_and(|b| probe.get_ids().first() == Some(&b));
    let adds_bos = matches!(
        family,
        Family::Gpt2
            | Family::GptJ
            | Family::GptNeo
            | Family::GptNeoX
            | Family::Phi
            | Family::Olmo2
    ) || cfg.hf_prepends_bos;
    cfg.default_prepend_bos = adds_bos;
    let tok = LensTokenizer::new(tok.inner().clone(), cfg.bos_token_id, adds_bos);
    let mut src = safetensors::SafetensorsSource::open(&files.shards, opts.dtype)?;
    check_layers(src.names().map(String::as_str), cfg.n_layers)?;
    let w = load_weights(family, &cfg, &mut src, opts.dtype, &opts.device)?;
    HookedTransformer::from_parts(cfg, w, tok, opts.device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_say_file_not_found() {
        for name in [
            "models/nope.gguf",
            "./x",
            "/abs/y",
            "nope.safetensors",
            "~/m",
        ] {
            let e = resolve(name).unwrap_err();
            assert!(matches!(e, LensError::MissingFile { .. }), "{name}: {e}");
            assert!(e.to_string().contains("no such file"), "{name}: {e}");
        }
        // a hub id still goes to the hub
        assert!(matches!(resolve("owner/name"), Ok(Resolved::Hub { .. })));
    }

    #[test]
    fn unknown_names_get_a_suggestion() {
        let e = resolve("smollm2-135").unwrap_err();
        assert!(e.to_string().contains("did you mean 'smollm2-135m'"), "{e}");
        assert!(matches!(
            resolve("???"),
            Err(LensError::UnknownModel { .. })
        ));
    }

    #[test]
    fn devices_and_dtypes_parse() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda")
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
        assert_eq!(
            LoadOptions::parse("cpu", "bf16").unwrap().dtype,
            DType::BF16
        );
        assert!(LoadOptions::parse("cpu", "int8").is_err());
    }

    #[test]
    fn repo_ids_go_to_the_hub() {
        assert_eq!(
            resolve("google/gemma-3-270m").unwrap(),
            Resolved::Hub {
                repo: "google/gemma-3-270m".into(),
                revision: None
            }
        );
    }

    #[test]
    fn missing_embedded_model_names_the_fetch_command() {
        let dir = std::env::temp_dir().join("candlelens-empty-models-dir");
        let msg = resolve_in("gemma-3-270m", &dir).unwrap_err().to_string();
        assert!(msg.contains("scripts/fetch-models gemma-3-270m"), "{msg}");
    }

    #[test]
    fn a_damaged_embedded_model_is_named_before_it_loads() {
        let dir = std::env::temp_dir().join(format!("candlelens-damaged-{}", std::process::id()));
        let model = dir.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::write(&model, b"GGUF and then not much").unwrap();
        let err = resolve_in("smollm2-135m", &dir).unwrap_err();
        assert!(matches!(err, LensError::ChecksumMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("scripts/fetch-models smollm2-135m"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pinned_hashes_agree_with_fetch_models() {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-models"),
        )
        .unwrap();
        for e in registry::REGISTRY {
            if let Source::Embedded { sha256, .. } = e.source {
                assert!(
                    script.contains(&format!("_SHA={sha256}")),
                    "{}: pinned hash {sha256} is not the one scripts/fetch-models checks",
                    e.alias
                );
            }
        }
    }

    #[test]
    fn a_damaged_file_in_the_hub_cache_names_the_folder_to_delete() {
        let path =
            PathBuf::from("/h/hub/models--openai-community--gpt2/snapshots/abc/model.safetensors");
        let e = in_hub_cache(LensError::CorruptFile {
            path,
            detail: "header length 9 does not fit".into(),
        });
        let msg = e.to_string();
        assert!(
            msg.contains("delete /h/hub/models--openai-community--gpt2 and load"),
            "{msg}"
        );
        // elsewhere the message is unchanged
        let e = in_hub_cache(LensError::CorruptFile {
            path: PathBuf::from("/data/m/model.safetensors"),
            detail: "x".into(),
        });
        assert!(!e.to_string().contains("Hugging Face cache"), "{e}");
    }

    #[test]
    fn a_revision_after_at_selects_a_hub_branch() {
        assert_eq!(
            resolve("pythia-70m@step3000").unwrap(),
            Resolved::Hub {
                repo: "EleutherAI/pythia-70m".into(),
                revision: Some("step3000".into())
            }
        );
        assert_eq!(
            resolve("owner/name@v1.0").unwrap(),
            Resolved::Hub {
                repo: "owner/name".into(),
                revision: Some("v1.0".into())
            }
        );
        for bad in ["pythia-70m@", "pythia-70m@a b", "smollm2-135m@step1"] {
            let e = resolve(bad).unwrap_err();
            assert!(matches!(e, LensError::BadParameter { .. }), "{bad}: {e}");
        }
    }
}
