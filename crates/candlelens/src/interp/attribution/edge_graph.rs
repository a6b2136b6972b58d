//! The nodes and edges of edge attribution ([`EdgeGraph`]) and how they show: a table of the
//! strongest edges, a layered graph figure, and the self-check's report.

use crate::viz::{Figure, Table};

/// An upstream node: what writes into the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Upstream {
    /// The token (and positional) embedding.
    Embed,
    /// Head `(layer, head)`'s output.
    Head(usize, usize),
    /// Layer `l`'s MLP.
    Mlp(usize),
}

/// A head's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    /// Its queries.
    Q,
    /// Its keys.
    K,
    /// Its values.
    V,
}

/// A downstream node: what reads the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Downstream {
    /// One input of head `(layer, head)`.
    Head(usize, usize, Input),
    /// Layer `l`'s MLP.
    Mlp(usize),
    /// The unembedding (the logits).
    Logits,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Embed => write!(f, "embed"),
            Upstream::Head(l, h) => write!(f, "L{l}H{h}"),
            Upstream::Mlp(l) => write!(f, "MLP{l}"),
        }
    }
}

impl std::fmt::Display for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Downstream::Head(l, h, i) => {
                let c = match i {
                    Input::Q => 'q',
                    Input::K => 'k',
                    Input::V => 'v',
                };
                write!(f, "L{l}H{h}.{c}")
            }
            Downstream::Mlp(l) => write!(f, "MLP{l}"),
            Downstream::Logits => write!(f, "logits"),
        }
    }
}

/// One edge and its attribution score (normalised: 1 = the whole clean behaviour).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    /// The upstream node.
    pub from: Upstream,
    /// The downstream node.
    pub to: Downstream,
    /// `Σ Δfrom · ∂m/∂(input of to) / (m_clean − m_corrupted)`.
    pub score: f32,
}

impl serde::Serialize for Edge {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Edge", 3)?;
        st.serialize_field("from", &self.from.to_string())?;
        st.serialize_field("to", &self.to.to_string())?;
        st.serialize_field("score", &self.score)?;
        st.end()
    }
}

/// Every edge's score, strongest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EdgeGraph {
    /// Every edge of the graph, by decreasing `|score|`.
    pub edges: Vec<Edge>,
    /// The metric on the clean run.
    #[serde(rename = "clean_diff")]
    pub clean: f32,
    /// The metric on the corrupted run.
    #[serde(rename = "corrupt_diff")]
    pub corrupted: f32,
    /// Integrated-gradients steps (`None`: the gradient at the corrupted run).
    pub ig_steps: Option<usize>,
    /// Wall time of the edge gradients and scores.
    pub seconds: f64,
    /// That time in forwards of the clean batch.
    pub forward_equivalents: f64,
    #[serde(skip)]
    pub(super) n_layers: usize,
    #[serde(skip)]
    pub(super) n_heads: usize,
}

impl EdgeGraph {
    /// The `k` strongest edges.
    pub fn top(&self, k: usize) -> &[Edge] {
        &self.edges[..k.min(self.edges.len())]
    }

    /// The score of one edge, if the graph has it.
    pub fn score(&self, from: Upstream, to: Downstream) -> Option<f32> {
        self.edges
            .iter()
            .find(|e| e.from == from && e.to == to)
            .map(|e| e.score)
    }

    /// The `k` strongest edges as a table.
    pub fn table(&self, k: usize) -> Table {
        let mut t = Table::new(
            &format!(
                "The {} strongest of {} edges (edge attribution{})",
                k.min(self.edges.len()),
                self.edges.len(),
                self.ig_steps
                    .map(|s| format!(", integrated gradients over {s} steps"))
                    .unwrap_or_default()
            ),
            ["rank", "from", "to", "score"],
        );
        for (i, e) in self.top(k).iter().enumerate() {
            t.row([
                (i + 1).to_string(),
                e.from.to_string(),
                e.to.to_string(),
                format!("{:+.4}", e.score),
            ]);
        }
        t
    }

    /// The `k` strongest edges as a graph, embedding at the bottom and logits at the top, one
    /// row per layer's heads and one per MLP; blue edges help the clean answer, red ones hurt
    /// it, wider is stronger; a head's input (q, k, v) is written at the edge's end.
    pub fn figure(&self, k: usize, title: &str) -> Figure {
        let top = self.top(k);
        // vertical rank: embed 0, layer l's heads 2l + 1, its MLP 2l + 2, logits 2L + 1
        let up_pos = |u: Upstream| -> (f32, usize) {
            match u {
                Upstream::Embed => (self.n_heads as f32 / 2.0, 0),
                Upstream::Head(l, h) => (h as f32, 2 * l + 1),
                Upstream::Mlp(l) => (self.n_heads as f32 / 2.0, 2 * l + 2),
            }
        };
        let down_pos = |d: Downstream| -> (f32, usize) {
            match d {
                Downstream::Head(l, h, _) => up_pos(Upstream::Head(l, h)),
                Downstream::Mlp(l) => up_pos(Upstream::Mlp(l)),
                Downstream::Logits => (self.n_heads as f32 / 2.0, 2 * self.n_layers + 1),
            }
        };
        let mut names: Vec<(String, (f32, usize))> = Vec::new();
        let mut index = |name: String, pos: (f32, usize)| -> usize {
            if let Some(i) = names.iter().position(|(n, _)| *n == name) {
                return i;
            }
            names.push((name, pos));
            names.len() - 1
        };
        let mut edges = Vec::new();
        for e in top {
            let a = index(e.from.to_string(), up_pos(e.from));
            let target = match e.to {
                Downstream::Head(l, h, _) => Upstream::Head(l, h).to_string(),
                other => other.to_string(),
            };
            let b = index(target, down_pos(e.to));
            let label = match e.to {
                Downstream::Head(_, _, Input::Q) => "q",
                Downstream::Head(_, _, Input::K) => "k",
                Downstream::Head(_, _, Input::V) => "v",
                _ => "",
            };
            edges.push((a, b, e.score, label.to_string()));
        }
        // ranks that hold a node, compressed so that empty layers take no room
        let mut ranks: Vec<usize> = names.iter().map(|(_, (_, r))| *r).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let nodes = names
            .into_iter()
            .map(|(n, (x, r))| {
                let y = ranks.iter().position(|&q| q == r).unwrap_or(0) as f32;
                (n, x, y)
            })
            .collect();
        Figure::graph(nodes, edges, title)
    }
}

/// One head edge: the estimate beside its exact path-patching value.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EdgeCheck {
    /// The sender head (`L{l}H{h}`).
    pub from: String,
    /// The receiver (`L{l}H{h}.q` or `logits`).
    pub to: String,
    /// The edge attribution estimate.
    pub estimate: f32,
    /// Path patching with every other head and every MLP frozen.
    pub exact: f32,
}

/// What [`AttributionPatcher::verify_edges`](super::AttributionPatcher::verify_edges) found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EdgeVerification {
    /// The edges checked, strongest estimate first.
    pub edges: Vec<EdgeCheck>,
    /// Pearson correlation of estimate and exact over them.
    pub correlation: f64,
    /// The largest `|estimate − exact|`.
    pub max_abs_error: f32,
    /// The threshold `wrong` counts with.
    pub threshold: f32,
    /// How many are off by more than the threshold.
    pub wrong: usize,
}

impl std::fmt::Display for EdgeVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "edge attribution vs exact edge patching over the {} strongest head edges: correlation {:.3}, largest error {:.3}; {} off by more than {}",
            self.edges.len(),
            self.correlation,
            self.max_abs_error,
            self.wrong,
            self.threshold
        )?;
        for e in self.edges.iter().take(10) {
            writeln!(
                f,
                "  {} -> {}: estimate {:+.3}, exact {:+.3}",
                e.from, e.to, e.estimate, e.exact
            )?;
        }
        Ok(())
    }
}
