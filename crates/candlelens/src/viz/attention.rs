//! An attention-pattern viewer like circuitsvis's: a self-contained HTML + JavaScript widget
//! (no CDN, works offline and inside exported reports) with a head selector and token hover,
//! and a static heatmap fallback.

use super::table::escape;
use super::Figure;
use crate::error::{LensError, Result};

/// Attention patterns of several heads over one prompt.
#[derive(Clone, Debug)]
pub struct AttentionView {
    /// The title shown above the view.
    pub title: String,
    /// The prompt's tokens.
    pub tokens: Vec<String>,
    /// `[head][query][key]`.
    pub patterns: Vec<Vec<Vec<f32>>>,
    /// One label per head (`"L5H3"`).
    pub head_labels: Vec<String>,
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl AttentionView {
    /// A view of `patterns [head][q][k]` over `tokens`.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the shapes disagree.
    pub fn new(
        title: &str,
        tokens: Vec<String>,
        patterns: Vec<Vec<Vec<f32>>>,
        head_labels: Vec<String>,
    ) -> Result<Self> {
        let n = tokens.len();
        if patterns.len() != head_labels.len()
            || patterns
                .iter()
                .any(|h| h.len() != n || h.iter().any(|r| r.len() != n))
        {
            return Err(LensError::mismatch("attention view head labels, patterns and tokens", format!(
                    "{} head labels, {} patterns, {} tokens; give one label per pattern, each pattern tokens x tokens",
                    head_labels.len(),
                    patterns.len(),
                    n
                )));
        }
        Ok(AttentionView {
            title: title.into(),
            tokens,
            patterns,
            head_labels,
        })
    }

    /// The patterns of `heads` (`(layer, head)`) for prompt `batch` of a cache that holds them.
    ///
    /// # Errors
    /// [`LensError::NotCached`] without `hook_pattern` for a layer; [`LensError::OutOfRange`] /
    /// [`LensError::LayerOutOfRange`] for a prompt, head or layer the cache does not have;
    /// tokenizer errors.
    pub fn from_cache(
        model: &crate::engine::model::HookedTransformer,
        cache: &crate::engine::hooks::cache::ActivationCache,
        batch: usize,
        heads: &[(usize, usize)],
        title: &str,
    ) -> Result<Self> {
        use candle_core::{DType, IndexOp};
        cache.check_model(&model.cfg)?;
        let tokens = cache.tokens().ok_or_else(|| LensError::NoTokens {
            what: "an attention view from a cache".into(),
        })?;
        if batch >= tokens.batch() {
            return Err(LensError::OutOfRange {
                what: "prompt (batch index) of the cache".into(),
                index: batch,
                len: tokens.batch(),
            });
        }
        let len = tokens.lengths()[batch];
        let str_tokens = model.ids_to_str_tokens(tokens.row(batch)?)?;
        let mut patterns = Vec::new();
        let mut labels = Vec::new();
        for &(l, h) in heads {
            if l >= model.cfg.n_layers {
                return Err(LensError::LayerOutOfRange {
                    layer: l,
                    n_layers: model.cfg.n_layers,
                });
            }
            if h >= model.cfg.n_heads {
                return Err(LensError::OutOfRange {
                    what: format!("head of layer {l}"),
                    index: h,
                    len: model.cfg.n_heads,
                });
            }
            let p = cache
                .at(crate::engine::hooks::HookPoint::Pattern(l))?
                .i((batch, h, ..len, ..len))?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            patterns.push(p);
            labels.push(format!("L{l}H{h}"));
        }
        Self::new(title, str_tokens, patterns, labels)
    }

    /// The widget as an HTML fragment with its data and script inline.
    pub fn to_html(&self) -> String {
        let id = format!(
            "cl-attn-{}",
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let data = serde_json::json!({
            "tokens": self.tokens,
            "heads": self.head_labels,
            "patterns": self.patterns,
        });
        format!(
            r#"<div id="{id}" class="candlelens-attention" style="font-family:sans-serif">
<p><b>{title}</b> &nbsp; head: <select></select> <span class="info" style="margin-left:1em;color:#555"></span></p>
<div class="grid"></div>
<p style="color:#777;font-size:12px">Rows: query (destination) tokens; columns: key (source) tokens. Hover a cell or a token.</p>
<script>
(function() {{
  var root = document.getElementById("{id}");
  var d = {data};
  var sel = root.querySelector("select"), grid = root.querySelector(".grid"), info = root.querySelector(".info");
  d.heads.forEach(function(h, i) {{ var o = document.createElement("option"); o.value = i; o.textContent = h; sel.appendChild(o); }});
  function esc(s) {{ return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }}
  function show(hi) {{
    var p = d.patterns[hi], n = d.tokens.length, size = Math.max(6, Math.min(22, Math.floor(560 / n)));
    var html = '<table style="border-collapse:collapse;font-size:11px"><tr><td></td>';
    for (var k = 0; k < n; k++) html += '<td style="writing-mode:vertical-rl;white-space:pre" data-k="' + k + '">' + esc(d.tokens[k]) + '</td>';
    html += '</tr>';
    for (var q = 0; q < n; q++) {{
      html += '<tr><td style="text-align:right;white-space:pre;padding-right:4px" data-q="' + q + '">' + esc(d.tokens[q]) + '</td>';
      for (var k = 0; k < n; k++) {{
        var v = p[q][k], c = Math.round(255 * (1 - v));
        html += '<td title="' + esc(d.tokens[q]) + ' → ' + esc(d.tokens[k]) + ': ' + v.toFixed(3) + '" data-q="' + q + '" data-k="' + k + '" style="width:' + size + 'px;height:' + size + 'px;background:rgb(' + c + ',' + c + ',255)"></td>';
      }}
      html += '</tr>';
    }}
    grid.innerHTML = html + '</table>';
  }}
  grid.addEventListener("mouseover", function(e) {{
    var t = e.target, q = t.getAttribute("data-q"), k = t.getAttribute("data-k"), p = d.patterns[sel.value];
    if (q !== null && k !== null) info.textContent = JSON.stringify(d.tokens[q]) + " attends to " + JSON.stringify(d.tokens[k]) + ": " + p[q][k].toFixed(3);
    else if (q !== null) {{ var best = 0; for (var j = 1; j < p[q].length; j++) if (p[q][j] > p[q][best]) best = j; info.textContent = JSON.stringify(d.tokens[q]) + " attends most to " + JSON.stringify(d.tokens[best]) + " (" + p[q][best].toFixed(3) + ")"; }}
  }});
  sel.addEventListener("change", function() {{ show(sel.value); }});
  show(0);
}})();
</script></div>"#,
            title = escape(&self.title),
        )
    }

    /// The static fallback: one head's pattern as a heatmap.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a head out of range.
    pub fn heatmap(&self, head: usize) -> Result<Figure> {
        let p = self
            .patterns
            .get(head)
            .ok_or_else(|| LensError::OutOfRange {
                what: "head of the attention view".into(),
                index: head,
                len: self.patterns.len(),
            })?;
        let labels: Vec<String> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t}_{i}"))
            .collect();
        Ok(Figure::heatmap(
            p.clone(),
            labels.clone(),
            labels,
            &format!("{} {}", self.title, self.head_labels[head]),
        )
        .axes("Key (source)", "Query (destination)"))
    }

    /// Shows the widget inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        super::display("text/html", &self.to_html());
    }

    /// Saves the widget as a standalone HTML page.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        super::write(
            path.as_ref(),
            &super::html_page(&self.title, &self.to_html()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_is_self_contained() {
        let v = AttentionView::new(
            "Top heads",
            vec!["<bos>".into(), "Mary".into()],
            vec![vec![vec![1.0, 0.0], vec![0.3, 0.7]]],
            vec!["L5H1".into()],
        )
        .unwrap();
        let html = v.to_html();
        assert!(html.contains("<script>") && html.contains("\"L5H1\""));
        assert!(!html.contains("http"), "no external resources");
        assert!(v.heatmap(0).unwrap().to_svg().unwrap().contains("Mary_1"));
        assert!(v.heatmap(3).is_err());
        assert!(AttentionView::new(
            "x",
            vec!["a".into()],
            vec![vec![vec![1.0, 0.0]]],
            vec!["h".into()]
        )
        .is_err());
    }
}
