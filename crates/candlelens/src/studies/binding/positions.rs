//! Where the entities `E_k` and attributes `A_k` stand in the tokenized prompts, found from the
//! tokenizer's offsets ([`find_positions`], [`BindingBatch`]).

use std::ops::Range;

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

use super::prompts::BindingPrompt;

/// Token positions (in the model's input, BOS included) of every pair's entity `E_k` and
/// attribute `A_k` in the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingPositions {
    /// Position of `E_k`, per pair.
    pub entities: Vec<usize>,
    /// Position of `A_k`, per pair.
    pub attributes: Vec<usize>,
}

/// Finds each entity's and attribute's token in the tokenized prompt: the token whose
/// character span is the entry's (a leading space may belong to the token or not). `index` is
/// only used in the error message.
///
/// # Errors
/// [`LensError::NotOneToken`] naming the entry and the tokens its characters fall in, if
/// the tokenizer split it or merged it with a neighbour; tokenizer errors.
pub fn find_positions(
    model: &HookedTransformer,
    prompt: &BindingPrompt,
    index: usize,
    prepend_bos: Option<bool>,
) -> Result<BindingPositions> {
    let text = &prompt.text.text;
    let (ids, offsets) = model.tokenizer().encode_with_offsets(text, prepend_bos)?;
    let find = |span: &Range<usize>, role: &str, entry: &str| -> Result<usize> {
        let lead = text[span.clone()].len() - text[span.clone()].trim_start().len();
        let core = span.start + lead..span.end;
        // a space right before the entry may be part of its token ("▁Leo", "Ġkiwi")
        let spaces_before = text[..core.start]
            .chars()
            .rev()
            .take_while(|c| *c == ' ')
            .count()
            .min(1);
        let earliest = core.start - spaces_before;
        for (t, &(s, e)) in offsets.iter().enumerate() {
            if e == core.end && s >= earliest && s <= core.start && e > s {
                return Ok(t);
            }
        }
        let pieces = offsets
            .iter()
            .enumerate()
            .filter(|(_, &(s, e))| s < core.end && e > core.start)
            .map(|(t, _)| model.ids_to_str_tokens(&ids[t..=t]).map(|v| v.concat()))
            .collect::<Result<Vec<_>>>()?;
        Err(LensError::NotOneToken {
            what: role.to_string(),
            text: entry.to_string(),
            prompt: index,
            tokens: pieces,
            fix: "Keep only entries that are single tokens (binding::one_token_rows), and check that the template separates them from their neighbours".into(),
        })
    };
    let find_all = |spans: &[Range<usize>], texts: &[String], role: &str| {
        spans
            .iter()
            .zip(texts)
            .enumerate()
            .map(|(k, (span, t))| find(span, &format!("{role}_{k}"), t))
            .collect::<Result<Vec<_>>>()
    };
    let pos = BindingPositions {
        entities: find_all(&prompt.text.entity_spans, &prompt.entities, "entity E")?,
        attributes: find_all(
            &prompt.text.attribute_spans,
            &prompt.attributes,
            "attribute A",
        )?,
    };
    Ok(pos)
}

/// A batch of binding prompts ready to run: tokens (right-padded, the model's BOS default),
/// every prompt's entity / attribute positions, and the answer token ids.
pub struct BindingBatch {
    /// The prompts.
    pub prompts: Vec<BindingPrompt>,
    /// Their tokens `[batch, pos]`.
    pub tokens: Tokens,
    /// Per prompt, the positions of `E_k` and `A_k`.
    pub positions: Vec<BindingPositions>,
    /// Per prompt, `(correct, incorrect)` answer token ids.
    pub answers: Vec<(u32, u32)>,
}

impl BindingBatch {
    /// Tokenizes the prompts, finds the positions and the answer tokens.
    ///
    /// # Errors
    /// [`LensError::NotOneToken`] for an entry that is not a token of its own,
    /// [`LensError::NotSingleToken`] for an answer that is not one token,
    /// [`LensError::EmptyPrompt`] for no prompts.
    pub fn new(model: &HookedTransformer, prompts: Vec<BindingPrompt>) -> Result<Self> {
        let tokens = {
            let texts: Vec<&str> = prompts.iter().map(|p| p.text.text.as_str()).collect();
            model.to_tokens(texts.as_slice(), None)?
        };
        let positions = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| find_positions(model, p, i, None))
            .collect::<Result<Vec<_>>>()?;
        let answers = prompts
            .iter()
            .map(|p| {
                Ok((
                    model.to_single_token(&p.correct)?,
                    model.to_single_token(&p.incorrect)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BindingBatch {
            prompts,
            tokens,
            positions,
            answers,
        })
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// `(correct, incorrect)` ids of the attributes themselves as the context writes them —
    /// for the capital task the country (`"Peru"`) instead of its capital: what a model that
    /// copies the bound attribute rather than looking up its capital answers. Score them with
    /// [`super::Evaluation::rescore`].
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] for an attribute that is not one token.
    pub fn attribute_answers(&self, model: &HookedTransformer) -> Result<Vec<(u32, u32)>> {
        self.prompts
            .iter()
            .map(|p| {
                Ok((
                    model.to_single_token(&p.attributes[p.subject])?,
                    model.to_single_token(&p.attributes[p.other])?,
                ))
            })
            .collect()
    }

    /// Whether there are no prompts (never, for a built batch).
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The pairs per prompt.
    pub fn num_pairs(&self) -> usize {
        self.positions.first().map_or(0, |p| p.entities.len())
    }

    /// The tokens at prompt `i`'s positions, e.g.
    /// `E_0 " Leo" @18 | A_0 "Vietnam" @25 | E_1 "Dean" @28 | A_1 "Peru" @35` — the check the
    /// source prints.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for `i` beyond the batch; [`LensError::Tokenizer`] only if the
    /// tokenizer's decoder fails.
    pub fn describe_positions(&self, model: &HookedTransformer, i: usize) -> Result<String> {
        let (Some(pos), true) = (self.positions.get(i), i < self.tokens.batch()) else {
            return Err(LensError::OutOfRange {
                what: "prompt".into(),
                index: i,
                len: self.len(),
            });
        };
        let strs = model.ids_to_str_tokens(self.tokens.row(i)?)?;
        let mut parts = Vec::new();
        for k in 0..pos.entities.len() {
            for (role, p) in [("E", pos.entities[k]), ("A", pos.attributes[k])] {
                parts.push(format!("{role}_{k} {:?} @{p}", strs[p]));
            }
        }
        Ok(parts.join(" | "))
    }
}
