//! A probe's dataset on disk: texts with a binary label or a real value, one JSON object per
//! line.

use std::path::Path;

use crate::error::{LensError, Result};

/// The texts and binary labels of a JSONL file: one `{"text": ..., "label": 0 or 1}` per line
/// (empty lines skipped) — a logistic probe's dataset.
///
/// # Errors
/// [`LensError::MissingFile`]; [`LensError::BadData`] naming the line that is not JSON, has no
/// text or a label other than 0 or 1; [`LensError::TooFew`] for a file without rows.
pub fn read_labelled(path: impl AsRef<Path>) -> Result<(Vec<String>, Vec<bool>)> {
    read_rows(path.as_ref(), "label", "0 or 1", |v| match v.as_u64() {
        Some(0) => Some(false),
        Some(1) => Some(true),
        _ => None,
    })
}

/// The texts and real values of a JSONL file: one `{"text": ..., "value": x}` per line (empty
/// lines skipped) — a linear probe's dataset.
///
/// # Errors
/// [`LensError::MissingFile`]; [`LensError::BadData`] naming the line that is not JSON, has no
/// text or a value that is not a finite number; [`LensError::TooFew`] for a file without rows.
pub fn read_valued(path: impl AsRef<Path>) -> Result<(Vec<String>, Vec<f64>)> {
    read_rows(path.as_ref(), "value", "a finite number", |v| {
        v.as_f64().filter(|x| x.is_finite())
    })
}

/// One `{"text": ..., field: ...}` object per line, `parse` reading the field.
fn read_rows<T>(
    path: &Path,
    field: &str,
    kind: &str,
    parse: impl Fn(&serde_json::Value) -> Option<T>,
) -> Result<(Vec<String>, Vec<T>)> {
    let format = format!("{{\"text\": ..., \"{field}\": {kind}}}");
    let text =
        crate::util::fs::read_text(path, &format!("pass a JSONL file with {format} per line"))?;
    let bad = |line: usize, detail: String| LensError::BadData {
        what: format!("{} line {line}", path.display()),
        detail,
    };
    let (mut texts, mut values) = (Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                format!("not JSON ({e}); write one {format} per line"),
            )
        })?;
        let t = v["text"]
            .as_str()
            .ok_or_else(|| bad(i + 1, "no \"text\" string".into()))?;
        let x = parse(&v[field])
            .ok_or_else(|| bad(i + 1, format!("{field} is {}, not {kind}", v[field])))?;
        texts.push(t.to_string());
        values.push(x);
    }
    if texts.is_empty() {
        return Err(LensError::TooFew {
            what: format!("rows in {}", path.display()),
            need: 2,
            got: 0,
            fix: format!("write one {format} per line"),
        });
    }
    Ok((texts, values))
}
