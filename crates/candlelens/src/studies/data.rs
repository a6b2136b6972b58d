//! Reading the experiments' datasets (`data/`): CSV rows as column -> value maps, JSON.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{LensError, Result};

/// Every row of a CSV file with a header, as `column -> value`.
///
/// # Errors
/// [`LensError::MissingFile`], [`LensError::CorruptFile`] for malformed CSV.
pub fn read_csv(path: impl AsRef<Path>) -> Result<Vec<BTreeMap<String, String>>> {
    let path = path.as_ref();
    let bad = |e: csv::Error| LensError::CorruptFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    if !path.exists() {
        return Err(LensError::MissingFile {
            path: path.to_path_buf(),
            fix: "Run the notebook from notebooks/ (paths are relative to it)".into(),
        });
    }
    let mut r = csv::Reader::from_path(path).map_err(bad)?;
    let headers = r.headers().map_err(bad)?.clone();
    r.records()
        .map(|rec| {
            let rec = rec.map_err(bad)?;
            Ok(headers
                .iter()
                .map(String::from)
                .zip(rec.iter().map(String::from))
                .collect())
        })
        .collect()
}

/// A JSON file.
///
/// # Errors
/// [`LensError::MissingFile`], [`LensError::Json`].
pub fn read_json(path: impl AsRef<Path>) -> Result<serde_json::Value> {
    crate::util::fs::read_json(
        path.as_ref(),
        "Run the notebook from notebooks/ (paths are relative to it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_paris_questions() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/fk_samples.csv");
        let rows = read_csv(p).unwrap();
        assert_eq!(rows.len(), 9);
        assert_eq!(rows[0]["question"], "Is Paris the capital of France?\n");
        assert_eq!(rows[3]["answer"], "False");
        let m = read_json(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/answer_map.json"
        ))
        .unwrap();
        assert_eq!(m["True"].as_array().unwrap().len(), 8);
        assert!(matches!(
            read_csv("/nonexistent.csv"),
            Err(LensError::MissingFile { .. })
        ));
    }
}
