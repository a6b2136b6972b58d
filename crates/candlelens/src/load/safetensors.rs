//! A Hugging Face checkpoint folder: `config.json`, `*.safetensors` (single or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`. Weights are memory-mapped and each
//! tensor is converted once into the compute dtype, so no second full copy is held.

use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::error::{LensError, Result};
use crate::weights::TensorSource;

/// Memory-mapped safetensors shards, read by tensor name.
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    desc: String,
}

impl SafetensorsSource {
    /// Maps the files.
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::CorruptFile`].
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        for p in paths {
            if !p.exists() {
                return Err(LensError::MissingFile {
                    path: p.clone(),
                    fix: "A shard listed in model.safetensors.index.json is missing; re-download the checkpoint".into(),
                });
            }
        }
        // SAFETY: the files are mapped read-only; as with every mmap-based loader, they must
        // not be truncated or rewritten while the model is loading.
        let st =
            unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| LensError::CorruptFile {
                path: paths.first().cloned().unwrap_or_default(),
                detail: e.to_string(),
            })?;
        Ok(SafetensorsSource {
            st,
            desc: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

impl TensorSource for SafetensorsSource {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        let view = match self.st.get(name) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let t = view.load(&Device::Cpu).map_err(|e| match e {
            candle_core::Error::UnsupportedSafeTensorDtype(dt) => LensError::UnsupportedConfig {
                field: format!("dtype of {name}"),
                value: format!("{dt:?}"),
                fix: "supported checkpoint dtypes: f32, f16, bf16, f64".into(),
            },
            other => LensError::CorruptFile {
                path: PathBuf::from(&self.desc),
                detail: format!("tensor {name}: {other}"),
            },
        })?;
        Ok(Some(t.to_dtype(DType::F32)?))
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }
}

/// The safetensors files of a checkpoint folder.
///
/// # Errors
/// [`LensError::MissingFile`] when there are none, [`LensError::Json`] for a bad index.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| LensError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LensError::Json {
            what: index.display().to_string(),
            detail: e.to_string(),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| LensError::Json {
                what: index.display().to_string(),
                detail: "no weight_map".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(LensError::MissingFile {
        path: single,
        fix: "A checkpoint folder needs model.safetensors or model.safetensors.index.json with its shards".into(),
    })
}
