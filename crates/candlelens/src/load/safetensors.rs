//! A Hugging Face checkpoint folder: `config.json`, `*.safetensors` (single or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`.
//!
//! Memory rule: loading holds the converted weights plus at most one tensor's raw bytes. Each
//! tensor is read with a positioned read straight into its final buffer (f32 checkpoints) or
//! into a scratch buffer converted at once (bf16 / f16). Nothing is memory-mapped, so the page
//! cache of the checkpoint files is not counted in the process's resident memory; peak RSS
//! stays near the weight bytes in the compute dtype (see `lens bench load`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::engine::weights::TensorSource;
use crate::error::{LensError, Result};

/// Where one tensor lies in which file.
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// Safetensors shards, read tensor by tensor on demand.
pub struct SafetensorsSource {
    files: Vec<(PathBuf, File)>,
    index: HashMap<String, Entry>,
    /// The dtype tensors are converted to as they are read.
    target: DType,
    /// The tensors read so far (what the family mapping used).
    read: HashSet<String>,
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> LensError {
    LensError::CorruptFile {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

impl SafetensorsSource {
    /// Reads the headers of the files; tensors are read later, one at a time, converted to
    /// `target` (f32 unless the caller keeps bf16/f16 weights).
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::CorruptFile`] (bad header, data past the end).
    pub fn open(paths: &[PathBuf], target: DType) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = crate::util::fs::open(
                p,
                "A safetensors shard of the checkpoint is missing; re-download it",
            )?;
            let len = f.metadata().map_err(|e| LensError::io(p, e))?.len();
            let mut n = [0u8; 8];
            read_at(&f, &mut n, 0).map_err(|e| corrupt(p, format!("no header: {e}")))?;
            let n = u64::from_le_bytes(n);
            if n > 100_000_000 || 8 + n > len {
                return Err(corrupt(
                    p,
                    format!("header length {n} does not fit a {len}-byte file"),
                ));
            }
            let mut header = vec![0u8; n as usize];
            read_at(&f, &mut header, 8).map_err(|e| corrupt(p, e))?;
            let header: Value =
                serde_json::from_slice(&header).map_err(|e| corrupt(p, format!("header: {e}")))?;
            let obj = header
                .as_object()
                .ok_or_else(|| corrupt(p, "header is not an object"))?;
            let data_start = 8 + n;
            for (name, info) in obj {
                if name == "__metadata__" {
                    continue;
                }
                let bad = || corrupt(p, format!("bad header entry for {name}"));
                let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(bad)?;
                let shape = info
                    .get("shape")
                    .and_then(Value::as_array)
                    .ok_or_else(bad)?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                let offs = info
                    .get("data_offsets")
                    .and_then(Value::as_array)
                    .ok_or_else(bad)?;
                let (s, e) = match (
                    offs.first().and_then(Value::as_u64),
                    offs.get(1).and_then(Value::as_u64),
                ) {
                    (Some(s), Some(e)) if s <= e => (s, e),
                    _ => return Err(bad()),
                };
                let end = data_start.saturating_add(e);
                if end > len {
                    return Err(corrupt(
                        p,
                        format!("tensor {name} ends at byte {end} but the file has {len} (truncated download?)"),
                    ));
                }
                // the shape must describe the bytes it claims (checked before anything is
                // allocated from it)
                let elems = shape
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
                let width = match dtype {
                    "F32" | "I32" | "U32" => Some(4),
                    "BF16" | "F16" | "I16" | "U16" => Some(2),
                    "F64" | "I64" | "U64" => Some(8),
                    "I8" | "U8" | "BOOL" => Some(1),
                    _ => None,
                };
                if let Some(w) = width {
                    if elems.and_then(|n| n.checked_mul(w)) != Some(e - s) {
                        return Err(corrupt(
                            p,
                            format!(
                                "tensor {name}: shape {shape:?} of {dtype} does not fit its {} bytes",
                                e - s
                            ),
                        ));
                    }
                }
                index.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype: dtype.to_string(),
                        shape,
                        start: data_start + s,
                        end: data_start + e,
                    },
                );
            }
            files.push((p.clone(), f));
        }
        Ok(SafetensorsSource {
            files,
            index,
            target,
            read: HashSet::new(),
        })
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }
}

fn bytes_to<T: Copy>(raw: &[u8], conv: impl Fn([u8; 2]) -> T) -> Vec<T> {
    raw.chunks_exact(2).map(|c| conv([c[0], c[1]])).collect()
}

impl TensorSource for SafetensorsSource {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(e) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, file) = &self.files[e.file];
        // open() checked that the shape's element count times the width is the byte range
        let n = e
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!("tensor {name}: shape {:?} overflows", e.shape),
                )
            })?;
        let nbytes = (e.end - e.start) as usize;
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "BF16" | "F16" => 2,
            other => {
                return Err(LensError::UnsupportedConfig {
                    field: format!("dtype of {name}"),
                    value: other.into(),
                    fix: "supported checkpoint dtypes: F32, BF16, F16".into(),
                })
            }
        };
        if Some(nbytes) != n.checked_mul(width) {
            return Err(corrupt(
                path,
                format!(
                    "tensor {name}: {nbytes} bytes for {n} elements of {}",
                    e.dtype
                ),
            ));
        }
        let dev = Device::Cpu;
        let t = match e.dtype.as_str() {
            "F32" => {
                let mut v = vec![0f32; n];
                // SAFETY: f32 has no invalid bit patterns; the slice covers exactly the vector.
                let bytes =
                    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * 4) };
                read_at(file, bytes, e.start)
                    .map_err(|err| corrupt(path, format!("{name}: {err}")))?;
                if cfg!(target_endian = "big") {
                    for x in v.iter_mut() {
                        *x = f32::from_bits(x.to_bits().swap_bytes());
                    }
                }
                Tensor::from_vec(v, e.shape.as_slice(), &dev)?.to_dtype(self.target)?
            }
            half_kind => {
                let mut raw = vec![0u8; nbytes];
                read_at(file, &mut raw, e.start)
                    .map_err(|err| corrupt(path, format!("{name}: {err}")))?;
                let t = if half_kind == "BF16" {
                    Tensor::from_vec(
                        bytes_to(&raw, half::bf16::from_le_bytes),
                        e.shape.as_slice(),
                        &dev,
                    )?
                } else {
                    Tensor::from_vec(
                        bytes_to(&raw, half::f16::from_le_bytes),
                        e.shape.as_slice(),
                        &dev,
                    )?
                };
                drop(raw);
                t.to_dtype(self.target)?
            }
        };
        self.read.insert(name.to_string());
        Ok(Some(t))
    }

    fn unread(&self) -> Vec<String> {
        crate::engine::weights::unread_of(self.index.keys(), &self.read)
    }

    fn describe(&self) -> String {
        self.files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
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
        let v: Value = serde_json::from_str(&text).map_err(|e| LensError::Json {
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
        // a shard is a file of this folder: an index naming anything else is refused before
        // it is opened (never a path out of the folder)
        if let Some(bad) = files.iter().find(|f| {
            let p = Path::new(f.as_str());
            p.components().count() != 1
                || p.file_name().and_then(|n| n.to_str()) != Some(f.as_str())
        }) {
            return Err(LensError::Json {
                what: index.display().to_string(),
                detail: format!(
                    "its weight_map names the shard {bad:?}, which is not a file of the checkpoint folder; a shard index lists file names in its own folder (the index is damaged or hostile)"
                ),
            });
        }
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
