//! The source's lists of names, countries, capitals and fruits, and its single-token filter.

use std::path::Path;

use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

/// The source's four lists: names (entities), countries with their capitals (aligned by
/// index), and fruits. As the source does right after defining them, capitals and fruits carry
/// a leading space (they are answers / follow "the"); names and countries do not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingLists {
    /// Entity names (`"Emma"`, ...). The source's list has `"Sage"` twice; it is kept.
    pub names: Vec<String>,
    /// Countries, the capital task's attributes (`"Thailand"`, ...).
    pub countries: Vec<String>,
    /// `" " + capital`, the capital task's answers, aligned with `countries`.
    pub capitals: Vec<String>,
    /// `" " + fruit`, the fruit task's attributes and answers.
    pub fruits: Vec<String>,
}

impl BindingLists {
    /// Reads `{"names": [...], "countries": [...], "capitals": [...], "fruits": [...]}` (the
    /// source's lists as written, `data/entity_binding/lists.json`) and prefixes capitals and
    /// fruits with a space, as the source does.
    ///
    /// # Errors
    /// [`LensError::MissingFile`], [`LensError::Json`] if a list is missing,
    /// [`LensError::BadData`] if countries and capitals differ in length.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let v = crate::studies::data::read_json(path)?;
        let list = |key: &str| -> Result<Vec<String>> {
            let bad = || LensError::Json {
                what: path.display().to_string(),
                detail: format!("'{key}' must be a list of strings"),
            };
            v[key]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|x| x.as_str().map(String::from).ok_or_else(bad))
                .collect()
        };
        let space = |l: Vec<String>| l.into_iter().map(|s| format!(" {s}")).collect();
        let lists = BindingLists {
            names: list("names")?,
            countries: list("countries")?,
            capitals: space(list("capitals")?),
            fruits: space(list("fruits")?),
        };
        if lists.countries.len() != lists.capitals.len() {
            return Err(LensError::BadData {
                what: path.display().to_string(),
                detail: format!(
                    "{} countries but {} capitals; the lists pair them by index",
                    lists.countries.len(),
                    lists.capitals.len()
                ),
            });
        }
        Ok(lists)
    }

    /// The entries that are single tokens for this model, as the source's
    /// `get_one_token_lists` keeps them: names alone, countries and capitals as pairs, fruits
    /// alone; an entry without a leading space must be one token with one too.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when `countries` and `capitals` differ in length;
    /// [`LensError::Tokenizer`] only if the tokenizer itself fails.
    pub fn one_token(&self, model: &HookedTransformer) -> Result<BindingLists> {
        let names = pick(&self.names, &one_token_rows(model, &[&self.names])?);
        let rows = one_token_rows(model, &[&self.countries, &self.capitals])?;
        let fruits = pick(&self.fruits, &one_token_rows(model, &[&self.fruits])?);
        Ok(BindingLists {
            names,
            countries: pick(&self.countries, &rows),
            capitals: pick(&self.capitals, &rows),
            fruits,
        })
    }
}

fn pick(list: &[String], rows: &[usize]) -> Vec<String> {
    rows.iter().map(|&i| list[i].clone()).collect()
}

/// Whether `text` is exactly one token for the model (no BOS).
///
/// # Errors
/// [`LensError::Tokenizer`] only if the tokenizer itself fails; no `text` is rejected (an empty one
/// is simply not one token).
pub fn is_one_token(model: &HookedTransformer, text: &str) -> Result<bool> {
    Ok(model.tokenizer().encode(text)?.len() == 1)
}

/// The source's `get_one_token_lists`: the row indices `i` at which every column's entry is one
/// token, and, if it has no leading space, one token with a leading space as well. Columns are
/// index-aligned lists (countries with capitals).
///
/// # Errors
/// [`LensError::TooFew`] for no columns, [`LensError::Mismatch`] for columns of different
/// lengths; tokenizer errors.
pub fn one_token_rows(model: &HookedTransformer, columns: &[&[String]]) -> Result<Vec<usize>> {
    let Some(first) = columns.first() else {
        return Err(LensError::too_few(
            "lists for one_token_rows",
            1,
            0,
            "pass the lists to filter",
        ));
    };
    if columns.iter().any(|c| c.len() != first.len()) {
        return Err(LensError::mismatch(
            "lists for one_token_rows",
            format!(
                "they differ in length ({:?}); they must be aligned by index",
                columns.iter().map(|c| c.len()).collect::<Vec<_>>()
            ),
        ));
    }
    let mut rows = Vec::new();
    'row: for i in 0..first.len() {
        for col in columns {
            let entry = &col[i];
            if !is_one_token(model, entry)? {
                continue 'row;
            }
            if !entry.starts_with(' ') && !is_one_token(model, &format!(" {entry}"))? {
                continue 'row;
            }
        }
        rows.push(i);
    }
    Ok(rows)
}
