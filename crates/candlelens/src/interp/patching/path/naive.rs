//! Path patching the way the IOI paper's code and the ARENA exercises run it — hooks and full
//! forwards — kept as the reference the tests hold [`PathPatcher`] to.

use crate::engine::hooks::Hooks;
use crate::engine::hooks::{HookFilter, HookPoint};
use crate::engine::model::LogitsAt;
use crate::error::{LensError, Result};

use super::{Head, PathPatcher, Receivers};

impl PathPatcher {
    /// The reference recipe with hooks and full forwards (as the IOI paper's code and the
    /// ARENA exercises run it): a corrupted forward with every `hook_z` frozen but the senders',
    /// then — for head receivers — a corrupted forward with the receivers' `hook_q/k/v` slices
    /// from the first. Keys and values are replaced per kv head, so under grouped-query
    /// attention a key or value receiver must come with every query head of its group.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a partial kv group; as [`Self::patch`].
    pub fn naive(&self, senders: &[Head], receivers: &Receivers) -> Result<f32> {
        let p = &self.patcher;
        p.check_effect()?;
        p.check_no_hooks("path patching")?;
        self.check_senders(senders)?;
        let cfg = &p.model.cfg;
        receivers.check(cfg.n_layers, cfg.n_heads)?;
        let mut hooks = Hooks::new();
        let (clean, corrupt) = (&p.clean, &p.corrupt);
        let senders_at: Vec<Vec<usize>> = (0..cfg.n_layers)
            .map(|l| senders.iter().filter(|s| s.0 == l).map(|s| s.1).collect())
            .collect();
        let freeze_mlps = self.freeze_mlps;
        hooks.add_filter(
            HookFilter::Predicate(Box::new(move |hp| {
                matches!(hp, HookPoint::Z(_)) || (freeze_mlps && matches!(hp, HookPoint::MlpOut(_)))
            })),
            move |act, hp| {
                let l = hp.layer().unwrap_or(0);
                let mut out = corrupt.at(*hp)?.clone();
                if let HookPoint::Z(_) = hp {
                    let dims = act.dims().to_vec();
                    for &h in &senders_at[l] {
                        out = out.slice_assign(
                            &[0..dims[0], 0..dims[1], h..h + 1, 0..dims[3]],
                            &clean.at(*hp)?.narrow(2, h, 1)?,
                        )?;
                    }
                }
                Ok(Some(out))
            },
        );
        let by_layer = receivers.by_layer(cfg.n_heads);
        let points: Vec<HookPoint> = by_layer
            .keys()
            .flat_map(|&l| [HookPoint::Q(l), HookPoint::K(l), HookPoint::V(l)])
            .collect();
        let (logits, step1) = p.model.run_with_hooks_and_cache(
            &p.corrupt_tokens,
            &mut hooks,
            Some(HookFilter::Points(points)),
            LogitsAt::All,
        )?;
        let logits = match receivers {
            Receivers::Logits => logits,
            Receivers::Heads(_) => {
                let group = cfg.n_heads / cfg.n_kv_heads;
                let mut hooks = Hooks::new();
                for (&l, inputs) in &by_layer {
                    for (hp, take, per_kv) in [
                        (
                            HookPoint::Q(l),
                            inputs.iter().map(|s| s.q).collect::<Vec<_>>(),
                            false,
                        ),
                        (HookPoint::K(l), inputs.iter().map(|s| s.k).collect(), true),
                        (HookPoint::V(l), inputs.iter().map(|s| s.v).collect(), true),
                    ] {
                        let mut slots = Vec::new();
                        if per_kv {
                            for (g, heads) in take.chunks(group).enumerate() {
                                if heads.iter().all(|&t| t) {
                                    slots.push(g);
                                } else if heads.iter().any(|&t| t) {
                                    return Err(LensError::Unsupported {
                                        what: format!("the hooks-based path patching of one query head's {} in layer {l}", hp.suffix()),
                                        fix: format!("a kv head is shared by {group} query heads here; name them all as receivers, or use PathPatcher::patch, which patches per query head"),
                                    });
                                }
                            }
                        } else {
                            slots = (0..take.len()).filter(|&h| take[h]).collect();
                        }
                        if slots.is_empty() {
                            continue;
                        }
                        let src = step1.at(hp)?.clone();
                        hooks.add_filter(hp.into(), move |act, _| {
                            let dims = act.dims().to_vec();
                            let mut out = act.clone();
                            for &s in &slots {
                                out = out.slice_assign(
                                    &[0..dims[0], 0..dims[1], s..s + 1, 0..dims[3]],
                                    &src.narrow(2, s, 1)?,
                                )?;
                            }
                            Ok(Some(out))
                        });
                    }
                }
                p.model.run_with_hooks(&p.corrupt_tokens, &mut hooks)?
            }
        };
        let value = p.metric_of(&logits)?;
        Ok(p.score(value))
    }
}
