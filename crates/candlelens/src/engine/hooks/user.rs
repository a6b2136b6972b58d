//! User hooks ([`Hooks`]): functions that read or replace activations at hook points during a
//! run, and the audit of what they did ([`HookAudit`]).

use std::collections::BTreeMap;
use std::fmt;

use candle_core::Tensor;

use crate::engine::config::ModelConfig;
use crate::engine::hooks::{HookContext, HookFilter, HookPoint, HookSink};
use crate::error::{LensError, Result};

/// A user hook: reads the activation at a point (and where the run is), returns `None` to leave
/// it or `Some` to replace it (same shape).
pub type HookFn<'a> =
    Box<dyn FnMut(&Tensor, &HookPoint, &HookContext) -> Result<Option<Tensor>> + 'a>;

/// A set of user hooks for [`crate::HookedTransformer::run_with_hooks`].
///
/// ```no_run
/// # use candlelens::prelude::*;
/// # fn demo(model: &HookedTransformer) -> candlelens::Result<()> {
/// let tokens = model.to_tokens("The Eiffel Tower is in", None)?;
/// let mut hooks = Hooks::new();
/// // zero-ablate the residual stream at position 1 entering block 3
/// hooks.add("blocks.3.hook_resid_pre", |act, _| {
///     let zero = act.narrow(1, 1, 1)?.zeros_like()?;
///     Ok(Some(act.slice_assign(&[0..act.dim(0)?, 1..2, 0..act.dim(2)?], &zero)?))
/// })?;
/// let logits = model.run_with_hooks(&tokens, &mut hooks)?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Hooks<'a> {
    hooks: Vec<(HookFilter, HookFn<'a>)>,
    audit: Audit,
    ctx: HookContext,
}

/// What the hooks did in the last run: the raw counts behind [`HookAudit`].
#[derive(Default)]
struct Audit {
    /// Per point, in forward order: (hook calls, replacements).
    points: BTreeMap<HookPoint, (usize, usize)>,
    /// Per hook (in the order added): how many points it ran on.
    per_hook: Vec<usize>,
}

/// One hook point in a [`HookAudit`]: how many hook calls ran there and how many of them
/// replaced the activation (the rest only read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFiring {
    /// The point.
    pub point: HookPoint,
    /// Hook calls at this point (one per matching hook).
    pub calls: usize,
    /// Calls that returned a replacement.
    pub replaced: usize,
}

/// Which hooks fired in the last run with hooks, and which never did: the check that an
/// intervention touched what it was meant to (a filter whose points the model never reaches —
/// `hook_pos_embed` on a rotary model, a predicate that matches nothing — shows up under
/// `never_fired` instead of leaving a normal-looking run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookAudit {
    /// Points where at least one hook ran, in forward order.
    pub fired: Vec<HookFiring>,
    /// The hooks (described by their filter, numbered in the order added) that ran nowhere.
    pub never_fired: Vec<String>,
}

impl HookAudit {
    /// Whether every hook ran at least once.
    pub fn all_fired(&self) -> bool {
        self.never_fired.is_empty()
    }

    /// Total replacements over all points.
    pub fn replacements(&self) -> usize {
        self.fired.iter().map(|f| f.replaced).sum()
    }
}

impl fmt::Display for HookAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} hook point(s) fired, {} replacement(s)",
            self.fired.len(),
            self.replacements()
        )?;
        for h in &self.fired {
            writeln!(
                f,
                "  {}: {} call(s), {} replaced",
                h.point, h.calls, h.replaced
            )?;
        }
        for n in &self.never_fired {
            writeln!(f, "  never fired: {n}")?;
        }
        Ok(())
    }
}

impl<'a> Hooks<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Hooks::default()
    }

    /// Clears the audit; the model calls this at the start of every run with these hooks.
    pub(crate) fn start_audit(&mut self) {
        self.audit.points.clear();
        self.audit.per_hook = vec![0; self.hooks.len()];
    }

    /// What the hooks did in the last run: the points where they ran (with how many calls
    /// replaced the activation) and the hooks that ran nowhere.
    ///
    /// ```no_run
    /// # use candlelens::prelude::*;
    /// # fn demo(model: &HookedTransformer, tokens: &Tokens) -> candlelens::Result<()> {
    /// let mut hooks = Hooks::new();
    /// hooks.add_filter(HookFilter::suffix("hook_pos_embed")?, |a, _| Ok(Some(a.zeros_like()?)));
    /// model.run_with_hooks(tokens, &mut hooks)?;
    /// // on a rotary model: "never fired: hook 0 (a predicate filter)"
    /// println!("{}", hooks.audit());
    /// # Ok(()) }
    /// ```
    pub fn audit(&self) -> HookAudit {
        let fired = self
            .audit
            .points
            .iter()
            .map(|(p, &(calls, replaced))| HookFiring {
                point: *p,
                calls,
                replaced,
            })
            .collect();
        let never_fired = self
            .hooks
            .iter()
            .enumerate()
            .filter(|(i, _)| self.audit.per_hook.get(*i).copied().unwrap_or(0) == 0)
            .map(|(i, (f, _))| format!("hook {i} ({})", f.describe()))
            .collect();
        HookAudit { fired, never_fired }
    }

    /// Adds a hook at a TransformerLens-named point.
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] if the name does not parse.
    pub fn add<F>(&mut self, name: &str, mut f: F) -> Result<&mut Self>
    where
        F: FnMut(&Tensor, &HookPoint) -> Result<Option<Tensor>> + 'a,
    {
        self.add_with_context(name, move |a, p, _| f(a, p))
    }

    /// Adds a hook at a TransformerLens-named point that also reads where the run is
    /// ([`HookContext`]: which prompt each row is, and which of its positions each index of the
    /// position axis holds — in generation, only the new position).
    ///
    /// ```no_run
    /// # use candlelens::prelude::*;
    /// # fn demo(model: &HookedTransformer, tokens: &Tokens) -> candlelens::Result<()> {
    /// let mut hooks = Hooks::new();
    /// // zero each prompt's own last token entering block 2, wherever its padding puts it
    /// hooks.add_with_context("blocks.2.hook_resid_pre", |act, _, ctx| {
    ///     let mut act = act.clone();
    ///     for row in 0..ctx.batch() {
    ///         if let Some(j) = ctx.index_of(row, -1)? {
    ///             let zero = act.narrow(0, row, 1)?.narrow(1, j, 1)?.zeros_like()?;
    ///             act = act.slice_assign(&[row..row + 1, j..j + 1, 0..act.dim(2)?], &zero)?;
    ///         }
    ///     }
    ///     Ok(Some(act))
    /// })?;
    /// model.run_with_hooks(tokens, &mut hooks)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`LensError::UnknownHook`] if the name does not parse.
    pub fn add_with_context<F>(&mut self, name: &str, f: F) -> Result<&mut Self>
    where
        F: FnMut(&Tensor, &HookPoint, &HookContext) -> Result<Option<Tensor>> + 'a,
    {
        let hp = HookPoint::parse(name)?;
        self.hooks.push((hp.into(), Box::new(f)));
        Ok(self)
    }

    /// Adds a hook on every point a filter selects.
    pub fn add_filter<F>(&mut self, filter: HookFilter, mut f: F) -> &mut Self
    where
        F: FnMut(&Tensor, &HookPoint) -> Result<Option<Tensor>> + 'a,
    {
        self.add_filter_with_context(filter, move |a, p, _| f(a, p))
    }

    /// Adds a hook on every point a filter selects that also reads where the run is.
    pub fn add_filter_with_context<F>(&mut self, filter: HookFilter, f: F) -> &mut Self
    where
        F: FnMut(&Tensor, &HookPoint, &HookContext) -> Result<Option<Tensor>> + 'a,
    {
        self.hooks.push((filter, Box::new(f)));
        self
    }

    /// Number of hooks.
    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The explicitly named points (to check layers against a model before running).
    pub(crate) fn points(&self) -> impl Iterator<Item = &HookPoint> {
        self.hooks.iter().flat_map(|(f, _)| match f {
            HookFilter::Points(ps) => ps.as_slice(),
            _ => &[],
        })
    }
}

impl HookSink for Hooks<'_> {
    fn wants(&self, point: &HookPoint) -> bool {
        self.hooks.iter().any(|(f, _)| f.matches(point))
    }

    fn begin(&mut self, ctx: &HookContext) {
        self.ctx = ctx.clone();
    }

    fn check(&self, cfg: &ModelConfig) -> Result<()> {
        self.points().try_for_each(|hp| hp.check(cfg))
    }

    fn visit(&mut self, point: &HookPoint, mut act: Tensor) -> Result<Tensor> {
        if self.audit.per_hook.len() != self.hooks.len() {
            self.audit.per_hook.resize(self.hooks.len(), 0);
        }
        for (i, (filter, f)) in self.hooks.iter_mut().enumerate() {
            if !filter.matches(point) {
                continue;
            }
            self.audit.per_hook[i] += 1;
            let counts = self.audit.points.entry(*point).or_default();
            counts.0 += 1;
            if let Some(new) = f(&act, point, &self.ctx)? {
                counts.1 += 1;
                if new.dims() != act.dims() {
                    return Err(LensError::HookShape {
                        hook: point.to_string(),
                        got: new.dims().to_vec(),
                        want: act.dims().to_vec(),
                    });
                }
                act = new.to_dtype(act.dtype())?;
            }
        }
        Ok(act)
    }
}
