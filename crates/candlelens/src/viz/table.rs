//! HTML tables (per-prompt results, top-k predictions) that display inline and print as text.

use std::fmt;

/// Escapes text for HTML.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A table of strings with a header row.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// The title shown above the table (empty for none).
    pub title: String,
    /// The column headers.
    pub headers: Vec<String>,
    /// The rows, one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(title: &str, headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            title: title.into(),
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    /// The table as HTML.
    pub fn to_html(&self) -> String {
        let mut h = String::from("<div class=\"candlelens-table\">");
        if !self.title.is_empty() {
            h.push_str(&format!("<p><b>{}</b></p>", escape(&self.title)));
        }
        h.push_str("<table style=\"border-collapse:collapse;font-family:monospace\"><thead><tr>");
        for c in &self.headers {
            h.push_str(&format!(
                "<th style=\"border-bottom:1px solid #888;padding:2px 8px;text-align:left\">{}</th>",
                escape(c)
            ));
        }
        h.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            h.push_str("<tr>");
            for c in r {
                h.push_str(&format!("<td style=\"padding:2px 8px\">{}</td>", escape(c)));
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table></div>");
        h
    }

    /// Shows the table inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        super::display("text/html", &self.to_html());
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.headers.len();
        let mut width = vec![0; n];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        if !self.title.is_empty() {
            writeln!(f, "{}", self.title)?;
        }
        let line = |f: &mut fmt::Formatter<'_>, r: &[String]| -> fmt::Result {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .take(n)
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            writeln!(f, "{}", cells.join(" | ").trim_end())
        };
        line(f, &self.headers)?;
        writeln!(
            f,
            "{}",
            width
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-+-")
        )?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_text_and_html() {
        let mut t = Table::new("LRE", ["Subject", "Expected", "LRE Pred", "✓"]);
        t.row(["engineering", "men", "men", "✓"])
            .row(["nursing", "women", "men", "✗"]);
        let text = t.to_string();
        assert!(
            text.contains("engineering | men      | men      | ✓"),
            "{text}"
        );
        let html = t.to_html();
        assert!(html.contains("<td style=\"padding:2px 8px\">nursing</td>"));
        let mut e = Table::new("", ["a"]);
        e.row(["<b>"]);
        assert!(e.to_html().contains("&lt;b&gt;"));
    }
}
