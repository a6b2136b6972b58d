//! Hook points with TransformerLens names, and the hooks a forward pass calls at them.
//!
//! A [`HookPoint`] parses from and prints to the TransformerLens string
//! (`"blocks.3.hook_resid_pre"`), so Python notebooks port without renaming. Every run fires
//! its points into a [`HookSink`]: a [`Hooks`] set (user closures that read an activation and
//! may return a replacement, with an audit of what they did), an [`ActivationCache`] recording
//! them (`run_with_cache`), or both chained.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::engine::config::ModelConfig;
use crate::error::{did_you_mean, LensError, Result};

mod axes;
pub mod cache;
mod context;
mod user;

pub(crate) use axes::HookAxis;
pub use cache::ActivationCache;
pub use context::HookContext;
pub use user::{HookAudit, Hooks};

/// The part of a block (or of the model) a hook sits in. Layer-indexed points carry the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed` — token embedding (times the embedding scale for Gemma) `[batch, pos, d_model]`.
    Embed,
    /// `hook_pos_embed` — learned positional embedding `[batch, pos, d_model]` (GPT-2 family).
    PosEmbed,
    /// `blocks.{l}.hook_resid_pre` — the residual stream entering block `l` `[batch, pos, d_model]`.
    ResidPre(usize),
    /// `blocks.{l}.ln1.hook_scale` — the norm's divisor `[batch, pos, 1]`.
    Ln1Scale(usize),
    /// `blocks.{l}.ln1.hook_normalized` — the attention input `[batch, pos, d_model]`.
    Ln1Normalized(usize),
    /// `blocks.{l}.attn.hook_q` — queries before rotary `[batch, pos, head, d_head]`.
    Q(usize),
    /// `blocks.{l}.attn.hook_k` — keys before rotary `[batch, pos, kv_head, d_head]`.
    K(usize),
    /// `blocks.{l}.attn.hook_v` — values `[batch, pos, kv_head, d_head]`.
    V(usize),
    /// `blocks.{l}.attn.hook_rot_q` — queries after rotary `[batch, pos, head, d_head]`.
    RotQ(usize),
    /// `blocks.{l}.attn.hook_rot_k` — keys after rotary `[batch, pos, kv_head, d_head]`.
    RotK(usize),
    /// `blocks.{l}.attn.hook_attn_scores` — scaled, capped, masked scores `[batch, head, q, k]`.
    AttnScores(usize),
    /// `blocks.{l}.attn.hook_pattern` — softmax of the scores `[batch, head, q, k]`.
    Pattern(usize),
    /// `blocks.{l}.attn.hook_z` — pattern-weighted values `[batch, pos, head, d_head]`.
    Z(usize),
    /// `blocks.{l}.attn.hook_result` — each head's output `z W_O` `[batch, pos, head, d_model]`.
    /// Opt-in, as in TransformerLens: computed only when a hook or cache filter asks for it.
    Result(usize),
    /// `blocks.{l}.ln1_post.hook_scale` — the attention post-norm's divisor `[batch, pos, 1]` (Gemma 2/3).
    Ln1PostScale(usize),
    /// `blocks.{l}.ln1_post.hook_normalized` — attention output after the post-norm (Gemma 2/3).
    Ln1PostNormalized(usize),
    /// `blocks.{l}.hook_attn_out` — what attention adds to the residual `[batch, pos, d_model]`.
    AttnOut(usize),
    /// `blocks.{l}.hook_resid_mid` — residual after attention `[batch, pos, d_model]`.
    ResidMid(usize),
    /// `blocks.{l}.ln2.hook_scale` — `[batch, pos, 1]`.
    Ln2Scale(usize),
    /// `blocks.{l}.ln2.hook_normalized` — the MLP input `[batch, pos, d_model]`.
    Ln2Normalized(usize),
    /// `blocks.{l}.mlp.hook_router_logits` — a mixture of experts' router logits
    /// `[batch, pos, n_experts]` (Mixtral, Qwen MoE).
    RouterLogits(usize),
    /// `blocks.{l}.mlp.hook_expert_weights` — the routing weights `[batch, pos, n_experts]`:
    /// zero for the experts a token does not use. Replace it to reroute.
    ExpertWeights(usize),
    /// `blocks.{l}.mlp.hook_pre` — input of the nonlinearity (the gate for gated MLPs) `[batch, pos, d_mlp]`.
    MlpPre(usize),
    /// `blocks.{l}.mlp.hook_pre_linear` — the linear (ungated) branch of a gated MLP `[batch, pos, d_mlp]`.
    MlpPreLinear(usize),
    /// `blocks.{l}.mlp.hook_post` — MLP hidden activation `[batch, pos, d_mlp]`.
    MlpPost(usize),
    /// `blocks.{l}.ln2_post.hook_scale` — the MLP post-norm's divisor `[batch, pos, 1]` (Gemma 2/3).
    Ln2PostScale(usize),
    /// `blocks.{l}.ln2_post.hook_normalized` — MLP output after the post-norm (Gemma 2/3).
    Ln2PostNormalized(usize),
    /// `blocks.{l}.hook_mlp_out` — what the MLP adds to the residual `[batch, pos, d_model]`.
    MlpOut(usize),
    /// `blocks.{l}.hook_resid_post` — residual leaving block `l` `[batch, pos, d_model]`.
    ResidPost(usize),
    /// `ln_final.hook_scale` — `[batch, pos, 1]`.
    LnFinalScale,
    /// `ln_final.hook_normalized` — the unembedding's input `[batch, pos, d_model]`.
    LnFinalNormalized,
}

/// Block-level hook suffixes, in forward order, with their constructors.
/// Builds a layer's hook point.
type MakeHook = fn(usize) -> HookPoint;

const BLOCK_HOOKS: &[(&str, MakeHook)] = &[
    ("hook_resid_pre", HookPoint::ResidPre),
    ("ln1.hook_scale", HookPoint::Ln1Scale),
    ("ln1.hook_normalized", HookPoint::Ln1Normalized),
    ("attn.hook_q", HookPoint::Q),
    ("attn.hook_k", HookPoint::K),
    ("attn.hook_v", HookPoint::V),
    ("attn.hook_rot_q", HookPoint::RotQ),
    ("attn.hook_rot_k", HookPoint::RotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::Pattern),
    ("attn.hook_z", HookPoint::Z),
    ("attn.hook_result", HookPoint::Result),
    ("ln1_post.hook_scale", HookPoint::Ln1PostScale),
    ("ln1_post.hook_normalized", HookPoint::Ln1PostNormalized),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("ln2.hook_scale", HookPoint::Ln2Scale),
    ("ln2.hook_normalized", HookPoint::Ln2Normalized),
    ("mlp.hook_router_logits", HookPoint::RouterLogits),
    ("mlp.hook_expert_weights", HookPoint::ExpertWeights),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("ln2_post.hook_scale", HookPoint::Ln2PostScale),
    ("ln2_post.hook_normalized", HookPoint::Ln2PostNormalized),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

const GLOBAL_HOOKS: &[(&str, HookPoint)] = &[
    ("hook_embed", HookPoint::Embed),
    ("hook_pos_embed", HookPoint::PosEmbed),
    ("ln_final.hook_scale", HookPoint::LnFinalScale),
    ("ln_final.hook_normalized", HookPoint::LnFinalNormalized),
];

impl HookPoint {
    /// The layer of a block hook; `None` for model-level hooks.
    pub fn layer(&self) -> Option<usize> {
        use HookPoint::*;
        match *self {
            Embed | PosEmbed | LnFinalScale | LnFinalNormalized => None,
            ResidPre(l) | Ln1Scale(l) | Ln1Normalized(l) | Q(l) | K(l) | V(l) | RotQ(l)
            | RotK(l) | AttnScores(l) | Pattern(l) | Z(l) | Result(l) | Ln1PostScale(l)
            | Ln1PostNormalized(l) | AttnOut(l) | ResidMid(l) | Ln2Scale(l) | Ln2Normalized(l)
            | RouterLogits(l) | ExpertWeights(l) | MlpPre(l) | MlpPreLinear(l) | MlpPost(l)
            | Ln2PostScale(l) | Ln2PostNormalized(l) | MlpOut(l) | ResidPost(l) => Some(l),
        }
    }

    /// The TransformerLens name without the `blocks.{l}.` prefix (`"hook_resid_pre"`).
    pub fn suffix(&self) -> &'static str {
        if let Some((name, _)) = GLOBAL_HOOKS.iter().find(|(_, hp)| hp == self) {
            return name;
        }
        let l = self.layer().unwrap_or(0);
        BLOCK_HOOKS
            .iter()
            .find(|(_, make)| make(l) == *self)
            .map(|(name, _)| *name)
            .unwrap_or("?")
    }

    /// Parses a TransformerLens hook name.
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] with the closest valid name.
    pub fn parse(name: &str) -> Result<HookPoint> {
        if let Some((_, hp)) = GLOBAL_HOOKS.iter().find(|(n, _)| *n == name) {
            return Ok(*hp);
        }
        let unknown = |suggest_for: &str, prefix: &str| {
            let mut names: Vec<String> = GLOBAL_HOOKS.iter().map(|(n, _)| n.to_string()).collect();
            names.extend(BLOCK_HOOKS.iter().map(|(n, _)| format!("{prefix}{n}")));
            LensError::UnknownHook {
                name: name.to_string(),
                hint: did_you_mean(suggest_for, names.iter().map(|s| s.as_str())),
            }
        };
        let Some(rest) = name.strip_prefix("blocks.") else {
            return Err(unknown(name, "blocks.0."));
        };
        let Some((layer, suffix)) = rest.split_once('.') else {
            return Err(unknown(name, "blocks.0."));
        };
        let Ok(layer) = layer.parse::<usize>() else {
            return Err(unknown(name, "blocks.0."));
        };
        BLOCK_HOOKS
            .iter()
            .find(|(n, _)| *n == suffix)
            .map(|(_, make)| make(layer))
            .ok_or_else(|| unknown(name, &format!("blocks.{layer}.")))
    }

    /// Parses a name and checks its layer against the model.
    ///
    /// # Errors
    /// [`LensError::UnknownHook`], or [`LensError::LayerOutOfRange`].
    pub fn parse_for(name: &str, cfg: &ModelConfig) -> Result<HookPoint> {
        let hp = HookPoint::parse(name)?;
        hp.check(cfg)?;
        Ok(hp)
    }

    /// Errors if the model never fires this hook: its layer does not exist, or the architecture
    /// has no such point (`hook_pos_embed` on a rotary model, `ln1_post.*` without post-norms,
    /// `hook_rot_q` without rotary embeddings). A hook there would silently never run.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`], [`LensError::HookNotOnModel`] listing the points the
    /// model has.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        if let Some(l) = self.layer() {
            if l >= cfg.n_layers {
                return Err(LensError::LayerOutOfRange {
                    layer: l,
                    n_layers: cfg.n_layers,
                });
            }
        }
        if HookPoint::all_for(cfg).iter().any(|(hp, _)| hp == self) {
            return Ok(());
        }
        let layer0: Vec<String> = HookPoint::all_for(cfg)
            .iter()
            .filter(|(hp, _)| hp.layer().is_none_or(|l| l == 0))
            .map(|(hp, _)| hp.to_string())
            .collect();
        Err(LensError::HookNotOnModel {
            hook: self.to_string(),
            architecture: cfg.architecture.to_string(),
            available: layer0.join(", "),
        })
    }

    /// Every hook point the model fires, in forward order, with its TransformerLens shape
    /// written symbolically (`[batch, pos, d_model]`).
    pub fn all_for(cfg: &ModelConfig) -> Vec<(HookPoint, String)> {
        let mut out = vec![(HookPoint::Embed, "[batch, pos, d_model]".to_string())];
        if cfg.positional == crate::engine::config::Positional::Learned {
            out.push((HookPoint::PosEmbed, "[batch, pos, d_model]".into()));
        }
        for l in 0..cfg.n_layers {
            for (_, make) in BLOCK_HOOKS {
                let hp = make(l);
                if let Some(shape) = hp.shape(cfg) {
                    out.push((hp, shape));
                }
            }
        }
        out.push((HookPoint::LnFinalScale, "[batch, pos, 1]".into()));
        out.push((HookPoint::LnFinalNormalized, "[batch, pos, d_model]".into()));
        out
    }

    /// Symbolic shape of this hook on a model, or `None` if the model never fires it.
    pub fn shape(&self, cfg: &ModelConfig) -> Option<String> {
        use HookPoint::*;
        let (h, kv, dh, dm, dmlp) = (
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head,
            cfg.d_model,
            cfg.d_mlp,
        );
        let rotary = matches!(cfg.positional, crate::engine::config::Positional::Rotary(_));
        // a parallel block has no resid_mid, and its ln2 only where the MLP has its own norm;
        // a block without pre-norms (OLMo 2) has neither ln1 nor ln2
        let kind = crate::engine::block::kind::BlockKind::of(cfg);
        let mid = kind.has_resid_mid();
        let ln1 = cfg.pre_norms;
        let ln2 = cfg.pre_norms && kind.has_ln2();
        Some(match self {
            Embed | ResidPre(_) | AttnOut(_) | MlpOut(_) | ResidPost(_) | LnFinalNormalized => {
                format!("[batch, pos, {dm}]")
            }
            Ln1Normalized(_) if ln1 => format!("[batch, pos, {dm}]"),
            ResidMid(_) if mid => format!("[batch, pos, {dm}]"),
            Ln2Normalized(_) if ln2 => format!("[batch, pos, {dm}]"),
            PosEmbed if !rotary => format!("[batch, pos, {dm}]"),
            LnFinalScale => "[batch, pos, 1]".into(),
            Ln1Scale(_) if ln1 => "[batch, pos, 1]".into(),
            Ln2Scale(_) if ln2 => "[batch, pos, 1]".into(),
            Q(_) => format!("[batch, pos, {h}, {dh}]"),
            RotQ(_) if rotary => format!("[batch, pos, {h}, {dh}]"),
            K(_) | V(_) => format!("[batch, pos, {kv}, {dh}]"),
            RotK(_) if rotary => format!("[batch, pos, {kv}, {dh}]"),
            AttnScores(_) | Pattern(_) => format!("[batch, {h}, q_pos, k_pos]"),
            Z(_) => format!("[batch, pos, {h}, {dh}]"),
            Result(_) => format!("[batch, pos, {h}, {dm}] (opt-in)"),
            Ln1PostNormalized(_) | Ln2PostNormalized(_) if cfg.post_norms => {
                format!("[batch, pos, {dm}]")
            }
            Ln1PostScale(_) | Ln2PostScale(_) if cfg.post_norms => "[batch, pos, 1]".into(),
            MlpPre(_) | MlpPost(_) => format!("[batch, pos, {dmlp}]"),
            RouterLogits(_) | ExpertWeights(_) if cfg.moe.is_some() => {
                format!(
                    "[batch, pos, {}]",
                    cfg.moe.as_ref().map_or(0, |m| m.n_experts)
                )
            }
            MlpPreLinear(_) if cfg.gated_mlp => format!("[batch, pos, {dmlp}]"),
            _ => return None,
        })
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer() {
            Some(l) => write!(f, "blocks.{l}.{}", self.suffix()),
            None => f.write_str(self.suffix()),
        }
    }
}

impl FromStr for HookPoint {
    type Err = LensError;
    fn from_str(s: &str) -> Result<Self> {
        HookPoint::parse(s)
    }
}

/// Something the forward pass calls at every hook point.
///
/// `wants` is asked first so that nothing is copied or computed (e.g. `hook_result`) for
/// points no one reads. `begin` is told, before a run (or each step of one, in generation),
/// which prompts it holds and which positions its activations cover.
pub trait HookSink {
    /// Whether this sink reads or replaces the activation at `point`.
    fn wants(&self, point: &HookPoint) -> bool;
    /// Sees the activation; returns it unchanged or a replacement of the same shape.
    ///
    /// # Errors
    /// Whatever the user's hook returns.
    fn visit(&mut self, point: &HookPoint, act: Tensor) -> Result<Tensor>;
    /// Where the run that follows is: its prompts and positions. Sinks that do not need it
    /// ignore it.
    fn begin(&mut self, _ctx: &HookContext) {}
    /// Checks, before a run, that every point this sink names is one `cfg`'s model fires.
    ///
    /// # Errors
    /// [`LensError::HookNotOnModel`] / [`LensError::LayerOutOfRange`] for a named point the
    /// model never fires.
    fn check(&self, _cfg: &ModelConfig) -> Result<()> {
        Ok(())
    }
}

/// A sink that does nothing: the plain forward pass.
pub struct NoHooks;

impl HookSink for NoHooks {
    fn wants(&self, _: &HookPoint) -> bool {
        false
    }
    fn visit(&mut self, _: &HookPoint, act: Tensor) -> Result<Tensor> {
        Ok(act)
    }
}

/// Which hook points a hook or a cache applies to.
pub enum HookFilter {
    /// Every hook point except the opt-in `attn.hook_result` (as TransformerLens caches by
    /// default: its `hook_result` needs `use_attn_result`). The per-head results cost one
    /// `[batch, pos, head, d_model]` tensor per layer; ask for them by name, or with
    /// [`HookFilter::AllWithResult`].
    All,
    /// Every hook point, `attn.hook_result` included.
    AllWithResult,
    /// Exactly these points.
    Points(Vec<HookPoint>),
    /// Any predicate (e.g. `|hp| hp.suffix() == "hook_resid_pre"`).
    Predicate(Box<dyn Fn(&HookPoint) -> bool>),
}

impl HookFilter {
    /// Whether the filter selects `point`.
    pub fn matches(&self, point: &HookPoint) -> bool {
        match self {
            HookFilter::All => !matches!(point, HookPoint::Result(_)),
            HookFilter::AllWithResult => true,
            HookFilter::Points(ps) => ps.contains(point),
            HookFilter::Predicate(f) => f(point),
        }
    }

    /// A filter from TransformerLens names.
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] for a name that does not parse.
    pub fn names<S: AsRef<str>>(names: &[S]) -> Result<HookFilter> {
        let pts = names
            .iter()
            .map(|n| HookPoint::parse(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(HookFilter::Points(pts))
    }

    /// Every point with this suffix, in every layer (`"hook_resid_pre"`).
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] if no hook has that suffix.
    pub fn suffix(suffix: &str) -> Result<HookFilter> {
        let known = BLOCK_HOOKS
            .iter()
            .map(|(n, _)| *n)
            .chain(GLOBAL_HOOKS.iter().map(|(n, _)| *n));
        if !known.clone().any(|n| n == suffix) {
            return Err(LensError::UnknownHook {
                name: suffix.to_string(),
                hint: did_you_mean(suffix, known),
            });
        }
        let suffix = suffix.to_string();
        Ok(HookFilter::Predicate(Box::new(move |hp| {
            hp.suffix() == suffix
        })))
    }
}

impl From<HookPoint> for HookFilter {
    fn from(hp: HookPoint) -> Self {
        HookFilter::Points(vec![hp])
    }
}

impl HookFilter {
    /// A short description for messages and audits.
    pub fn describe(&self) -> String {
        match self {
            HookFilter::All => "all points".into(),
            HookFilter::AllWithResult => "all points with attn.hook_result".into(),
            HookFilter::Points(ps) => ps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            HookFilter::Predicate(_) => "a predicate filter".into(),
        }
    }
}

/// Two sinks in sequence (hooks first, then a cache that sees the hooked value).
pub(crate) struct Chain<'s, A: HookSink + ?Sized, B: HookSink + ?Sized>(
    pub &'s mut A,
    pub &'s mut B,
);

impl<A: HookSink + ?Sized, B: HookSink + ?Sized> HookSink for Chain<'_, A, B> {
    fn wants(&self, point: &HookPoint) -> bool {
        self.0.wants(point) || self.1.wants(point)
    }
    fn begin(&mut self, ctx: &HookContext) {
        self.0.begin(ctx);
        self.1.begin(ctx);
    }
    fn check(&self, cfg: &ModelConfig) -> Result<()> {
        self.0.check(cfg)?;
        self.1.check(cfg)
    }
    fn visit(&mut self, point: &HookPoint, act: Tensor) -> Result<Tensor> {
        let act = if self.0.wants(point) {
            self.0.visit(point, act)?
        } else {
            act
        };
        if self.1.wants(point) {
            self.1.visit(point, act)
        } else {
            Ok(act)
        }
    }
}

/// The block index in a PyTorch module name as the source notebooks write layers
/// (`"transformer.h.15"` for GPT-2, `"model.layers.15"` for Llama / Qwen / Gemma,
/// `"gpt_neox.layers.15"`, or TransformerLens's `"blocks.15"`). Such a module's output is
/// `blocks.{l}.hook_resid_post`.
///
/// # Errors
/// [`LensError::UnknownHook`] for another name, [`LensError::LayerOutOfRange`] beyond the model.
pub fn layer_from_module_name(name: &str, n_layers: usize) -> Result<usize> {
    let prefixes = [
        "transformer.h.",
        "model.layers.",
        "model.language_model.layers.",
        "gpt_neox.layers.",
        "blocks.",
    ];
    let layer = prefixes
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .and_then(|rest| rest.parse::<usize>().ok())
        .ok_or_else(|| LensError::UnknownHook {
            name: name.to_string(),
            hint: format!(
                ". Layer names look like {}",
                prefixes.map(|p| format!("'{p}15'")).join(", ")
            ),
        })?;
    if layer >= n_layers {
        return Err(LensError::LayerOutOfRange { layer, n_layers });
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_map_to_blocks() {
        assert_eq!(layer_from_module_name("transformer.h.15", 48).unwrap(), 15);
        assert_eq!(layer_from_module_name("model.layers.3", 30).unwrap(), 3);
        assert_eq!(layer_from_module_name("blocks.0", 2).unwrap(), 0);
        assert!(matches!(
            layer_from_module_name("transformer.h.48", 48),
            Err(LensError::LayerOutOfRange { .. })
        ));
        assert!(matches!(
            layer_from_module_name("transformer.layer.2", 48),
            Err(LensError::UnknownHook { .. })
        ));
    }

    #[test]
    fn names_round_trip() {
        for (name, _) in BLOCK_HOOKS {
            let full = format!("blocks.7.{name}");
            let hp = HookPoint::parse(&full).unwrap();
            assert_eq!(hp.layer(), Some(7));
            assert_eq!(hp.to_string(), full);
        }
        for (name, hp) in GLOBAL_HOOKS {
            assert_eq!(HookPoint::parse(name).unwrap(), *hp);
            assert_eq!(hp.to_string(), *name);
        }
    }

    #[test]
    fn typo_suggests_the_right_name() {
        let err = HookPoint::parse("blocks.3.hook_resid_pr").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("did you mean 'blocks.3.hook_resid_pre'"),
            "{msg}"
        );
        let err = HookPoint::parse("blocks.x.hook_resid_pre").unwrap_err();
        assert!(matches!(err, LensError::UnknownHook { .. }));
        let err = HookPoint::parse("ln_final.hook_scal").unwrap_err();
        assert!(err.to_string().contains("'ln_final.hook_scale'"), "{err}");
    }

    #[test]
    fn suffix_filter_selects_every_layer() {
        let f = HookFilter::suffix("hook_resid_pre").unwrap();
        assert!(f.matches(&HookPoint::ResidPre(0)));
        assert!(f.matches(&HookPoint::ResidPre(11)));
        assert!(!f.matches(&HookPoint::ResidPost(0)));
        assert!(HookFilter::suffix("hook_resid_pro").is_err());
    }
}
