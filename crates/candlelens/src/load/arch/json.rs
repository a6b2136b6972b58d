//! Reading a Hugging Face `config.json`: typed field readers that name the field and the fix,
//! the bounds every dimension is checked against before anything is allocated from it, and
//! the keys shared by several families (the activation, rotary bases and scaling).

use serde_json::Value;

use crate::engine::config::{Activation, Dims, RopeScaling};
use crate::error::{LensError, Result};

/// Reads a JSON field as f64/usize with a typed error. A field that is present but of the
/// wrong type (`"rope_theta": "10000"`) is never taken for absent: the readers with defaults
/// note it, and [`Json::finish`] turns the notes into an error naming every such field.
pub(crate) struct Json<'a> {
    pub v: &'a Value,
    pub what: &'a str,
    wrong: std::cell::RefCell<Vec<String>>,
}

/// The largest value a model dimension may take (layers and heads far below it; widths and
/// vocabularies too).
pub(crate) const MAX_DIM: usize = 1 << 24;

/// The largest number of layers or heads (the largest public models have ~130 layers and
/// 128 heads): per-layer tables are allocated from these counts before any weight is read.
pub(crate) const MAX_COUNT: usize = 1 << 12;

/// Whether `field` counts layers or heads (bounded by [`MAX_COUNT`]) rather than a width.
fn is_count(field: &str) -> bool {
    field.contains("layer")
        || field.contains("block_count")
        || field.contains("head_count")
        || field.contains("attention_heads")
        || field.contains("key_value_heads")
        || field == "n_head"
}

/// `value` as a model dimension of `field`: positive and at most [`MAX_DIM`] ([`MAX_COUNT`]
/// for layer and head counts).
///
/// # Errors
/// [`LensError::UnsupportedConfig`] naming the field.
pub(crate) fn check_dim(field: &str, value: usize) -> Result<usize> {
    let max = if is_count(field) { MAX_COUNT } else { MAX_DIM };
    if value == 0 || value > max {
        return Err(LensError::UnsupportedConfig {
            field: field.to_string(),
            value: value.to_string(),
            fix: format!(
                "this must be between 1 and {max}; the config is damaged or not a model's"
            ),
        });
    }
    Ok(value)
}

impl<'a> Json<'a> {
    pub fn new(v: &'a Value, what: &'a str) -> Self {
        Json {
            v,
            what,
            wrong: Default::default(),
        }
    }

    /// `key`'s value read by `f`; `None` when absent or null, and a note when present but not
    /// what `f` reads (`expected` says what it should be).
    fn typed<T>(&self, key: &str, expected: &str, f: impl Fn(&Value) -> Option<T>) -> Option<T> {
        match self.v.get(key) {
            None | Some(Value::Null) => None,
            Some(x) => {
                let got = f(x);
                if got.is_none() {
                    self.wrong
                        .borrow_mut()
                        .push(format!("'{key}' is {x}, expected {expected}"));
                }
                got
            }
        }
    }

    /// Errors if any field read with a default was present with the wrong type.
    ///
    /// # Errors
    /// [`LensError::Json`] naming every such field.
    pub fn finish(&self) -> Result<()> {
        let wrong = self.wrong.borrow();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(LensError::Json {
            what: self.what.into(),
            detail: format!(
                "{}; fix the value (a number is written without quotes)",
                wrong.join("; ")
            ),
        })
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => Err(LensError::Json {
                what: self.what.into(),
                detail: format!(
                    "missing integer field '{key}'; add it (see the model's published config.json)"
                ),
            }),
            Some(x) => x
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| LensError::Json {
                    what: self.what.into(),
                    detail: format!("'{key}' is {x}, expected a non-negative integer"),
                }),
        }
    }
    /// A model dimension (layers, heads, widths, vocabulary): a positive integer below a bound
    /// no real checkpoint reaches, checked before anything divides by it or allocates from it.
    pub fn dim(&self, key: &str) -> Result<usize> {
        check_dim(key, self.usize(key)?)
    }
    /// [`Self::dim`] with a default for an absent key.
    pub fn dim_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(_) => self.dim(key),
        }
    }
    pub fn usize_or(&self, key: &str, default: usize) -> usize {
        self.typed(key, "a non-negative integer", Value::as_u64)
            .map_or(default, |x| x as usize)
    }
    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.opt_f64(key).unwrap_or(default)
    }
    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.typed(key, "a number", Value::as_f64)
    }
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.typed(key, "true or false", Value::as_bool)
            .unwrap_or(default)
    }
    pub fn str(&self, key: &str) -> Option<&'a str> {
        let v: &'a Value = self.v;
        match v.get(key) {
            None | Some(Value::Null) => None,
            Some(x) => {
                let s = x.as_str();
                if s.is_none() {
                    self.wrong
                        .borrow_mut()
                        .push(format!("'{key}' is {x}, expected a string"));
                }
                s
            }
        }
    }
    pub fn opt_u32(&self, key: &str) -> Option<u32> {
        // eos_token_id may be a list; take the first
        self.typed(key, "a token id (or a list of them)", |x| match x {
            Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
            Value::Array(a) => a
                .first()
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok()),
            _ => None,
        })
    }
}

pub(crate) fn hidden_act(j: &Json, key: &str, default: &str) -> Result<Activation> {
    let act = j.str(key).unwrap_or(default);
    match act {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(LensError::UnsupportedConfig {
            field: key.into(),
            value: other.into(),
            fix: "supported activations: silu, gelu, gelu_new, gelu_pytorch_tanh, relu".into(),
        }),
    }
}

fn rope_scaling_from(rs: &Value, what: &str) -> Result<Option<RopeScaling>> {
    let r = Json::new(rs, what);
    let kind = r.str("rope_type").or(r.str("type")).unwrap_or("default");
    let scaling = match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: r.f64_or("factor", 1.0),
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: r.f64_or("factor", 8.0),
            low_freq_factor: r.f64_or("low_freq_factor", 1.0),
            high_freq_factor: r.f64_or("high_freq_factor", 4.0),
            original_max_position_embeddings: r.f64_or("original_max_position_embeddings", 8192.0),
        })),
        other => Err(LensError::UnsupportedConfig {
            field: "rope_type".into(),
            value: other.into(),
            fix: "supported: default, linear, llama3".into(),
        }),
    };
    r.finish()?;
    scaling
}

/// Rotary parameters from either config format: transformers 4 (`rope_theta`, `rope_scaling`,
/// `rope_local_base_freq`) or transformers 5 (`rope_parameters`, per layer type for Gemma 3).
/// Returns `(global base, global scaling, local base)`.
pub(crate) fn rope_params(
    j: &Json,
    default_base: f64,
) -> Result<(f64, Option<RopeScaling>, Option<f64>)> {
    if let Some(rp) = j.v.get("rope_parameters").filter(|v| v.is_object()) {
        let (global, local) = match rp.get("full_attention") {
            Some(g) => (g, rp.get("sliding_attention")),
            None => (rp, None),
        };
        let g = Json::new(global, j.what);
        let base = g.f64_or("rope_theta", default_base);
        g.finish()?;
        let scaling = rope_scaling_from(global, j.what)?;
        let local_base = match local {
            Some(l) => {
                let l = Json::new(l, j.what);
                let b = l.opt_f64("rope_theta");
                l.finish()?;
                b
            }
            None => None,
        };
        return Ok((base, scaling, local_base));
    }
    let scaling = match j.v.get("rope_scaling").filter(|v| !v.is_null()) {
        Some(rs) => rope_scaling_from(rs, j.what)?,
        None => None,
    };
    Ok((
        j.f64_or("rope_theta", default_base),
        scaling,
        j.opt_f64("rope_local_base_freq"),
    ))
}

/// The config keys a family names its dimensions with.
pub(crate) struct DimKeys<'a> {
    /// Number of blocks.
    pub n_layers: &'a str,
    /// Residual width.
    pub d_model: &'a str,
    /// Query heads.
    pub n_heads: &'a str,
    /// Key/value heads, where the family has grouped-query attention (absent: `n_heads`).
    pub n_kv_heads: Option<&'a str>,
    /// The head width, where the family may set it (absent: `d_model / n_heads`).
    pub d_head: Option<&'a str>,
    /// The MLP's width: a key, its default (4 · `d_model` where the key may be absent), or a
    /// width the family computes itself (a mixture of experts).
    pub d_mlp: MlpWidth<'a>,
    /// The context length's key and its default.
    pub n_ctx: (&'a str, usize),
}

/// Where a family's MLP width comes from.
pub(crate) enum MlpWidth<'a> {
    /// A required key.
    Key(&'a str),
    /// A key that defaults to `4 · d_model`.
    KeyOr4x(&'a str),
    /// Computed by the family.
    Given(usize),
}

impl<'a> DimKeys<'a> {
    /// GPT-2's names (`n_layer`, `n_embd`, `n_head`, `n_inner`, `n_positions`).
    pub(crate) const GPT2: DimKeys<'static> = DimKeys {
        n_layers: "n_layer",
        d_model: "n_embd",
        n_heads: "n_head",
        n_kv_heads: None,
        d_head: None,
        d_mlp: MlpWidth::KeyOr4x("n_inner"),
        n_ctx: ("n_positions", 1024),
    };

    /// The names of most Hugging Face configs since Llama (`num_hidden_layers`,
    /// `hidden_size`, `num_attention_heads`, `num_key_value_heads`, `head_dim`,
    /// `intermediate_size`, `max_position_embeddings`).
    pub(crate) const HF: DimKeys<'static> = DimKeys {
        n_layers: "num_hidden_layers",
        d_model: "hidden_size",
        n_heads: "num_attention_heads",
        n_kv_heads: Some("num_key_value_heads"),
        d_head: Some("head_dim"),
        d_mlp: MlpWidth::Key("intermediate_size"),
        n_ctx: ("max_position_embeddings", 2048),
    };
}

impl Json<'_> {
    /// The model's dimensions under a family's `keys`, each checked ([`check_dim`]).
    ///
    /// # Errors
    /// [`LensError::UnsupportedConfig`] / [`LensError::CorruptFile`] for a missing or
    /// out-of-range dimension, naming its key; `d_model / n_heads` of zero.
    pub fn dims(&self, keys: &DimKeys) -> Result<Dims> {
        let d_model = self.dim(keys.d_model)?;
        let n_heads = self.dim(keys.n_heads)?;
        let split = format!("{} / {}", keys.d_model, keys.n_heads);
        let given = |k: &&str| self.v.get(*k).is_some_and(|v| !v.is_null());
        let d_head = match keys.d_head.filter(given) {
            Some(k) => self.dim(k)?,
            None => check_dim(&split, d_model / n_heads)?,
        };
        Ok(Dims {
            n_layers: self.dim(keys.n_layers)?,
            d_model,
            n_heads,
            n_kv_heads: match keys.n_kv_heads {
                Some(k) => self.dim_or(k, n_heads)?,
                None => n_heads,
            },
            d_head,
            d_mlp: match keys.d_mlp {
                MlpWidth::Key(k) => self.dim(k)?,
                MlpWidth::KeyOr4x(k) => self.dim_or(k, 4 * d_model)?,
                MlpWidth::Given(d) => d,
            },
            d_vocab: self.dim("vocab_size")?,
            n_ctx: self.usize_or(keys.n_ctx.0, keys.n_ctx.1),
        })
    }
}
