//! Text generation with a KV cache: greedy or sampled (temperature, top-k, seeded).

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::block::PastKv;
use crate::engine::hooks::NoHooks;
use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// How to pick each next token.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// How many tokens to add at most.
    pub max_new_tokens: usize,
    /// 0 for greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampler (the same seed gives the same text).
    pub seed: u64,
    /// Stop when the model emits its EOS token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            temperature: 0.0,
            top_k: None,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// SplitMix64: a small, seeded, reproducible generator for sampling.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks a token from final-position logits.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = opts.top_k {
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(k.max(1));
    }
    let m = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - m) / opts.temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.next_f64() * total;
    for (&i, wi) in idx.iter().zip(&w) {
        r -= wi;
        if r <= 0.0 {
            return i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

impl HookedTransformer {
    /// Continues each prompt of `tokens`; returns the new token ids per prompt. Each step runs
    /// only the new position through the blocks, attending to the cached keys and values.
    ///
    /// # Errors
    /// [`LensError::PromptTooLong`] if prompt plus new tokens exceed the context.
    pub fn generate_tokens(
        &self,
        tokens: &Tokens,
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        if !(opts.temperature.is_finite() && opts.temperature >= 0.0) {
            return Err(LensError::bad_parameter(
                "temperature",
                opts.temperature,
                "use 0 for greedy decoding or a finite positive number to sample",
            ));
        }
        let mut rng = Rng(opts.seed);
        let mut out = Vec::with_capacity(tokens.batch());
        for row in tokens.rows() {
            if row.len() > self.cfg.n_ctx {
                return Err(LensError::PromptTooLong {
                    len: row.len(),
                    n_ctx: self.cfg.n_ctx,
                });
            }
            let room = self.cfg.n_ctx - row.len();
            if opts.max_new_tokens > room {
                return Err(LensError::BadParameter {
                    name: "max_new_tokens".into(),
                    value: opts.max_new_tokens.to_string(),
                    fix: format!(
                        "the model's context holds {} tokens and the prompt takes {}: at most {room} new tokens fit",
                        self.cfg.n_ctx,
                        row.len()
                    ),
                });
            }
            let total = row.len() + opts.max_new_tokens;
            let ctx = self.context(total)?;
            let mut past: Vec<Option<PastKv>> = vec![None; self.cfg.n_layers];
            let mut ids = Tensor::new(row.as_slice(), &self.device)?.unsqueeze(0)?;
            let mut offset = 0;
            let mut new = Vec::new();
            for _ in 0..opts.max_new_tokens {
                let n = ids.dim(1)?;
                let mut x = self.embed_ids(&ids, offset, &mut NoHooks)?;
                for (l, slot) in past.iter_mut().enumerate() {
                    let (y, kv) =
                        self.block(l)?
                            .forward(x, &ctx, offset, slot.as_ref(), &mut NoHooks)?;
                    x = y;
                    *slot = Some(kv);
                }
                let last = x.narrow(1, n - 1, 1)?;
                let logits = self.unembed_residual(&last)?;
                let logits: Vec<f32> = logits.i((0, 0))?.to_dtype(DType::F32)?.to_vec1()?;
                let next = pick(&logits, opts, &mut rng);
                new.push(next);
                if opts.stop_at_eos && Some(next) == self.cfg.eos_token_id {
                    break;
                }
                offset += n;
                ids = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            }
            out.push(new);
        }
        Ok(out)
    }

    /// Continues a text prompt and returns the new text.
    ///
    /// # Errors
    /// As [`Self::generate_tokens`].
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<String> {
        let tokens = self.to_tokens(prompt, None)?;
        let new = self.generate_tokens(&tokens, opts)?;
        self.to_string(&new[0])
    }
}
