//! Where path patching's paths end ([`Receivers`]) and which heads send ([`Head`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::engine::block::QkvInputs;
use crate::error::{LensError, Result};

/// A head: `(layer, head)`.
pub type Head = (usize, usize);

/// One receiver head and which of its inputs the senders' paths reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receiver {
    /// The receiver's layer.
    pub layer: usize,
    /// The receiver's head.
    pub head: usize,
    /// Its queries, keys and/or values.
    pub inputs: QkvInputs,
}

/// Where the senders' paths end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receivers {
    /// The residual stream at the unembedding: the direct paths to the logits (through MLPs,
    /// unless they are frozen).
    Logits,
    /// The queries, keys or values of these heads.
    Heads(Vec<Receiver>),
}

impl Receivers {
    /// Parses `final` (or `logits`), or receiver heads written `L.H:q`, `L.H:k`, `L.H:v` or a
    /// combination (`L.H:qkv`), as in `lens path-patch --receivers 9.6:q 9.9:q`.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for a spec that is neither.
    pub fn parse(specs: &[&str]) -> Result<Self> {
        let bad = |given: &str| LensError::UnknownChoice {
            what: "path-patching receiver".into(),
            given: given.to_string(),
            choices: "final, or heads as LAYER.HEAD:q|k|v (e.g. 9.6:q, 10.0:qkv)".into(),
        };
        if specs.len() == 1 && matches!(specs[0], "final" | "logits" | "resid_final") {
            return Ok(Receivers::Logits);
        }
        if specs.is_empty() {
            return Err(bad(""));
        }
        let mut heads = Vec::new();
        for spec in specs {
            let (head, which) = spec.split_once(':').ok_or_else(|| bad(spec))?;
            let (l, h) = head.split_once('.').ok_or_else(|| bad(spec))?;
            let layer = l.parse::<usize>().map_err(|_| bad(spec))?;
            let head = h.parse::<usize>().map_err(|_| bad(spec))?;
            let mut inputs = QkvInputs::default();
            for c in which.chars() {
                match c {
                    'q' => inputs.q = true,
                    'k' => inputs.k = true,
                    'v' => inputs.v = true,
                    _ => return Err(bad(spec)),
                }
            }
            if inputs == QkvInputs::default() {
                return Err(bad(spec));
            }
            heads.push(Receiver {
                layer,
                head,
                inputs,
            });
        }
        Ok(Receivers::Heads(heads))
    }

    /// Receiver heads reading `inputs` (`"q"`, `"k"`, `"v"` or a combination such as `"qv"`).
    ///
    /// # Errors
    /// As [`Self::parse`].
    pub fn heads(heads: &[Head], inputs: &str) -> Result<Self> {
        let specs: Vec<String> = heads
            .iter()
            .map(|(l, h)| format!("{l}.{h}:{inputs}"))
            .collect();
        Self::parse(&specs.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The first layer a path can end in (`n_layers` for the logits).
    pub(super) fn first_layer(&self, n_layers: usize) -> usize {
        match self {
            Receivers::Logits => n_layers,
            Receivers::Heads(r) => r.iter().map(|r| r.layer).min().unwrap_or(n_layers),
        }
    }

    /// The last layer a path can end in (`n_layers` for the logits).
    pub(super) fn last_layer(&self, n_layers: usize) -> usize {
        match self {
            Receivers::Logits => n_layers,
            Receivers::Heads(r) => r.iter().map(|r| r.layer).max().unwrap_or(0),
        }
    }

    /// Per layer, which inputs of each head are receivers.
    pub(super) fn by_layer(&self, n_heads: usize) -> BTreeMap<usize, Vec<QkvInputs>> {
        let mut out: BTreeMap<usize, Vec<QkvInputs>> = BTreeMap::new();
        if let Receivers::Heads(r) = self {
            for r in r {
                let e = out
                    .entry(r.layer)
                    .or_insert_with(|| vec![QkvInputs::default(); n_heads]);
                let s = &mut e[r.head];
                s.q |= r.inputs.q;
                s.k |= r.inputs.k;
                s.v |= r.inputs.v;
            }
        }
        out
    }

    pub(super) fn check(&self, n_layers: usize, n_heads: usize) -> Result<()> {
        if let Receivers::Heads(r) = self {
            if r.is_empty() {
                return Err(LensError::Unsupported {
                    what: "path patching without receivers".into(),
                    fix: "name at least one receiver head (LAYER.HEAD:q|k|v), or use Receivers::Logits".into(),
                });
            }
            for r in r {
                check_head((r.layer, r.head), n_layers, n_heads)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Receivers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Receivers::Logits => write!(f, "final"),
            Receivers::Heads(r) => {
                let specs: Vec<String> = r
                    .iter()
                    .map(|r| {
                        let i = r.inputs;
                        let which: String = [(i.q, 'q'), (i.k, 'k'), (i.v, 'v')]
                            .iter()
                            .filter(|(on, _)| *on)
                            .map(|(_, c)| *c)
                            .collect();
                        format!("{}.{}:{which}", r.layer, r.head)
                    })
                    .collect();
                write!(f, "{}", specs.join(" "))
            }
        }
    }
}

impl serde::Serialize for Receivers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

pub(super) fn check_head((l, h): Head, n_layers: usize, n_heads: usize) -> Result<()> {
    if l >= n_layers {
        return Err(LensError::LayerOutOfRange { layer: l, n_layers });
    }
    if h >= n_heads {
        return Err(LensError::OutOfRange {
            what: format!("head (layer {l})"),
            index: h,
            len: n_heads,
        });
    }
    Ok(())
}
