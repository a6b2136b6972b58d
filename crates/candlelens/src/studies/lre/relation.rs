//! Relation datasets: subject → object pairs and the prompt templates that query them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;

/// One fact of a relation: `subject` ("engineering") → `object` ("men").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The subject (`"engineering"`).
    pub subject: String,
    /// The object the relation maps it to (`"men"`).
    pub object: String,
}

/// A relation as the LRE paper's dataset stores it (`name`, `prompt_templates`, `samples`).
/// The source's `data_sample.json` is a bare list of samples; [`Relation::from_file`] reads both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relation {
    /// The relation's name (the file's name for a bare list).
    #[serde(default)]
    pub name: String,
    /// Prompt templates, each with one `{}` where the subject goes.
    #[serde(default)]
    pub prompt_templates: Vec<String>,
    /// The facts.
    pub samples: Vec<Sample>,
}

impl Relation {
    /// Reads a relation file: the paper's format, or a bare `[{subject, object}, ...]` list
    /// (named after the file, no templates).
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::Json`], or [`LensError::TooFew`] for
    /// an empty relation.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Relation> {
        let path = path.as_ref();
        let text = crate::util::fs::read_text(
            path,
            "pass a relation JSON file (data/data_sample.json, data/lre/*.json)",
        )?;
        let json_err = |detail: String| LensError::Json {
            what: path.display().to_string(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
        // the samples one by one, so an error names the sample and its field
        let samples_of = |list: &[serde_json::Value]| -> Result<Vec<Sample>> {
            list.iter()
                .enumerate()
                .map(|(i, v)| {
                    Sample::deserialize(v).map_err(|e| {
                        let mut shown = v.to_string();
                        if shown.len() > 120 {
                            shown = format!("{}…", shown.chars().take(120).collect::<String>());
                        }
                        json_err(format!(
                            "sample {i} {shown}: {e}; each sample is {{\"subject\": \"...\", \"object\": \"...\"}}"
                        ))
                    })
                })
                .collect()
        };
        let relation = match &value {
            serde_json::Value::Array(list) => Relation {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                prompt_templates: Vec::new(),
                samples: samples_of(list)?,
            },
            serde_json::Value::Object(map) => {
                let list = map.get("samples").and_then(|v| v.as_array()).ok_or_else(|| {
                    json_err("no \"samples\" list; expected {\"prompt_templates\": [...], \"samples\": [...]}".into())
                })?;
                let text_list = |key: &str| -> Result<Vec<String>> {
                    match map.get(key) {
                        None => Ok(Vec::new()),
                        Some(v) => Vec::<String>::deserialize(v)
                            .map_err(|e| json_err(format!("field \"{key}\": {e}; expected a list of strings"))),
                    }
                };
                Relation {
                    name: match map.get("name") {
                        None => String::new(),
                        Some(v) => String::deserialize(v)
                            .map_err(|e| json_err(format!("field \"name\": {e}")))?,
                    },
                    prompt_templates: text_list("prompt_templates")?,
                    samples: samples_of(list)?,
                }
            }
            _ => {
                return Err(json_err(
                    "expected [{\"subject\", \"object\"}, ...] or {\"prompt_templates\": [...], \"samples\": [...]}".into(),
                ))
            }
        };
        if relation.samples.len() < 2 {
            return Err(LensError::too_few(
                &format!("samples in {}", path.display()),
                2,
                relation.samples.len(),
                "an LRE needs some samples to fit and some to test",
            ));
        }
        Ok(relation)
    }

    /// The template to use: `given`, else the relation's first. It must hold one `{}` where the
    /// subject goes.
    ///
    /// # Errors
    /// [`LensError::BadTemplate`] naming the problem.
    pub fn template(&self, given: Option<&str>) -> Result<String> {
        let t =
            match given {
                Some(t) => t.to_string(),
                None => self.prompt_templates.first().cloned().ok_or_else(|| {
                    LensError::BadTemplate {
                        template: String::new(),
                        detail: format!(
                            "relation '{}' has no prompt_templates; pass a template such as \
                         \"{{}} students are typically\"",
                            self.name
                        ),
                    }
                })?,
            };
        check_template(&t)?;
        Ok(t)
    }

    /// The distinct objects, in the order they first appear.
    pub fn objects(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.samples {
            if !out.contains(&s.object) {
                out.push(s.object.clone());
            }
        }
        out
    }

    /// The source's split: `random.seed(seed); random.shuffle(data)`, then the first
    /// `int(len * train_frac)` samples train and the rest test.
    pub fn split_like_source(&self, seed: u64, train_frac: f64) -> (Vec<Sample>, Vec<Sample>) {
        let mut data = self.samples.clone();
        PyRandom::seed(seed).shuffle(&mut data);
        let cut = ((data.len() as f64) * train_frac).floor() as usize;
        let test = data.split_off(cut.min(data.len()));
        (data, test)
    }
}

/// Checks that a template has exactly one `{}`.
///
/// # Errors
/// [`LensError::BadTemplate`].
pub fn check_template(t: &str) -> Result<()> {
    match t.matches("{}").count() {
        1 => Ok(()),
        n => Err(LensError::BadTemplate {
            template: t.to_string(),
            detail: format!(
                "it has {n} '{{}}' placeholders; it needs exactly one, where the subject \
                 goes (e.g. \"{{}} students are typically\")"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("candlelens-rel-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_both_formats_and_splits_like_python() {
        let bare = write(
            "bare.json",
            r#"[{"subject":"a","object":"x"},{"subject":"b","object":"y"},{"subject":"c","object":"x"},
               {"subject":"d","object":"y"},{"subject":"e","object":"x"}]"#,
        );
        let r = Relation::from_file(&bare).unwrap();
        assert_eq!(r.samples.len(), 5);
        assert_eq!(r.objects(), ["x", "y"]);
        assert!(r.template(None).is_err());
        // Python: random.seed(42); x = list("abcde"); random.shuffle(x) -> ['d','b','c','e','a']
        let (train, test) = r.split_like_source(42, 0.6);
        let names: Vec<&str> = train
            .iter()
            .chain(&test)
            .map(|s| s.subject.as_str())
            .collect();
        assert_eq!(names, ["d", "b", "c", "e", "a"]);
        assert_eq!(train.len(), 3);

        let paper = write(
            "paper.json",
            r#"{"name":"capital","prompt_templates":["The capital of {} is"],
                "samples":[{"subject":"France","object":"Paris"},{"subject":"Peru","object":"Lima"}]}"#,
        );
        let r = Relation::from_file(&paper).unwrap();
        assert_eq!(r.template(None).unwrap(), "The capital of {} is");
        assert!(r.template(Some("no placeholder")).is_err());
        assert!(r.template(Some("{} and {}")).is_err());
        let bad = write("bad.json", r#"{"samples": 3}"#);
        assert!(matches!(
            Relation::from_file(&bad),
            Err(LensError::Json { .. })
        ));
        assert!(matches!(
            Relation::from_file("/no/such/file.json"),
            Err(LensError::MissingFile { .. })
        ));
    }
}
