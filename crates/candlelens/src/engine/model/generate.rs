//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p, seeded), a
//! batch of prompts at once (left-padded, so every prompt's next token goes at the same
//! position), with hooks firing on the prompt pass and on every new token.

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::block::{ForwardCtx, PastKv};
use crate::engine::hooks::{HookContext, HookSink, NoHooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::{Padding, Tokens};
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
    /// Sample only among the most likely tokens whose probabilities add up to `p` (nucleus
    /// sampling; in `(0, 1]`).
    pub top_p: Option<f64>,
    /// Seed of the sampler. Every prompt of a batch samples with its own generator seeded
    /// with it, so a prompt's text does not depend on its place in the batch.
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
            top_p: None,
            seed: 0,
            stop_at_eos: true,
        }
    }
}

/// SplitMix64: a small, seeded, reproducible generator for sampling.
#[derive(Clone)]
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
    if opts.top_k.is_some() || opts.top_p.is_some() {
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    }
    if let Some(k) = opts.top_k {
        idx.truncate(k.max(1));
    }
    let m = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - m) / opts.temperature).exp())
        .collect();
    if let Some(p) = opts.top_p {
        // the smallest prefix of the sorted tokens whose probability reaches p
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let keep = w
            .iter()
            .position(|x| {
                acc += x / total;
                acc >= p
            })
            .map_or(w.len(), |i| i + 1);
        idx.truncate(keep);
        w.truncate(keep);
    }
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

impl GenerateOptions {
    /// Checks the options before any work.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for a negative or non-finite temperature, `top_k = 0`, or a
    /// `top_p` outside `(0, 1]`.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(LensError::bad_parameter(
                "temperature",
                self.temperature,
                "use 0 for greedy decoding or a finite positive number to sample",
            ));
        }
        if self.top_k == Some(0) {
            return Err(LensError::bad_parameter(
                "top_k",
                0,
                "sample among at least one token (or leave top_k unset)",
            ));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(LensError::bad_parameter(
                "top_p",
                p,
                "use a probability mass in (0, 1] (1 keeps every token)",
            ));
        }
        Ok(())
    }
}

impl HookedTransformer {
    /// Continues each prompt of `tokens`; returns the new token ids per prompt (up to and
    /// including an EOS where `stop_at_eos`). The batch runs at once, left-padded: the prompt
    /// pass, then one position per step through the blocks, attending to the cached keys and
    /// values.
    ///
    /// # Errors
    /// As [`Self::generate_tokens_with`].
    pub fn generate_tokens(
        &self,
        tokens: &Tokens,
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_tokens_with(tokens, opts, &mut NoHooks)
    }

    /// [`Self::generate_tokens`] with hooks: `sink` sees every hook point of the prompt pass and
    /// of each new token's step (the step's activations cover one position; its
    /// [`HookContext`] says which, so a hook can steer only the new tokens, or every position).
    ///
    /// # Errors
    /// [`LensError::BadParameter`] for bad options ([`GenerateOptions::check`]) or more new
    /// tokens than the context has room for after the longest prompt;
    /// [`LensError::HookNotOnModel`] for a hook named on a point the model never fires;
    /// whatever a hook returns.
    pub fn generate_tokens_with(
        &self,
        tokens: &Tokens,
        opts: &GenerateOptions,
        sink: &mut dyn HookSink,
    ) -> Result<Vec<Vec<u32>>> {
        opts.check()?;
        self.check_tokens(tokens)?;
        sink.check(&self.cfg)?;
        let n0 = tokens.max_len();
        let room = self.cfg.n_ctx - n0;
        if opts.max_new_tokens > room {
            return Err(LensError::bad_parameter(
                "max_new_tokens",
                opts.max_new_tokens,
                &format!(
                    "the model's context holds {} tokens and the longest prompt takes {n0}: at most {room} new tokens fit",
                    self.cfg.n_ctx
                ),
            ));
        }
        let batch = tokens.batch();
        let left = Tokens::with_padding(tokens.rows().to_vec(), tokens.pad_id(), Padding::Left)?;
        let offsets = left.offsets();
        let ctx = ForwardCtx::with_offsets(
            &self.cfg,
            n0 + opts.max_new_tokens,
            &offsets,
            self.dtype,
            &self.device,
        )?;
        let mut past: Vec<Option<PastKv>> = vec![None; self.cfg.n_layers];
        let mut rngs = vec![Rng(opts.seed); batch];
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); batch];
        let mut done = vec![false; batch];
        let mut ids = left.to_tensor(&self.device)?;
        let mut positions = left.position_ids();
        let mut lengths = left.lengths();
        let mut start = 0;
        for _ in 0..opts.max_new_tokens {
            let n = ids.dim(1)?;
            sink.begin(&HookContext::new(offsets.clone(), lengths.clone(), start)?);
            let mut x = self.embed_at(&ids, &positions, sink)?;
            for (l, slot) in past.iter_mut().enumerate() {
                let (y, kv) = self
                    .block(l)?
                    .forward(x, &ctx, start, slot.as_ref(), sink)?;
                x = y;
                *slot = Some(kv);
            }
            let logits = self.unembed(&x.narrow(1, n - 1, 1)?, &left, LogitsAt::All, sink)?;
            let mut next = Vec::with_capacity(batch);
            for (b, rng) in rngs.iter_mut().enumerate() {
                let row: Vec<f32> = logits.i((b, 0))?.to_dtype(DType::F32)?.to_vec1()?;
                let t = pick(&row, opts, rng);
                if !done[b] {
                    out[b].push(t);
                    done[b] = opts.stop_at_eos && Some(t) == self.cfg.eos_token_id;
                }
                next.push(t);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            start += n;
            ids = Tensor::new(next.as_slice(), &self.device)?.unsqueeze(1)?;
            positions = lengths.iter().map(|&len| vec![len]).collect();
            lengths.iter_mut().for_each(|len| *len += 1);
        }
        Ok(out)
    }

    /// Continues a text prompt and returns the new text.
    ///
    /// # Errors
    /// As [`Self::generate_tokens`].
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<String> {
        self.generate_with(prompt, opts, &mut NoHooks)
    }

    /// [`Self::generate`] with hooks (see [`Self::generate_tokens_with`]): e.g. a steering
    /// vector added at every position, the prompt's and the new tokens' alike.
    ///
    /// # Errors
    /// As [`Self::generate_tokens_with`].
    pub fn generate_with(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        sink: &mut dyn HookSink,
    ) -> Result<String> {
        let tokens = self.to_tokens(prompt, None)?;
        let new = self.generate_tokens_with(&tokens, opts, sink)?;
        self.to_string(&new[0])
    }
}
