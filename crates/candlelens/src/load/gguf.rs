//! GGUF files: metadata -> [`ModelConfig`], tensors dequantized to f32 and presented under
//! their Hugging Face names (so the family mappings in [`crate::load::arch`] serve both formats),
//! and the tokenizer rebuilt from the vocabulary.
//!
//! llama.cpp's conversion changes two things that are undone here, so that every activation
//! matches the Hugging Face model: Llama's q/k rows are permuted for its interleaved RoPE
//! (we un-permute and use rotate-half), and Gemma's norm weights are stored as `1 + w` (we
//! present `w`, the mapping adds the one back).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use crate::engine::config::{
    Activation, Dims, ModelConfig, NormKind, Positional, QkNorm, RotaryConfig,
};
use crate::engine::text::tokenizer::{self, GgufVocab, LensTokenizer};
use crate::engine::weights::TensorSource;
use crate::error::{LensError, Result};
use crate::load::arch::{check_dim, gemma3_layers, Family};

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
    family: Family,
    n_heads: usize,
    n_kv_heads: usize,
    /// The GGUF tensors read so far (what the family mapping used).
    read: std::collections::HashSet<String>,
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> LensError {
    LensError::CorruptFile {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl GgufFile {
    /// Opens and parses the header; checks that every tensor lies inside the file.
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::CorruptFile`] (bad magic, truncated),
    /// [`LensError::UnsupportedArchitecture`].
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::util::fs::open(
            path,
            "Check the path; for the embedded models run scripts/fetch-models",
        )?;
        let file_len = file.metadata().map_err(|e| LensError::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        // candle's reader panics on some damaged headers (an alignment of 0): caught here
        let content = crate::load::guard::catch_panic(|| Content::read(&mut reader))
            .map_err(|p| corrupt(path, format!("the GGUF header cannot be read ({p})")))?
            .map_err(|e| corrupt(path, e))?;
        for (name, info) in &content.tensor_infos {
            // dimensions come from the file: multiply and add without overflowing
            let dims = info.shape.dims();
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = match elems {
                // an empty tensor is never a weight (and candle cannot view an empty buffer
                // as blocks)
                Some(n) if n > 0 && n % block == 0 => {
                    (n / block).checked_mul(info.ggml_dtype.type_size() as u64)
                }
                _ => None,
            };
            let Some(bytes) = bytes else {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor '{name}' has shape {dims:?}, which is not a whole, non-zero number of {:?} blocks of {block}",
                        info.ggml_dtype
                    ),
                ));
            };
            let end = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|x| x.checked_add(bytes))
                .unwrap_or(u64::MAX);
            if end > file_len {
                return Err(corrupt(
                    path,
                    format!("tensor '{name}' ends at byte {end} but the file has {file_len} bytes (truncated download?)"),
                ));
            }
        }
        let arch = meta_str(&content, "general.architecture")
            .ok_or_else(|| corrupt(path, "no general.architecture in metadata"))?;
        let family = Family::from_name(&arch)?;
        // the GGUF tensor mapping covers Llama-layout and Gemma 3 files; other families (and
        // Mixtral, which GGUF files label `llama` with an expert count) load from safetensors
        let experts = meta_usize(&content, &format!("{arch}.expert_count")).unwrap_or(0);
        if !matches!(family, Family::Llama | Family::Gemma3) || experts > 0 {
            return Err(LensError::UnsupportedArchitecture {
                arch: if experts > 0 {
                    format!("{arch} with {experts} experts (GGUF)")
                } else {
                    format!("{arch} (GGUF)")
                },
                supported: "GGUF files of llama and gemma3; load other families (mixtral, qwen2_moe, phi3, ...) from their Hugging Face safetensors checkpoint".into(),
            });
        }
        let n_heads = meta_usize(&content, &format!("{arch}.attention.head_count"))
            .ok_or_else(|| corrupt(path, "no attention.head_count"))?;
        let n_heads = check_dim("attention.head_count", n_heads)?;
        let n_kv_heads = check_dim(
            "attention.head_count_kv",
            meta_usize(&content, &format!("{arch}.attention.head_count_kv")).unwrap_or(n_heads),
        )?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
            family,
            n_heads,
            n_kv_heads,
            read: Default::default(),
        })
    }

    /// The architecture family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The model description from the metadata (with the Gemma 3 facts GGUF omits).
    ///
    /// # Errors
    /// [`LensError::CorruptFile`] if a required key is missing.
    pub fn config(&self, name: &str) -> Result<ModelConfig> {
        let c = &self.content;
        let arch = meta_str(c, "general.architecture").unwrap_or_default();
        let need = |key: &str| {
            meta_usize(c, &format!("{arch}.{key}"))
                .ok_or_else(|| corrupt(&self.path, format!("metadata has no {arch}.{key}")))
        };
        let d_model = check_dim("embedding_length", need("embedding_length")?)?;
        let n_layers = check_dim("block_count", need("block_count")?)?;
        let d_mlp = check_dim("feed_forward_length", need("feed_forward_length")?)?;
        let n_heads = self.n_heads;
        let d_head = check_dim(
            "attention.key_length",
            meta_usize(c, &format!("{arch}.attention.key_length")).unwrap_or(d_model / n_heads),
        )?;
        let eps = meta_f64(c, &format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        let base = meta_f64(c, &format!("{arch}.rope.freq_base")).unwrap_or(10000.0);
        let d_vocab = match c.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => return Err(corrupt(&self.path, "no token_embd.weight")),
        };
        let n_ctx = meta_usize(c, &format!("{arch}.context_length")).unwrap_or(2048);
        let tied = !c.tensor_infos.contains_key("output.weight");
        let bos = meta_u32(c, "tokenizer.ggml.bos_token_id");
        let add_bos = meta_bool(c, "tokenizer.ggml.add_bos_token");
        let dims = Dims {
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: self.n_kv_heads,
            d_head,
            d_mlp,
            d_vocab,
            n_ctx,
        };
        let mut cfg = ModelConfig {
            norm: NormKind::RmsNorm,
            norm_eps: eps,
            positional: RotaryConfig::halves(
                meta_usize(c, &format!("{arch}.rope.dimension_count")).unwrap_or(d_head),
                base,
            ),
            act: Activation::Silu,
            gated_mlp: true,
            tied_embeddings: tied,
            bos_token_id: bos,
            eos_token_id: meta_u32(c, "tokenizer.ggml.eos_token_id"),
            pad_token_id: meta_u32(c, "tokenizer.ggml.padding_token_id")
                .or(meta_u32(c, "tokenizer.ggml.eos_token_id"))
                .unwrap_or(0),
            default_prepend_bos: add_bos.unwrap_or(false),
            ..ModelConfig::plain(&arch, name, dims)
        };
        if self.family == Family::Gemma3 {
            // Gemma 3 text config; GGUF lacks the local RoPE base and the sliding pattern.
            cfg.act = Activation::GeluTanh;
            cfg.qk_norm = QkNorm::PerHead;
            cfg.post_norms = true;
            cfg.embed_scale = Some((d_model as f64).sqrt());
            cfg.attn_scale = 1.0 / (d_head as f64).sqrt(); // query_pre_attn_scalar = d_head
            let window = meta_usize(c, &format!("{arch}.attention.sliding_window")).unwrap_or(512);
            cfg.layer_attention = gemma3_layers(n_layers, 6, window);
            cfg.default_prepend_bos = add_bos.unwrap_or(true);
            if let Positional::Rotary(r) = &mut cfg.positional {
                r.dim = d_head;
                r.local_base = Some(10_000.0);
            }
        }
        // a GGUF's tokenizer.ggml.add_bos_token is the model's own tokenizer's setting
        cfg.hf_prepends_bos = cfg.default_prepend_bos;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The tokenizer rebuilt from the vocabulary metadata.
    ///
    /// # Errors
    /// [`LensError::CorruptFile`] if the vocabulary is missing, or tokenizer errors.
    pub fn tokenizer(&self) -> Result<LensTokenizer> {
        let c = &self.content;
        let strings = |key: &str| -> Option<Vec<String>> {
            match c.metadata.get(key)? {
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.to_string().ok().cloned())
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")
            .ok_or_else(|| corrupt(&self.path, "no tokenizer.ggml.tokens"))?;
        let token_types = match c.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab = GgufVocab {
            model: meta_str(c, "tokenizer.ggml.model").unwrap_or_else(|| "gpt2".into()),
            pre: meta_str(c, "tokenizer.ggml.pre"),
            tokens,
            token_types,
            merges: strings("tokenizer.ggml.merges"),
            bos: meta_u32(c, "tokenizer.ggml.bos_token_id"),
            unk: meta_u32(c, "tokenizer.ggml.unknown_token_id"),
            add_bos: meta_bool(c, "tokenizer.ggml.add_bos_token"),
        };
        let arch = meta_str(c, "general.architecture").unwrap_or_default();
        tokenizer::from_gguf(&arch, vocab)
    }

    /// Every metadata key with a short rendering of its value (arrays by length).
    pub fn metadata_summary(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .content
            .metadata
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::Array(a) => format!("[{} items]", a.len()),
                    Value::String(s) if s.len() > 80 => {
                        format!("{}...", &s[..s.floor_char_boundary(80)])
                    }
                    other => format!("{other:?}"),
                };
                (k.clone(), s)
            })
            .collect();
        out.sort();
        out
    }

    fn gguf_name(&self, hf: &str) -> Option<String> {
        let gemma = self.family == Family::Gemma3;
        let direct = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight".to_string()),
            "model.norm.weight" => Some("output_norm.weight".to_string()),
            "lm_head.weight" => Some("output.weight".to_string()),
            _ => None,
        };
        if direct.is_some() {
            return direct;
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (l, tail) = rest.split_once('.')?;
        let (module, kind) = tail.rsplit_once('.')?;
        let g = match module {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "post_attention_layernorm" if gemma => "post_attention_norm",
            "post_attention_layernorm" => "ffn_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => return None,
        };
        Some(format!("blk.{l}.{g}.{kind}"))
    }
}

/// Undoes llama.cpp's q/k row permutation: per head, GGUF interleaves the two rotary halves.
fn unpermute(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let d_head = out / n_heads;
    Ok(w.reshape((n_heads, d_head / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

impl TensorSource for GgufFile {
    fn get(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(g) = self.gguf_name(name) else {
            return Ok(None);
        };
        if !self.content.tensor_infos.contains_key(&g) {
            return Ok(None);
        }
        let path = self.path.clone();
        let q = self
            .content
            .tensor(&mut self.reader, &g, &Device::Cpu)
            .map_err(|e| corrupt(&path, format!("tensor {g}: {e}")))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| corrupt(&path, format!("tensor {g}: {e}")))?
            .to_dtype(DType::F32)?;
        if self.family == Family::Llama {
            if g.ends_with("attn_q.weight") {
                t = unpermute(&t, self.n_heads)?;
            } else if g.ends_with("attn_k.weight") {
                t = unpermute(&t, self.n_kv_heads)?;
            }
        }
        if self.family.norm_plus_one() && g.contains("norm") {
            t = (t - 1.0)?;
        }
        self.read.insert(g);
        Ok(Some(t))
    }

    fn unread(&self) -> Vec<String> {
        crate::engine::weights::unread_of(self.content.tensor_infos.keys(), &self.read)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn meta_str(c: &Content, key: &str) -> Option<String> {
    c.metadata.get(key)?.to_string().ok().cloned()
}

fn meta_usize(c: &Content, key: &str) -> Option<usize> {
    let v = c.metadata.get(key)?;
    v.to_u64()
        .ok()
        .or_else(|| v.to_u32().ok().map(u64::from))
        .or_else(|| v.to_i32().ok().map(|x| x as u64))
        .map(|x| x as usize)
}

fn meta_u32(c: &Content, key: &str) -> Option<u32> {
    meta_usize(c, key).map(|x| x as u32)
}

fn meta_f64(c: &Content, key: &str) -> Option<f64> {
    let v = c.metadata.get(key)?;
    v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok())
}

fn meta_bool(c: &Content, key: &str) -> Option<bool> {
    c.metadata.get(key)?.to_bool().ok()
}

/// Reads a GGUF model: config, weights (dequantized), tokenizer.
///
/// # Errors
/// See [`GgufFile::open`], [`GgufFile::config`], and the weight mapping of [`crate::load::arch`].
pub fn load(
    path: &Path,
    name: &str,
    dtype: DType,
    device: &Device,
) -> Result<(ModelConfig, crate::engine::weights::Weights, LensTokenizer)> {
    let mut f = GgufFile::open(path)?;
    let cfg = f.config(name)?;
    crate::load::check_layers(
        f.content.tensor_infos.keys().map(String::as_str),
        cfg.n_layers,
    )?;
    let tok = f.tokenizer()?;
    let family = f.family();
    let w = crate::load::arch::load_weights(family, &cfg, &mut f, dtype, device)?;
    Ok((cfg, w, tok))
}
