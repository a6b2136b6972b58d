//! Edge attribution patching (EAP; Syed et al. 2023) and its integrated-gradients variant
//! (EAP-IG; Hanna et al. 2024): the first-order effect of every edge of the computational
//! graph between components, from one backward pass.
//!
//! Upstream nodes write into the residual stream: the embedding, each attention head and each
//! MLP. Downstream nodes read from it: each head's queries, keys and values (each through its
//! own copy of the residual stream, keys and values per query head), each MLP, and the logits.
//! For an edge `u → d`,
//!
//! `score(u → d) = Σ Δu · ∂m/∂(input of d) / (m_clean − m_corrupted)`,
//!
//! the sum over prompts, positions and `d_model`, where `Δu` is what `u` changes in the
//! residual stream when its clean activation replaces the corrupted one — for a head, the
//! change of `hook_attn_out` with that head's `hook_z` patched (through the post-norm, for the
//! families that have one), so that edges mean the same on every family — and the gradient is
//! taken at the corrupted run through `d`'s input alone (a zero-valued tap on `d`'s copy).
//!
//! The exact counterpart of a head's edge is path patching with every other head *and* every
//! MLP frozen ([`crate::interp::patching::PathPatcher`] with `freeze_mlps`): the receiver reads
//! the corrupted residual plus `Δu` and nothing else changes upstream.
//! [`AttributionPatcher::verify_edges`] runs it on the strongest head edges.

use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use crate::engine::block::split::SplitTaps;
use crate::engine::block::{BlockKind, Forward, Heads, Stage};
use crate::engine::hooks::{HookPoint, HookSink, NoHooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};
use crate::interp::metrics::GradMetric;
use crate::interp::patching::{PathPatcher, QkvInputs, Receiver, Receivers};
use crate::interp::readout::{Alignment, Readout};

use super::edge_graph::{
    Downstream, Edge, EdgeCheck, EdgeGraph, EdgeVerification, Input, Upstream,
};
use super::verify::{check_threshold, pearson};
use super::{scalar, AttributionPatcher};

/// Replaces the token embedding (the integrated-gradients interpolation).
struct EmbedSink(Option<Tensor>);

impl HookSink for EmbedSink {
    fn wants(&self, hp: &HookPoint) -> bool {
        self.0.is_some() && *hp == HookPoint::Embed
    }
    fn visit(&mut self, _: &HookPoint, act: Tensor) -> Result<Tensor> {
        Ok(self.0.take().unwrap_or(act))
    }
}

/// The gradients of one run at every downstream node's input copy: per layer `[batch, pos,
/// head, d_model]` for q, k and v and `[batch, pos, d_model]` for the MLP, and the final
/// residual's.
struct DownGrads {
    q: Vec<Tensor>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    mlp: Vec<Tensor>,
    logits: Tensor,
}

impl DownGrads {
    fn add(self, o: DownGrads) -> Result<DownGrads> {
        let sum = |a: Vec<Tensor>, b: Vec<Tensor>| -> Result<Vec<Tensor>> {
            a.into_iter().zip(b).map(|(x, y)| Ok((x + y)?)).collect()
        };
        Ok(DownGrads {
            q: sum(self.q, o.q)?,
            k: sum(self.k, o.k)?,
            v: sum(self.v, o.v)?,
            mlp: sum(self.mlp, o.mlp)?,
            logits: (self.logits + o.logits)?,
        })
    }

    fn scale(self, s: f64) -> Result<DownGrads> {
        let f = |a: Vec<Tensor>| -> Result<Vec<Tensor>> {
            a.into_iter().map(|x| Ok((x * s)?)).collect()
        };
        Ok(DownGrads {
            q: f(self.q)?,
            k: f(self.k)?,
            v: f(self.v)?,
            mlp: f(self.mlp)?,
            logits: (self.logits * s)?,
        })
    }
}

/// A forward of `tokens` (embedding replaced by `embed` when given) in which every downstream
/// node reads the residual stream through its own zero-valued tap; the metric's value and the
/// taps' gradients.
fn edge_grad_run(
    model: &HookedTransformer,
    tokens: &Tokens,
    embed: Option<Tensor>,
    metric: &GradMetric,
) -> Result<(f32, DownGrads)> {
    let cfg = &model.cfg;
    let (b, p) = (tokens.batch(), tokens.max_len());
    let (h, d) = (cfg.n_heads, cfg.d_model);
    let (dt, dev) = (model.dtype(), model.device());
    let ctx = model.context_for(tokens)?;
    let mut x = model.embed(tokens, &mut EmbedSink(embed))?;
    let mut taps: Vec<[Var; 4]> = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let block = model.block(l)?;
        let t4 = || Var::zeros((b, p, h, d), dt, dev);
        let [tq, tk, tv, tm] = [t4()?, t4()?, t4()?, Var::zeros((b, p, d), dt, dev)?];
        let split = SplitTaps {
            q: tq.as_tensor(),
            k: tk.as_tensor(),
            v: tv.as_tensor(),
        };
        let mut f = Forward::new(&ctx, 0, None);
        f.heads = Heads::Split(&split);
        f.mlp_tap = Some(tm.as_tensor());
        x = block.wire(Stage::Pre, x, &mut f)?;
        taps.push([tq, tk, tv, tm]);
    }
    let tf = Var::zeros((b, p, d), dt, dev)?;
    let logits = model.unembed(&(x + tf.as_tensor())?, tokens, LogitsAt::Last, &mut NoHooks)?;
    let m = scalar(metric, &logits)?;
    let grads = m.backward()?;
    let value = m.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let grad = |v: &Var| -> Result<Tensor> {
        Ok(match grads.get(v.as_tensor()) {
            Some(g) => g.detach(),
            None => v.as_tensor().zeros_like()?,
        })
    };
    let mut out = DownGrads {
        q: Vec::new(),
        k: Vec::new(),
        v: Vec::new(),
        mlp: Vec::new(),
        logits: grad(&tf)?,
    };
    for [tq, tk, tv, tm] in &taps {
        out.q.push(grad(tq)?);
        out.k.push(grad(tk)?);
        out.v.push(grad(tv)?);
        out.mlp.push(grad(tm)?);
    }
    Ok((value, out))
}

impl AttributionPatcher {
    /// The downstream gradients, at the corrupted run or averaged over the integrated-gradients
    /// interpolation of this attribution.
    fn down_grads(&self) -> Result<DownGrads> {
        let model = &*self.model;
        model.ensure_fits(
            &self.corrupt_tokens,
            &crate::engine::runtime::memory::Workload::Gradients { split_heads: true },
        )?;
        match self.ig_steps {
            None => Ok(edge_grad_run(model, &self.corrupt_tokens, None, &self.metric)?.1),
            Some(steps) => {
                let e_clean = self.clean.at(HookPoint::Embed)?;
                let e_corrupt = self.corrupt.at(HookPoint::Embed)?;
                let delta = (e_clean - e_corrupt)?;
                let mut sum: Option<DownGrads> = None;
                for step in 1..=steps {
                    let alpha = step as f64 / steps as f64;
                    let embed = (e_corrupt + (&delta * alpha)?)?;
                    let (_, g) =
                        edge_grad_run(model, &self.corrupt_tokens, Some(embed), &self.metric)?;
                    sum = Some(match sum {
                        Some(s) => s.add(g)?,
                        None => g,
                    });
                }
                sum.ok_or_else(|| LensError::Internal("no integrated-gradients step".into()))?
                    .scale(1.0 / steps as f64)
            }
        }
    }

    /// What each upstream node changes in the residual stream, `[batch, pos, d_model]`, with
    /// the nodes in order: embed, then per layer its heads and its MLP.
    fn upstream_deltas(&self) -> Result<Vec<(Upstream, Tensor)>> {
        let cfg = &self.model.cfg;
        let diff =
            |hp: HookPoint| -> Result<Tensor> { Ok((self.clean.at(hp)? - self.corrupt.at(hp)?)?) };
        let mut out = vec![(Upstream::Embed, diff(HookPoint::ResidPre(0))?)];
        for l in 0..cfg.n_layers {
            let block = self.model.block(l)?;
            let cz = self.clean.at(HookPoint::Z(l))?;
            let kz = self.corrupt.at(HookPoint::Z(l))?;
            let base = self.corrupt.at(HookPoint::AttnOut(l))?;
            let dims = kz.dims().to_vec();
            for h in 0..cfg.n_heads {
                let z = kz.slice_assign(
                    &[0..dims[0], 0..dims[1], h..h + 1, 0..dims[3]],
                    &cz.narrow(2, h, 1)?,
                )?;
                out.push((Upstream::Head(l, h), (block.attn_out_from_z(&z)? - base)?));
            }
            out.push((Upstream::Mlp(l), diff(HookPoint::MlpOut(l))?));
        }
        Ok(out)
    }

    /// Edge attribution patching: the score of every edge between an upstream node (embed,
    /// head, MLP) and a downstream node's input (a head's q, k or v, an MLP, the logits) that
    /// it feeds, from one more forward and backward pass (one per step with integrated
    /// gradients). See the module docs for the formula.
    ///
    /// # Errors
    /// [`LensError::NoEffect`] when the corruption does not move the metric;
    /// [`LensError::Unsupported`] for a patcher with options of its own (hooks, a readout
    /// other than the last token, an alignment: [`Self::with_options`]); tensor errors.
    pub fn edges(&self) -> Result<EdgeGraph> {
        if self.hooks.is_some()
            || self.readout != Readout::Last
            || self.alignment != Alignment::Same
        {
            return Err(LensError::Unsupported {
                what: "edge attribution with an attribution patcher's own options (hooks, a readout other than the last token, an alignment)".into(),
                fix: "build it with AttributionPatcher::new; node attribution (nodes, verify) honours those options".into(),
            });
        }
        let cfg = &self.model.cfg;
        let (c, k) = (self.clean_value, self.corrupt_value);
        self.check_effect()?;
        let t0 = Instant::now();
        let g = self.down_grads()?;
        let ups = self.upstream_deltas()?;
        // downstream nodes in order, with their gradients [batch, pos, d_model]
        let mut downs: Vec<(Downstream, Tensor)> = Vec::new();
        for l in 0..cfg.n_layers {
            for (input, t) in [
                (Input::Q, &g.q[l]),
                (Input::K, &g.k[l]),
                (Input::V, &g.v[l]),
            ] {
                for h in 0..cfg.n_heads {
                    downs.push((
                        Downstream::Head(l, h, input),
                        t.narrow(2, h, 1)?.squeeze(2)?,
                    ));
                }
            }
            downs.push((Downstream::Mlp(l), g.mlp[l].clone()));
        }
        downs.push((Downstream::Logits, g.logits.clone()));
        let flat = |v: Vec<&Tensor>| -> Result<Tensor> {
            let rows = v
                .into_iter()
                .map(|t| t.to_dtype(DType::F32)?.flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        // [n_up, n_down]: every dot product in one matrix product
        let u = flat(ups.iter().map(|(_, t)| t).collect())?;
        let dn = flat(downs.iter().map(|(_, t)| t).collect())?;
        let scores: Vec<Vec<f32>> = u.matmul(&dn.t()?)?.to_vec2()?;
        let mut edges = Vec::new();
        for (i, (u, _)) in ups.iter().enumerate() {
            for (j, (d, _)) in downs.iter().enumerate() {
                if feeds(BlockKind::of(cfg), *u, *d) {
                    edges.push(Edge {
                        from: *u,
                        to: *d,
                        score: scores[i][j] / (c - k),
                    });
                }
            }
        }
        edges.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
        let seconds = t0.elapsed().as_secs_f64();
        let forward = self.seconds / self.forward_equivalents.max(1e-9);
        Ok(EdgeGraph {
            edges,
            clean: c,
            corrupted: k,
            ig_steps: self.ig_steps,
            seconds,
            forward_equivalents: seconds / forward.max(1e-9),
            n_layers: cfg.n_layers,
            n_heads: cfg.n_heads,
        })
    }

    /// The edges' self-check: for the `k` strongest edges from a head into a head's input or
    /// the logits, the exact value — path patching from that head to that input with every
    /// other head and every MLP frozen — beside the estimate, their correlation, and how many
    /// are off by more than `threshold` (normalised units).
    ///
    /// # Errors
    /// As [`Self::edges`]; [`LensError::BadParameter`] for a negative or non-finite threshold.
    pub fn verify_edges(
        &self,
        graph: &EdgeGraph,
        k: usize,
        threshold: f32,
    ) -> Result<EdgeVerification> {
        check_threshold(threshold)?;
        let mut pp = PathPatcher::from_patcher(self.exact_patcher()?);
        pp.freeze_mlps = true;
        let mut checks = Vec::new();
        for e in graph.edges.iter() {
            if checks.len() == k {
                break;
            }
            let Upstream::Head(l, h) = e.from else {
                continue;
            };
            let receivers = match e.to {
                Downstream::Logits => Receivers::Logits,
                Downstream::Head(rl, rh, input) => Receivers::Heads(vec![Receiver {
                    layer: rl,
                    head: rh,
                    inputs: QkvInputs {
                        q: input == Input::Q,
                        k: input == Input::K,
                        v: input == Input::V,
                    },
                }]),
                Downstream::Mlp(_) => continue,
            };
            checks.push(EdgeCheck {
                from: e.from.to_string(),
                to: e.to.to_string(),
                estimate: e.score,
                exact: pp.patch(&[(l, h)], &receivers)?,
            });
        }
        let xs: Vec<f64> = checks.iter().map(|c| c.estimate as f64).collect();
        let ys: Vec<f64> = checks.iter().map(|c| c.exact as f64).collect();
        let errs = checks.iter().map(|c| (c.estimate - c.exact).abs());
        Ok(EdgeVerification {
            correlation: pearson(&xs, &ys),
            max_abs_error: errs.clone().fold(0.0, f32::max),
            wrong: errs.filter(|&e| e > threshold).count(),
            threshold,
            edges: checks,
        })
    }
}

/// Whether `u` writes into the residual stream that `d` reads: an earlier layer, or a head
/// feeding its own layer's MLP in a sequential block.
fn feeds(kind: BlockKind, u: Upstream, d: Downstream) -> bool {
    let dl = match d {
        Downstream::Head(l, _, _) => l,
        Downstream::Mlp(l) => l,
        Downstream::Logits => return true,
    };
    match u {
        Upstream::Embed => true,
        Upstream::Mlp(l) => l < dl,
        Upstream::Head(l, _) => {
            l < dl || (kind.has_resid_mid() && l == dl && matches!(d, Downstream::Mlp(_)))
        }
    }
}
