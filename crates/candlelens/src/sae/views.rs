//! Feature views, offline HTML like every other display: a feature's top-activating contexts
//! with per-token shading, the tokens its decoder direction promotes and suppresses through
//! `W_U`, and the histogram of its activations — in one block ([`FeatureView`]); and the
//! strongest features at one position ([`top_features_table`]).

use candle_core::{DType, IndexOp, Tensor};

use crate::engine::hooks::HookPoint;
use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::viz::escape;
use crate::viz::{Figure, Table};

use super::splice::Splice;
use super::store::ActivationStore;
use super::Sae;

/// One context: a prompt's tokens around the position where the feature fired most.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Context {
    /// The prompt (index into the prompts given).
    pub prompt: usize,
    /// The position of the peak.
    pub pos: usize,
    /// The activation there.
    pub act: f32,
    /// `(token, activation)` for the window around it.
    pub tokens: Vec<(String, f32)>,
    /// Where the peak sits in `tokens`.
    pub peak: usize,
}

/// What one feature does: where it fires, what it writes, how its activations spread.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeatureView {
    /// The feature.
    pub feature: usize,
    /// What it belongs to: the SAE's `source`, or the hook point of a neuron (`"… (neurons)"`)
    /// or of a direction (`"… (a direction)"`).
    pub sae: String,
    /// The top-activating contexts, strongest first.
    pub contexts: Vec<Context>,
    /// Tokens whose logit the direction it writes raises most: `(token, w · W_U[:, t])` with `w`
    /// the SAE's decoder row, the neuron's `W_out` row or the direction itself (empty where it
    /// does not write to the residual stream).
    pub promoted: Vec<(String, f32)>,
    /// Tokens it lowers most.
    pub suppressed: Vec<(String, f32)>,
    /// Every real position's activation (zeros included), for the histogram.
    pub activations: Vec<f32>,
}

/// The `k` largest (or most negative) entries of `v` with their indices.
fn extremes(v: &[f32], k: usize, largest: bool) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| {
        if largest {
            v[b].total_cmp(&v[a])
        } else {
            v[a].total_cmp(&v[b])
        }
    });
    idx.into_iter().take(k).map(|i| (i, v[i])).collect()
}

impl FeatureView {
    /// Runs `prompts` with `sae` spliced in (error term on: the model's own run) and gathers
    /// `feature`'s view: its `k` top contexts (`window` tokens either side), the `k` tokens its
    /// decoder direction promotes and suppresses through `W_U` (for SAEs writing into the
    /// residual stream or a block output, and for `attn.hook_z` SAEs through `W_O` first; the
    /// norms' scales are left out, as Neuronpedia does), and its activations.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a feature beyond `d_sae`; as
    /// [`HookedTransformer::run_with_saes`].
    pub fn build(
        model: &HookedTransformer,
        sae: &Sae,
        tokens: &Tokens,
        feature: usize,
        k: usize,
        window: usize,
    ) -> Result<FeatureView> {
        if feature >= sae.d_sae() {
            return Err(LensError::OutOfRange {
                what: "SAE feature".into(),
                index: feature,
                len: sae.d_sae(),
            });
        }
        let (_, cache) = model.run_with_saes(tokens, &mut [Splice::new(sae)])?;
        let acts = cache.get(&format!("{}.hook_sae_acts_post", sae.output_hook()))?;
        // [batch, pos]
        let f: Vec<Vec<f32>> = acts
            .narrow(2, feature, 1)?
            .squeeze(2)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let write = Self::write_direction(model, sae, feature)?;
        Self::assemble(
            model,
            sae.source.clone(),
            write,
            tokens,
            f,
            feature,
            k,
            window,
        )
    }

    /// The residual-stream direction feature `feature` of `sae` writes, `[d_model]`: its
    /// decoder row for SAEs writing into the residual stream or a block output, through `W_O`
    /// for `attn.hook_z` SAEs; `None` for SAEs writing elsewhere.
    fn write_direction(
        model: &HookedTransformer,
        sae: &Sae,
        feature: usize,
    ) -> Result<Option<Tensor>> {
        let out = sae.output_hook();
        let writes_resid = !matches!(
            out,
            HookPoint::Z(_)
                | HookPoint::MlpPre(_)
                | HookPoint::MlpPreLinear(_)
                | HookPoint::MlpPost(_)
        ) && sae.d_out() == model.cfg.d_model;
        if !(writes_resid || matches!(out, HookPoint::Z(_))) {
            return Ok(None);
        }
        let mut dir = sae
            .w_dec
            .i(feature)?
            .to_dtype(model.dtype())?
            .unsqueeze(0)?;
        if let HookPoint::Z(l) = out {
            // through the heads' output weights into the residual stream: Σ_h dir[h] · W_O[l, h]
            let (h, dh) = (model.cfg.n_heads, model.cfg.d_head);
            let w_o = model.W_O_at(l)?.reshape((h * dh, model.cfg.d_model))?;
            dir = dir.matmul(&w_o.to_dtype(model.dtype())?)?;
        }
        Ok(Some(dir.squeeze(0)?))
    }

    /// [`Self::build`] from an [`ActivationStore`] gathered at the SAE's hook: the contexts are
    /// the store's, and one pass over the corpus serves every feature (no forward runs here).
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a feature beyond `d_sae`; [`LensError::Mismatch`] when the
    /// store was gathered at another hook.
    pub fn from_store(
        model: &HookedTransformer,
        sae: &Sae,
        store: &ActivationStore,
        feature: usize,
        k: usize,
        window: usize,
    ) -> Result<FeatureView> {
        let acts = store
            .feature_acts(sae, &[feature])?
            .pop()
            .unwrap_or_default();
        let f = store.per_context(&acts)?;
        let write = Self::write_direction(model, sae, feature)?;
        let mut view = Self::assemble(
            model,
            sae.source.clone(),
            write,
            &store.tokens,
            f,
            feature,
            k,
            window,
        )?;
        // the histogram counts the store's rows only (not the skipped BOS positions)
        view.activations = acts;
        Ok(view)
    }

    /// An MLP neuron's view — the SAE feature view for the model's own basis: its top
    /// contexts over `store` (gathered at `blocks.{l}.mlp.hook_post`), the tokens its output
    /// weights `W_out[l][neuron]` promote and suppress through `W_U`, its activations.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when the store was not gathered at an `mlp.hook_post`;
    /// [`LensError::OutOfRange`] for a neuron `>= d_mlp`.
    pub fn neuron(
        model: &HookedTransformer,
        store: &ActivationStore,
        neuron: usize,
        k: usize,
        window: usize,
    ) -> Result<FeatureView> {
        let HookPoint::MlpPost(l) = store.hook else {
            return Err(LensError::mismatch(
                "neuron view",
                format!("the store holds {}; gather it at blocks.L.mlp.hook_post (collect_activations) to view neurons of layer L", store.hook),
            ));
        };
        let d_mlp = store.acts.dim(1)?;
        if neuron >= d_mlp {
            return Err(LensError::OutOfRange {
                what: "neuron".into(),
                index: neuron,
                len: d_mlp,
            });
        }
        let acts: Vec<f32> = store.acts.narrow(1, neuron, 1)?.squeeze(1)?.to_vec1()?;
        let write = model.weights.layers[l].w_out.t()?.i(neuron)?;
        let f = store.per_context(&acts)?;
        let mut view = Self::assemble(
            model,
            format!("{} (neurons)", store.hook),
            Some(write),
            &store.tokens,
            f,
            neuron,
            k,
            window,
        )?;
        view.activations = acts;
        Ok(view)
    }

    /// A direction's view at any hook point: its projection `acts · direction` over `store`
    /// (top contexts, activations) and, where the store's point lives in the residual stream
    /// (`hook_resid_*`, `hook_attn_out`, `hook_mlp_out`, `hook_embed`), the tokens the direction
    /// promotes and suppresses through `W_U` — a probe's direction or a steering vector.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for a direction whose width is not the store's.
    pub fn direction(
        model: &HookedTransformer,
        store: &ActivationStore,
        direction: &Tensor,
        k: usize,
        window: usize,
    ) -> Result<FeatureView> {
        let d = store.acts.dim(1)?;
        if direction.dims() != [d] {
            return Err(LensError::mismatch(
                "direction view",
                format!(
                    "a direction of shape {:?} for a store of width {d} at {}",
                    direction.dims(),
                    store.hook
                ),
            ));
        }
        let dir = direction
            .to_dtype(DType::F32)?
            .to_device(store.acts.device())?;
        let acts: Vec<f32> = store
            .acts
            .matmul(&dir.unsqueeze(1)?)?
            .squeeze(1)?
            .to_vec1()?;
        let in_resid = matches!(
            store.hook,
            HookPoint::Embed
                | HookPoint::ResidPre(_)
                | HookPoint::ResidMid(_)
                | HookPoint::ResidPost(_)
                | HookPoint::AttnOut(_)
                | HookPoint::MlpOut(_)
        ) && d == model.cfg.d_model;
        let f = store.per_context(&acts)?;
        let mut view = Self::assemble(
            model,
            format!("{} (a direction)", store.hook),
            in_resid.then_some(dir),
            &store.tokens,
            f,
            0,
            k,
            window,
        )?;
        view.activations = acts;
        Ok(view)
    }

    /// The view from `f [batch][pos]`, the feature's activation at each position of `tokens`,
    /// and `write`, the residual-stream direction it writes (`[d_model]`, for the tokens it
    /// promotes and suppresses through `W_U`), if any.
    #[allow(clippy::too_many_arguments)] // the view's parts: what, where, how many
    fn assemble(
        model: &HookedTransformer,
        of: String,
        write: Option<Tensor>,
        tokens: &Tokens,
        f: Vec<Vec<f32>>,
        feature: usize,
        k: usize,
        window: usize,
    ) -> Result<FeatureView> {
        let lengths = tokens.lengths();
        let mut cells = Vec::new();
        let mut activations = Vec::new();
        for (b, row) in f.iter().enumerate() {
            for (p, &a) in row.iter().enumerate().take(lengths[b]) {
                activations.push(a);
                if a > 0.0 {
                    cells.push((b, p, a));
                }
            }
        }
        cells.sort_by(|x, y| y.2.total_cmp(&x.2));
        let mut contexts = Vec::new();
        for &(b, p, a) in cells.iter().take(k) {
            let lo = p.saturating_sub(window);
            let hi = (p + window + 1).min(lengths[b]);
            let strs = model.ids_to_str_tokens(&tokens.row(b)?[lo..hi])?;
            contexts.push(Context {
                prompt: b,
                pos: p,
                act: a,
                tokens: strs.into_iter().zip(f[b][lo..hi].iter().copied()).collect(),
                peak: p - lo,
            });
        }
        let (promoted, suppressed) = match write {
            Some(dir) => {
                let logits: Vec<f32> = crate::engine::ops::linear(
                    &dir.to_dtype(model.dtype())?.unsqueeze(0)?,
                    &model.weights.w_u,
                    None,
                )?
                .squeeze(0)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
                let name = |(i, v): (usize, f32)| -> Result<(String, f32)> {
                    let s = model
                        .ids_to_str_tokens(&[i as u32])?
                        .pop()
                        .unwrap_or_default();
                    Ok((s, v))
                };
                (
                    extremes(&logits, k, true)
                        .into_iter()
                        .map(name)
                        .collect::<Result<Vec<_>>>()?,
                    extremes(&logits, k, false)
                        .into_iter()
                        .map(name)
                        .collect::<Result<Vec<_>>>()?,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(FeatureView {
            feature,
            sae: of,
            contexts,
            promoted,
            suppressed,
            activations,
        })
    }

    /// The activation histogram (positive activations, `bins` equal bins; the count of zeros in
    /// the title).
    pub fn histogram(&self, bins: usize) -> Figure {
        let pos: Vec<f32> = self
            .activations
            .iter()
            .copied()
            .filter(|&a| a > 0.0)
            .collect();
        let zeros = self.activations.len() - pos.len();
        let max = pos.iter().copied().fold(0f32, f32::max).max(1e-12);
        let bins = bins.max(1);
        let mut counts = vec![0f32; bins];
        for a in &pos {
            counts[((a / max * bins as f32) as usize).min(bins - 1)] += 1.0;
        }
        let labels = (0..bins)
            .map(|i| format!("{:.2}", max * (i as f32 + 0.5) / bins as f32))
            .collect();
        Figure::bar(
            labels,
            counts,
            &format!(
                "Feature {}: activations over {} positions ({} at zero)",
                self.feature,
                self.activations.len(),
                zeros
            ),
        )
        .axes("activation", "positions")
        .size(640, 300)
    }

    /// The view as one HTML block: shaded contexts, the promoted and suppressed tokens, the
    /// histogram.
    ///
    /// # Errors
    /// [`LensError::Drawing`] if plotters fails to draw the histogram (see [`Figure::to_svg`]); the
    /// rest is string formatting.
    pub fn to_html(&self) -> Result<String> {
        let max = self
            .contexts
            .iter()
            .map(|c| c.act)
            .fold(0f32, f32::max)
            .max(1e-12);
        let mut h = format!(
            "<div class=\"candlelens-feature\"><p><b>Feature {} of {}</b></p><p>Top-activating contexts (orange: how strongly it fires on each token):</p>",
            self.feature,
            escape(&self.sae)
        );
        for c in &self.contexts {
            h.push_str("<div style=\"font-family:monospace;margin:2px 0\">");
            h.push_str(&format!(
                "<span style=\"color:#666\">{:>7.3} prompt {} pos {}&nbsp;&nbsp;</span>",
                c.act, c.prompt, c.pos
            ));
            for (i, (t, a)) in c.tokens.iter().enumerate() {
                let alpha = (a / max).clamp(0.0, 1.0);
                let border = if i == c.peak {
                    "border-bottom:2px solid #c60;"
                } else {
                    ""
                };
                h.push_str(&format!(
                    "<span title=\"{a:.3}\" style=\"background:rgba(255,140,0,{alpha:.2});{border}white-space:pre\">{}</span>",
                    escape(t)
                ));
            }
            h.push_str("</div>");
        }
        if self.contexts.is_empty() {
            h.push_str("<p>(it does not fire on these prompts)</p>");
        }
        if !self.promoted.is_empty() {
            let mut t = Table::new(
                "Logit effects of the decoder direction (W_dec[f] · W_U)",
                ["promoted", "", "suppressed", ""],
            );
            for ((a, x), (b, y)) in self.promoted.iter().zip(&self.suppressed) {
                t.row([
                    format!("{a:?}"),
                    format!("{x:+.3}"),
                    format!("{b:?}"),
                    format!("{y:+.3}"),
                ]);
            }
            h.push_str(&t.to_html());
        }
        h.push_str(&self.histogram(20).to_html()?);
        h.push_str("</div>");
        Ok(h)
    }

    /// Shows the view inline in an evcxr notebook (one HTML block).
    pub fn evcxr_display(&self) {
        match self.to_html() {
            Ok(html) => crate::viz::display("text/html", &html),
            Err(e) => eprintln!("Error: {e}"),
        }
    }
}

/// The strongest features of prompt `b` at position `pos` (activations `[batch, pos,
/// d_sae]`, e.g. a cache's `hook_sae_acts_post`) as a table.
///
/// # Errors
/// [`LensError::OutOfRange`] for a prompt or position beyond `acts`.
pub fn top_features_table(
    acts: &Tensor,
    b: usize,
    pos: usize,
    k: usize,
    title: &str,
) -> Result<Table> {
    let (nb, np, _) = acts.dims3()?;
    if b >= nb {
        return Err(LensError::OutOfRange {
            what: "prompt".into(),
            index: b,
            len: nb,
        });
    }
    if pos >= np {
        return Err(LensError::OutOfRange {
            what: "position".into(),
            index: pos,
            len: np,
        });
    }
    let v: Vec<f32> = acts.i((b, pos))?.to_dtype(DType::F32)?.to_vec1()?;
    let mut t = Table::new(title, ["rank", "feature", "activation"]);
    for (r, (f, a)) in extremes(&v, k, true)
        .into_iter()
        .filter(|x| x.1 > 0.0)
        .enumerate()
    {
        t.row([(r + 1).to_string(), f.to_string(), format!("{a:.4}")]);
    }
    Ok(t)
}

/// The feature-density histogram SAELens and Neuronpedia show: how many features fire at each
/// frequency, on a log₁₀ scale (`density` from [`ActivationStore::feature_density`]); dead
/// features are counted in the title, not the bars.
pub fn density_histogram(density: &[f32], title: &str) -> Figure {
    let alive: Vec<f32> = density.iter().copied().filter(|&d| d > 0.0).collect();
    let dead = density.len() - alive.len();
    // half-decade bins from 1e-6 to 1
    let lo = -6.0f32;
    let bins = 12usize;
    let mut counts = vec![0f32; bins];
    for d in &alive {
        let b = ((d.log10() - lo) * 2.0)
            .floor()
            .clamp(0.0, (bins - 1) as f32) as usize;
        counts[b] += 1.0;
    }
    let labels = (0..bins)
        .map(|i| format!("{:.1}", lo + i as f32 / 2.0))
        .collect();
    Figure::bar(
        labels,
        counts,
        &format!(
            "{title}: {} features, {dead} dead (never fire)",
            density.len()
        ),
    )
    .axes("log10(firing frequency), bin start", "features")
    .size(640, 300)
}
