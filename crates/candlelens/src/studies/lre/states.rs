//! The activations an LRE is fitted and tested on, computed once per prompt for every layer:
//! the subject's hidden state `h` after each block and the final block's output `z`.

use candle_core::{DType, IndexOp, Tensor, D};

use super::relation::{check_template, Sample};
use crate::engine::hooks::cache::ActivationCache;
use crate::engine::hooks::{HookFilter, HookPoint};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::error::{LensError, Result};

/// The objects a relation can answer, each scored by its first token as the continuation of
/// the prompt (`" men"` after "... are typically").
#[derive(Clone, Debug)]
pub struct Candidates {
    /// The objects, as the dataset spells them.
    pub objects: Vec<String>,
    /// Each object's first token id, in the same order.
    pub ids: Vec<u32>,
}

impl Candidates {
    /// First-token ids of `objects` after `template` (a leading space unless the template ends
    /// in whitespace).
    ///
    /// # Errors
    /// [`LensError::BadData`] if an object has no tokens or two objects share their
    /// first token (they could not be told apart).
    pub fn new(model: &HookedTransformer, objects: &[String], template: &str) -> Result<Self> {
        let space = if template.ends_with(char::is_whitespace) {
            ""
        } else {
            " "
        };
        let mut ids = Vec::with_capacity(objects.len());
        for o in objects {
            let toks = model.tokenizer().encode(&format!("{space}{o}"))?;
            let id = *toks.first().ok_or_else(|| LensError::BadData {
                what: "candidate objects".into(),
                detail: format!("object {o:?} has no tokens; drop the empty object"),
            })?;
            if let Some(j) = ids.iter().position(|&x| x == id) {
                return Err(LensError::BadData {
                    what: "candidate objects".into(),
                    detail: format!(
                        "objects {:?} and {o:?} start with the same token {:?}: the model's next token \
                         cannot tell them apart. Drop one, or rename it",
                        objects[j],
                        model.to_string(&[id])?
                    ),
                });
            }
            ids.push(id);
        }
        Ok(Candidates {
            objects: objects.to_vec(),
            ids,
        })
    }

    /// Index of the candidate with the largest score among `scores[ids]` (`scores [d_vocab]`).
    pub fn argmax(&self, scores: &[f32]) -> usize {
        let mut best = 0;
        for (i, &id) in self.ids.iter().enumerate() {
            if scores[id as usize] > scores[self.ids[best] as usize] {
                best = i;
            }
        }
        best
    }

    /// Index of `object`, if it is a candidate.
    pub fn index(&self, object: &str) -> Option<usize> {
        self.objects.iter().position(|o| o == object)
    }
}

/// Which position of the prompt the hidden state `h` is read at. The source's printed numbers
/// read the prompt's last token (its `lre.py` takes `input_ids.shape[1] - 1`, though its docstring
/// says "the last token of the subject"); its later fix, and Hernandez et al., read the subject's
/// last token. [`LreStates::collect`] keeps both from the one forward; [`LreStates::read_at`]
/// switches between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadAt {
    /// The subject's last token (Hernandez et al.; the default).
    #[default]
    SubjectLast,
    /// The prompt's last token (the source's printed runs).
    PromptLast,
}

impl std::fmt::Display for ReadAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadAt::SubjectLast => "the subject's last token",
            ReadAt::PromptLast => "the prompt's last token",
        })
    }
}

/// One prompt's activations.
#[derive(Clone, Debug)]
pub struct SubjectState {
    /// The subject and its object.
    pub sample: Sample,
    /// The template filled with the subject.
    pub prompt: String,
    /// Token ids as run (BOS included where the model prepends it).
    pub ids: Vec<u32>,
    /// Position of the subject's last token.
    pub subject_pos: usize,
    /// Position `h` is read at ([`LreStates::read_at`]): `subject_pos` or the last position.
    pub h_pos: usize,
    /// `blocks.{l}.hook_resid_post` at `h_pos`, `[n_layers, d_model]`.
    pub h: Tensor,
    /// The same at the subject's last token and at the prompt's last token (what
    /// [`LreStates::read_at`] switches between).
    h_both: [Tensor; 2],
    /// The final block's output (before the final norm) at the last position, `[d_model]`.
    pub z: Tensor,
    /// The model's next token over the whole vocabulary.
    pub model_top1: u32,
    /// The model's logits for each candidate's first token.
    pub candidate_logits: Vec<f32>,
}

impl SubjectState {
    /// Index of the candidate the model itself ranks first.
    pub fn model_candidate(&self) -> usize {
        let mut best = 0;
        for (i, &v) in self.candidate_logits.iter().enumerate() {
            if v > self.candidate_logits[best] {
                best = i;
            }
        }
        best
    }
}

/// The activations of a set of subjects under one template, for every layer at once (a layer
/// sweep then costs no further forward passes).
#[derive(Clone, Debug)]
pub struct LreStates {
    /// The prompt template (one `{}` for the subject).
    pub template: String,
    /// The objects the prompts are scored on.
    pub candidates: Candidates,
    /// One entry per subject.
    pub items: Vec<SubjectState>,
    /// Where every item's `h` is read.
    pub read_at: ReadAt,
}

impl LreStates {
    /// Runs each `template.replace("{}", subject)` once (batched), caching every layer's
    /// residual stream at the subject's last token and at the prompt's last token; `h` reads the
    /// subject's ([`ReadAt::SubjectLast`]; switch with [`Self::read_at`]). Prompts are tokenized
    /// as the model's own tokenizer does it (`ModelConfig::hf_prepends_bos`: Gemma's `<bos>`, no
    /// BOS for GPT-2), as the source's and the paper's code tokenize them.
    ///
    /// # Errors
    /// Template, tokenizer and forward errors.
    pub fn collect(
        model: &HookedTransformer,
        samples: &[Sample],
        template: &str,
        candidates: &Candidates,
    ) -> Result<Self> {
        check_template(template)?;
        let n_layers = model.cfg.n_layers;
        let mut items = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(16) {
            let prompts: Vec<String> = chunk
                .iter()
                .map(|s| template.replace("{}", &s.subject))
                .collect();
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let tokens = model.to_tokens(refs.as_slice(), Some(model.cfg.hf_prepends_bos))?;
            let mut cache = ActivationCache::recorder(HookFilter::Predicate(Box::new(|hp| {
                matches!(hp, HookPoint::ResidPost(_))
            })));
            let last = model.forward_with(&tokens, LogitsAt::Last, &mut cache)?;
            let last = last.to_dtype(DType::F32)?;
            let top1: Vec<u32> = last.argmax(D::Minus1)?.to_vec1()?;
            let last_rows: Vec<Vec<f32>> = last.to_vec2()?;
            let resid: Vec<&Tensor> = (0..n_layers)
                .map(|l| cache.at(HookPoint::ResidPost(l)))
                .collect::<Result<_>>()?;
            for (i, sample) in chunk.iter().enumerate() {
                let ids = tokens.row(i)?.to_vec();
                let subject_pos = subject_last_token(model, template, &sample.subject)?;
                let last_pos = ids.len() - 1;
                let at = |pos: usize| -> Result<Tensor> {
                    Ok(Tensor::stack(
                        &resid
                            .iter()
                            .map(|r| r.i((i, pos)))
                            .collect::<candle_core::Result<Vec<_>>>()?,
                        0,
                    )?
                    .to_dtype(DType::F32)?)
                };
                let h_both = [at(subject_pos)?, at(last_pos)?];
                let z = resid[n_layers - 1].i((i, last_pos))?.to_dtype(DType::F32)?;
                items.push(SubjectState {
                    sample: sample.clone(),
                    prompt: prompts[i].clone(),
                    ids,
                    subject_pos,
                    h_pos: subject_pos,
                    h: h_both[0].clone(),
                    h_both,
                    z,
                    model_top1: top1[i],
                    candidate_logits: candidates
                        .ids
                        .iter()
                        .map(|&id| last_rows[i][id as usize])
                        .collect(),
                });
            }
        }
        Ok(LreStates {
            template: template.to_string(),
            candidates: candidates.clone(),
            items,
            read_at: ReadAt::SubjectLast,
        })
    }

    /// The same states with `h` read at `at` (no forward pass: both positions were kept).
    pub fn read_at(&self, at: ReadAt) -> LreStates {
        let mut out = self.clone();
        out.read_at = at;
        for s in &mut out.items {
            let (k, pos) = match at {
                ReadAt::SubjectLast => (0, s.subject_pos),
                ReadAt::PromptLast => (1, s.ids.len() - 1),
            };
            s.h = s.h_both[k].clone();
            s.h_pos = pos;
        }
        out
    }

    /// `self` followed by `other` (e.g. the training and the test subjects, to count over all
    /// of them as the source's README does).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] if the two differ in template, candidates or read position.
    pub fn concat(&self, other: &LreStates) -> Result<LreStates> {
        if self.template != other.template
            || self.candidates.ids != other.candidates.ids
            || self.read_at != other.read_at
        {
            return Err(LensError::mismatch("LRE state sets", "they differ in template, candidates or read position; collect both with the same ones"));
        }
        let mut out = self.clone();
        out.items.extend(other.items.iter().cloned());
        Ok(out)
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The subjects' hidden states at `layer`, `[n, d_model]`.
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`].
    pub fn h_at(&self, layer: usize) -> Result<Tensor> {
        let n_layers = self.items.first().map_or(0, |s| s.h.dim(0).unwrap_or(0));
        if layer >= n_layers {
            return Err(LensError::LayerOutOfRange { layer, n_layers });
        }
        let rows = self
            .items
            .iter()
            .map(|s| s.h.i(layer))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Position (in the model's input, BOS included as the model's own tokenizer adds it,
/// `ModelConfig::hf_prepends_bos`) of the token that holds
/// the subject's last character in `template` filled with `subject`, from the tokenizer's
/// offsets (robust to tokenizers that merge differently).
///
/// # Errors
/// [`LensError::BadData`] if no token covers the subject; tokenizer errors.
pub fn subject_last_token(
    model: &HookedTransformer,
    template: &str,
    subject: &str,
) -> Result<usize> {
    let prompt = template.replace("{}", subject);
    let start = template.find("{}").unwrap_or(0);
    let end = start + subject.len();
    let (_, offsets) = model
        .tokenizer()
        .encode_with_offsets(&prompt, Some(model.cfg.hf_prepends_bos))?;
    offsets
        .iter()
        .rposition(|&(s, e)| s < end && e > start)
        .ok_or_else(|| LensError::BadData {
            what: format!("prompt {prompt:?}"),
            detail: format!("no token covers the subject {subject:?}; is the subject empty?"),
        })
}
