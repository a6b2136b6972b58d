//! Text in and out of a [`HookedTransformer`]: prompts to padded batches of token ids
//! (TransformerLens's `to_tokens`, `to_str_tokens`, `to_single_token`), answer strings to ids,
//! position labels, and ids back to text.

use crate::engine::model::HookedTransformer;
use crate::engine::text::tokens::{Padding, Tokens};
use crate::error::{LensError, Result};

/// Which occurrence of a token [`HookedTransformer::get_token_position`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMatch {
    /// The first occurrence.
    First,
    /// The last occurrence.
    Last,
}

impl HookedTransformer {
    /// Tokenizes one or more prompts into a right-padded batch. `prepend_bos: None` follows the
    /// model's tokenizer default (Gemma: yes; SmolLM2: no; GPT-2 as in TransformerLens: yes).
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::PromptTooLong`].
    pub fn to_tokens<P: crate::engine::text::tokens::Prompts>(
        &self,
        prompts: P,
        prepend_bos: Option<bool>,
    ) -> Result<Tokens> {
        self.to_tokens_padded(prompts, prepend_bos, Padding::Right)
    }

    /// Tokenizes one or more prompts into a batch padded on the `padding` side
    /// (TransformerLens's `padding_side`): left padding ends every prompt at the last position,
    /// and every run masks the pads and counts each prompt's positions from its first token.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::PromptTooLong`].
    pub fn to_tokens_padded<P: crate::engine::text::tokens::Prompts>(
        &self,
        prompts: P,
        prepend_bos: Option<bool>,
        padding: Padding,
    ) -> Result<Tokens> {
        let rows = prompts
            .prompts()
            .iter()
            .map(|p| self.tokenizer.encode_with_bos(p, prepend_bos))
            .collect::<Result<Vec<_>>>()?;
        let t = Tokens::with_padding(rows, self.cfg.pad_token_id, padding)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    /// Token ids as they would be fed to the model, from ids the caller has.
    ///
    /// # Errors
    /// [`LensError::EmptyPrompt`], [`LensError::TokenOutOfRange`], [`LensError::PromptTooLong`].
    pub fn tokens_from_ids(&self, ids: Vec<u32>) -> Result<Tokens> {
        let t = Tokens::new(vec![ids], self.cfg.pad_token_id)?;
        self.check_tokens(&t)?;
        Ok(t)
    }

    pub(crate) fn check_tokens(&self, t: &Tokens) -> Result<()> {
        if t.max_len() > self.cfg.n_ctx {
            return Err(LensError::PromptTooLong {
                len: t.max_len(),
                n_ctx: self.cfg.n_ctx,
            });
        }
        for row in t.rows() {
            if let Some(&id) = row.iter().find(|&&id| id as usize >= self.cfg.d_vocab) {
                return Err(LensError::TokenOutOfRange {
                    id,
                    d_vocab: self.cfg.d_vocab,
                });
            }
        }
        if !t.is_rectangular() && t.pad_id() as usize >= self.cfg.d_vocab {
            return Err(LensError::TokenOutOfRange {
                id: t.pad_id(),
                d_vocab: self.cfg.d_vocab,
            });
        }
        Ok(())
    }

    /// Each prompt's tokens as strings, unpadded (TransformerLens's `to_str_tokens` of a batch).
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] only if the tokenizer's decoder fails.
    pub fn tokens_to_str_tokens(&self, tokens: &Tokens) -> Result<Vec<Vec<String>>> {
        tokens
            .rows()
            .iter()
            .map(|r| self.ids_to_str_tokens(r))
            .collect()
    }

    /// The padded position of `needle` (one token) in each prompt of `tokens`: its first or last
    /// occurrence (TransformerLens's `get_token_position`, `mode="first"` / `"last"`).
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] when `needle` is not one token; [`LensError::BadData`]
    /// naming the first prompt that does not contain it.
    pub fn get_token_position(
        &self,
        needle: &str,
        tokens: &Tokens,
        mode: TokenMatch,
    ) -> Result<Vec<usize>> {
        let id = self.to_single_token(needle)?;
        let offsets = tokens.offsets();
        tokens
            .rows()
            .iter()
            .zip(offsets)
            .enumerate()
            .map(|(b, (row, o))| {
                let found = match mode {
                    TokenMatch::First => row.iter().position(|&t| t == id),
                    TokenMatch::Last => row.iter().rposition(|&t| t == id),
                };
                found.map(|j| o + j).ok_or_else(|| LensError::BadData {
                    what: format!("prompt {b}"),
                    detail: format!(
                        "does not contain the token {needle:?} (id {id}); its tokens are {:?}",
                        self.ids_to_str_tokens(row).unwrap_or_default()
                    ),
                })
            })
            .collect()
    }

    /// Each token of `text` as a string (`["<bos>", "Is", " Paris", ...]`).
    ///
    /// # Errors
    /// [`LensError::NoBosToken`] when BOS is asked for (by `prepend_bos` or the model's default)
    /// and the model has none; [`LensError::Tokenizer`] only if the tokenizer itself fails.
    pub fn to_str_tokens(&self, text: &str, prepend_bos: Option<bool>) -> Result<Vec<String>> {
        let ids = self.tokenizer.encode_with_bos(text, prepend_bos)?;
        self.tokenizer.str_tokens(&ids)
    }

    /// The strings of given ids.
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] only if the tokenizer's decoder fails. Ids are not checked: one
    /// outside the vocabulary decodes to an empty string.
    pub fn ids_to_str_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        self.tokenizer.str_tokens(ids)
    }

    /// The id of a string that must be exactly one token (no BOS).
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] naming the pieces.
    pub fn to_single_token(&self, text: &str) -> Result<u32> {
        let ids = self.tokenizer.encode(text)?;
        if ids.len() != 1 {
            return Err(LensError::NotSingleToken {
                text: text.to_string(),
                n: ids.len(),
                tokens: self.tokenizer.str_tokens(&ids)?,
            });
        }
        Ok(ids[0])
    }

    /// `(correct, incorrect)` token ids of answer pairs given as strings, e.g.
    /// `[(" Peb", " Rachel")]` — the pairs a logit-difference metric reads
    /// ([`crate::metrics::logit_diff_metric`]). Each string must be one token.
    ///
    /// # Errors
    /// [`LensError::NotSingleToken`] naming the answer and its pieces.
    pub fn answer_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<(u32, u32)>> {
        pairs
            .iter()
            .map(|(c, i)| Ok((self.to_single_token(c)?, self.to_single_token(i)?)))
            .collect()
    }

    /// Position labels `"{token}_{pos}"` for prompt `b` of a batch (the sources' axis labels,
    /// e.g. `Peb_26`; the token is trimmed of surrounding spaces and shows `·` when blank),
    /// numbered by padded position: a left-padded prompt's pads come first as `pad_{p}`, a
    /// right-padded prompt's trailing pads are left out.
    ///
    /// # Errors
    /// [`LensError::OutOfRange`] for a prompt index outside the batch; tokenizer errors.
    pub fn position_labels(&self, tokens: &Tokens, b: usize) -> Result<Vec<String>> {
        if b >= tokens.batch() {
            return Err(LensError::OutOfRange {
                what: "prompt".into(),
                index: b,
                len: tokens.batch(),
            });
        }
        // a left-padded prompt's pads come first: its labels count padded positions
        let pads = tokens.offsets()[b];
        let words = self.ids_to_str_tokens(tokens.row(b)?)?;
        Ok((0..pads)
            .map(|p| format!("pad_{p}"))
            .chain(words.iter().enumerate().map(|(i, t)| {
                let t = t.trim();
                format!("{}_{}", if t.is_empty() { "·" } else { t }, pads + i)
            }))
            .collect())
    }

    /// Decodes ids to text.
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] only if the tokenizer's decoder fails. Ids are not checked: ones
    /// outside the vocabulary are left out of the text.
    pub fn to_string(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }
}
