//! An in-memory activation store (SAELens's `ActivationsStore`, held whole): the activations at
//! one hook point over every real position of a set of contexts, gathered in batches by runs
//! that stop after the hook's block. It is what an SAE trains on and what feature views read
//! — one pass over the corpus serves every feature.

use candle_core::{DType, Device, Tensor};

use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{Chain, HookFilter, HookPoint, HookSink, Hooks, NoHooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

use super::Sae;

/// Activations at `hook`, one row per (context, position).
#[derive(Clone, Debug)]
pub struct ActivationStore {
    /// Where they were read.
    pub hook: HookPoint,
    /// `[n, d]`, f32 on the CPU; heads flattened for per-head points (`attn.hook_z`:
    /// `d = n_heads · d_head`, head-major as SAELens flattens them).
    pub acts: Tensor,
    /// `(context, position)` of each row.
    pub index: Vec<(usize, usize)>,
    /// The contexts.
    pub tokens: Tokens,
    /// Wall time of the gathering runs.
    pub seconds: f64,
}

/// Rows of the SAE code that one encode handles at a time (bounds the `[rows, d_sae]` block).
const CHUNK: usize = 2048;

/// The positions of `rows` an SAE is read at: every real one but a leading BOS (the
/// attention sink's, orders of magnitude larger than the rest), as `(row, pos)`.
pub(crate) fn positions_without_bos(
    rows: &[Vec<u32>],
    bos: Option<u32>,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    rows.iter().enumerate().flat_map(move |(i, row)| {
        let first = usize::from(bos.is_some() && row.first().copied() == bos);
        (first..row.len()).map(move |pos| (i, pos))
    })
}

impl ActivationStore {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds no rows.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Runs `sae`'s encoder over the store in chunks and hands each chunk's
    /// `hook_sae_acts_post [rows, d_sae]` and its first row to `f`.
    fn for_each_code(
        &self,
        sae: &Sae,
        mut f: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<()> {
        if sae.hook != self.hook {
            return Err(LensError::Mismatch {
                what: format!("the SAE {} and the activation store", sae.source),
                detail: format!(
                    "the SAE reads {} but the store holds {}; collect the store at the SAE's hook",
                    sae.hook, self.hook
                ),
            });
        }
        let n = self.len();
        let mut at = 0;
        while at < n {
            let rows = CHUNK.min(n - at);
            let code = sae.encode(&self.acts.narrow(0, at, rows)?)?;
            f(at, &code.acts_post)?;
            at += rows;
        }
        Ok(())
    }

    /// The activations of `features` of `sae` on every row: one `Vec` of `len()` values per
    /// feature.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when the SAE reads another hook or width;
    /// [`LensError::OutOfRange`] for a feature beyond `d_sae`.
    pub fn feature_acts(&self, sae: &Sae, features: &[usize]) -> Result<Vec<Vec<f32>>> {
        if let Some(&f) = features.iter().find(|&&f| f >= sae.d_sae()) {
            return Err(LensError::OutOfRange {
                what: "SAE feature".into(),
                index: f,
                len: sae.d_sae(),
            });
        }
        let mut out = vec![Vec::with_capacity(self.len()); features.len()];
        let idx = Tensor::new(
            features.iter().map(|&f| f as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        self.for_each_code(sae, |_, post| {
            // [features, rows]
            let cols: Vec<Vec<f32>> = post
                .to_dtype(DType::F32)?
                .index_select(&idx, 1)?
                .t()?
                .contiguous()?
                .to_vec2()?;
            for (o, c) in out.iter_mut().zip(cols) {
                o.extend(c);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Each feature's firing frequency over the store (the fraction of rows where its
    /// activation is positive): the "feature density" SAELens and Neuronpedia plot on a log
    /// scale. Dead features read 0.
    ///
    /// # Errors
    /// As [`Self::feature_acts`].
    pub fn feature_density(&self, sae: &Sae) -> Result<Vec<f32>> {
        let mut counts = Tensor::zeros(sae.d_sae(), DType::F32, &Device::Cpu)?;
        self.for_each_code(sae, |_, post| {
            counts = (&counts + post.gt(0f32)?.to_dtype(DType::F32)?.sum(0)?)?;
            Ok(())
        })?;
        let n = self.len().max(1) as f64;
        Ok((counts / n)?.to_vec1()?)
    }

    /// Values of one per row, laid back out per context: `[context][pos]`, zero at the
    /// positions the store skipped.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when `values` does not have one entry per row.
    pub fn per_context(&self, values: &[f32]) -> Result<Vec<Vec<f32>>> {
        if values.len() != self.len() {
            return Err(LensError::mismatch(
                "values and the activation store",
                format!(
                    "{} values for {} rows; give one per row",
                    values.len(),
                    self.len()
                ),
            ));
        }
        let mut out: Vec<Vec<f32>> = self
            .tokens
            .lengths()
            .into_iter()
            .map(|n| vec![0f32; n])
            .collect();
        for (&(c, p), &v) in self.index.iter().zip(values) {
            out[c][p] = v;
        }
        Ok(out)
    }
}

impl HookedTransformer {
    /// Gathers the activations at `hook` over `tokens`' contexts, `batch_size` contexts per
    /// run, each run stopping after the hook's block ([`Self::run_until`]). Every real position
    /// is kept except a leading BOS: its residual is the attention sink's, orders of magnitude
    /// larger than the rest, and SAEs are trained and read without it.
    ///
    /// # Errors
    /// [`LensError::HookNotOnModel`] / [`LensError::LayerOutOfRange`] for a point the model does
    /// not fire; [`LensError::BadParameter`] for a zero batch; [`LensError::TooFew`] when no
    /// position is left; as [`Self::forward`].
    pub fn collect_activations(
        &self,
        tokens: &Tokens,
        hook: HookPoint,
        batch_size: usize,
    ) -> Result<ActivationStore> {
        self.gather(tokens, hook, batch_size, &mut NoHooks)
    }

    /// [`Self::collect_activations`] with `hooks` applied in every run (e.g. a component
    /// ablated, or a steering vector added, upstream of `hook`): the store holds the hooked
    /// activations. Hooks downstream of `hook`'s block never run (each run stops there) and
    /// show up in [`Hooks::audit`] as never fired.
    ///
    /// # Errors
    /// As [`Self::collect_activations`]; [`LensError::HookNotOnModel`] /
    /// [`LensError::LayerOutOfRange`] for a hook at a point the model never fires; whatever a
    /// hook returns.
    pub fn collect_activations_with_hooks(
        &self,
        tokens: &Tokens,
        hook: HookPoint,
        batch_size: usize,
        hooks: &mut Hooks,
    ) -> Result<ActivationStore> {
        hooks.check(&self.cfg)?;
        hooks.start_audit();
        self.gather(tokens, hook, batch_size, hooks)
    }

    fn gather(
        &self,
        tokens: &Tokens,
        hook: HookPoint,
        batch_size: usize,
        hooks: &mut dyn HookSink,
    ) -> Result<ActivationStore> {
        hook.check(&self.cfg)?;
        if batch_size == 0 {
            return Err(LensError::bad_parameter(
                "batch_size",
                "0",
                "run at least one context at a time (16 to 64 suit a CPU)",
            ));
        }
        let t0 = std::time::Instant::now();
        let bos = self.tokenizer().bos_token_id;
        let rows = tokens.rows();
        let bar = crate::util::progress::Progress::new(
            &format!("caching {hook}"),
            rows.len().div_ceil(batch_size) as u64,
            true,
        );
        let mut parts = Vec::new();
        let mut index = Vec::new();
        for (k, chunk) in rows.chunks(batch_size).enumerate() {
            let batch = Tokens::new(chunk.to_vec(), tokens.pad_id())?;
            let mut rec = ActivationCache::recorder(HookFilter::Points(vec![hook]));
            let mut sink = Chain(&mut *hooks, &mut rec);
            match hook {
                HookPoint::Embed | HookPoint::PosEmbed => {
                    self.run_until(&batch, 0, &mut sink)?;
                }
                _ => match hook.layer() {
                    Some(l) => {
                        self.run_until(&batch, l + 1, &mut sink)?;
                    }
                    None => {
                        self.forward_with(&batch, LogitsAt::Last, &mut sink)?;
                    }
                },
            }
            let act = rec.at(hook)?;
            let (b, p) = (act.dim(0)?, act.dim(1)?);
            let flat = act
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .reshape((b * p, ()))?;
            let mut keep = Vec::new();
            for (i, pos) in positions_without_bos(chunk, bos) {
                keep.push((i * p + pos) as u32);
                index.push((k * batch_size + i, pos));
            }
            if !keep.is_empty() {
                parts.push(flat.index_select(&Tensor::new(keep, &Device::Cpu)?, 0)?);
            }
            bar.inc();
        }
        bar.finish();
        if parts.is_empty() {
            return Err(LensError::too_few(
                "positions to gather activations at",
                1,
                0,
                "give contexts with at least one token after BOS",
            ));
        }
        Ok(ActivationStore {
            hook,
            acts: Tensor::cat(&parts, 0)?,
            index,
            tokens: tokens.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}
