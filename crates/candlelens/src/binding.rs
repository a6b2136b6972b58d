//! Entity binding and binding-ID vectors: the entity-binding notebook (seed 004) as a library.
//!
//! Feng & Steinhardt (2023), "How do language models bind entities in context?": a context
//! binds entities `E_k` to attributes `A_k` ("Leo lives in the capital city ofVietnam. Dean
//! lives in the capital city ofPeru."), and a question asks for the attribute of one entity.
//! Their *binding-ID* hypothesis: the residual stream at `E_k` and at `A_k` carries a vector
//! `b_E(k)` / `b_A(k)` that depends only on the index `k` of the pair, and the model answers by
//! matching an entity's binding ID with an attribute's. The difference of means over prompts
//!
//! ```text
//! Δ_E[l] = mean resid_post_l[E_0] - mean resid_post_l[E_1]      [n_layers, d_model]
//! Δ_A[l] = mean resid_post_l[A_0] - mean resid_post_l[A_1]
//! ```
//!
//! estimates `b_E(0) - b_E(1)` (and `b_A(0) - b_A(1)`) at the output of every block `l`
//! ([`BindingMeans::collect`], [`BindingMeans::vectors`]). An [`Intervention`] adds multiples
//! of `Δ` at entity / attribute positions of every layer's `hook_resid_post`:
//!
//! - [`Intervention::subtract`] — the source's: `E_1 -= Δ_E`, `A_1 -= Δ_A` at every layer,
//!   i.e. the second pair is moved one further step along the binding direction, away from
//!   the first pair's IDs. If binding IDs are what the model matches, the pair stays bound (both
//!   members moved alike) and the answer should survive.
//! - the paper's swaps: [`Intervention::swap_entities`] (`E_0 -= Δ_E`, `E_1 += Δ_E`: the
//!   entities exchange binding IDs, so the question about `E_k` should now get the other
//!   attribute), [`Intervention::swap_attributes`], and [`Intervention::swap_both`] (both pairs
//!   exchange IDs together: the binding, and the answer, should stay).
//! - the control: [`BindingVectors::random_like`] — random directions with `Δ`'s norm at
//!   every layer, applied like the real vectors.
//!
//! Prompts follow the source exactly ([`Task`]), sampled like its `get_prompts` with Python's
//! `random` module reproduced ([`PyRandom`]): `random.seed(s)` before the source's code gives
//! the same prompts as [`sample_prompts`] with `PyRandom::seed(s)`. Entity and attribute
//! positions come from the tokenizer's offsets ([`find_positions`]), not from fixed offsets.
//!
//! ```no_run
//! use candlelens::prelude::*;
//! use candlelens::binding::{self, BindingBatch, BindingLists, BindingMeans, Intervention, PyRandom, Task};
//! # fn main() -> candlelens::Result<()> {
//! let model = HookedTransformer::from_pretrained("smollm2-135m")?;
//! let lists = BindingLists::from_file("data/entity_binding/lists.json")?.one_token(&model)?;
//! let mut rng = PyRandom::seed(0);
//! let prompts = binding::sample_prompts(&mut rng, 100, &lists.names, &lists.countries,
//!                                       Task::Capital, Some(&lists.capitals), 2)?;
//! let capital = BindingBatch::new(&model, prompts)?;
//! let (means, clean) = BindingMeans::collect(&model, &capital)?;   // one forward
//! let vectors = means.vectors()?;                                     // Δ_E, Δ_A [n_layers, d_model]
//! let after = binding::intervene(&model, &capital, &vectors, &Intervention::subtract())?;
//! println!("accuracy {:.2} -> {:.2}, logit diff {:.2} -> {:.2}",
//!          clean.accuracy, after.accuracy, clean.logit_diff, after.logit_diff);
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::Range;
use std::path::Path;

use candle_core::{DType, IndexOp, Tensor};

use crate::error::{LensError, Result};
use crate::hooks::{HookFilter, HookPoint, Hooks};
use crate::model::{HookedTransformer, LogitsAt};
use crate::tokens::Tokens;

/// Python's `random` module (CPython's Mersenne Twister and seeding), shared with the LRE
/// notebook: the sampler of [`sample_prompts`].
pub use crate::lre::PyRandom;

// ----- lists --------------------------------------------------------------------------------

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
    /// [`LensError::MissingFile`], [`LensError::Json`], or [`LensError::InvalidArgument`] if
    /// a list is missing or countries and capitals differ in length.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let v = crate::data::read_json(path)?;
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
            return Err(LensError::InvalidArgument(format!(
                "{}: {} countries but {} capitals; the lists pair them by index",
                path.display(),
                lists.countries.len(),
                lists.capitals.len()
            )));
        }
        Ok(lists)
    }

    /// The entries that are single tokens for this model, as the source's
    /// `get_one_token_lists` keeps them: names alone, countries and capitals as pairs, fruits
    /// alone; an entry without a leading space must be one token with one too.
    ///
    /// # Errors
    /// Tokenizer errors.
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
/// Tokenizer errors.
pub fn is_one_token(model: &HookedTransformer, text: &str) -> Result<bool> {
    Ok(model.tokenizer().encode(text)?.len() == 1)
}

/// The source's `get_one_token_lists`: the row indices `i` at which every column's entry is one
/// token, and, if it has no leading space, one token with a leading space as well. Columns are
/// index-aligned lists (countries with capitals).
///
/// # Errors
/// [`LensError::InvalidArgument`] for no columns or columns of different lengths; tokenizer
/// errors.
pub fn one_token_rows(model: &HookedTransformer, columns: &[&[String]]) -> Result<Vec<usize>> {
    let Some(first) = columns.first() else {
        return Err(LensError::InvalidArgument(
            "one_token_rows needs at least one list".into(),
        ));
    };
    if columns.iter().any(|c| c.len() != first.len()) {
        return Err(LensError::InvalidArgument(format!(
            "one_token_rows: the lists differ in length ({:?}); they must be aligned by index",
            columns.iter().map(|c| c.len()).collect::<Vec<_>>()
        )));
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

// ----- prompts ------------------------------------------------------------------------------

/// The source's two prompt templates (its `get_prompt_capital` / `get_prompt_fruit`), character
/// for character. Attributes are inserted as given: the capital template writes
/// `"capital city of{country}"` with the source's countries, which have no leading space, so
/// the country is glued to "of" (the source's prompt, kept as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// "Context: E_0 lives in the capital city ofA_0.\nE_1 lives in ..." →
    /// "Answer: E_k lives in the city of" (answer: the capital of A_k).
    Capital,
    /// "Context: E_0 likes eating the A_0. E_1 likes eating the A_1\nrespectively." →
    /// "Answer: E_k likes the" (answer: A_k).
    Fruit,
}

const HEADER: &str = "Answer the question based on the context below. Keep the answer short.\n";

/// A prompt's text with the byte spans of its context's entities and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptText {
    /// The prompt.
    pub text: String,
    /// Byte span of `E_k` in the context (the first mention), per pair.
    pub entity_spans: Vec<Range<usize>>,
    /// Byte span of `A_k` (including a leading space if the attribute has one), per pair.
    pub attribute_spans: Vec<Range<usize>>,
}

impl Task {
    /// The prompt asking for `subject`'s attribute, with the spans of every pair's entity and
    /// attribute.
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] if `entities` and `attributes` differ in length.
    pub fn prompt(
        &self,
        subject: &str,
        entities: &[String],
        attributes: &[String],
    ) -> Result<PromptText> {
        if entities.len() != attributes.len() {
            return Err(LensError::InvalidArgument(format!(
                "{} entities but {} attributes; a prompt binds them in pairs",
                entities.len(),
                attributes.len()
            )));
        }
        let mut text = String::from(HEADER);
        text.push_str("Context: ");
        let (mut es, mut as_) = (Vec::new(), Vec::new());
        let push = |text: &mut String, s: &str| {
            let start = text.len();
            text.push_str(s);
            start..text.len()
        };
        let (sep, link, end) = match self {
            Task::Capital => ("\n", " lives in the capital city of", "."),
            Task::Fruit => (". ", " likes eating the", ""),
        };
        for (i, (e, a)) in entities.iter().zip(attributes).enumerate() {
            if i > 0 {
                text.push_str(sep);
            }
            es.push(push(&mut text, e));
            text.push_str(link);
            as_.push(push(&mut text, a));
            text.push_str(end);
        }
        match self {
            Task::Capital => text.push_str(&format!(
                "\nQuestion: Which city does {subject} live in?\nAnswer: {subject} lives in the city of"
            )),
            Task::Fruit => text.push_str(&format!(
                "\nrespectively.\nQuestion: What food does {subject} like?\nAnswer: {subject} likes the"
            )),
        }
        Ok(PromptText {
            text,
            entity_spans: es,
            attribute_spans: as_,
        })
    }
}

/// One sampled prompt: the pairs, the question's subject and the two answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingPrompt {
    /// Which template.
    pub task: Task,
    /// The prompt text and the spans of its entities and attributes.
    pub text: PromptText,
    /// `E_0, E_1, ...` in context order.
    pub entities: Vec<String>,
    /// `A_0, A_1, ...` in context order.
    pub attributes: Vec<String>,
    /// The index `k` of the pair asked about (the first entity equal to the subject, as the
    /// source's `ents.index`).
    pub subject: usize,
    /// The index of the pair whose attribute is the incorrect answer.
    pub other: usize,
    /// The correct answer (the capital of `A_k`, or `A_k`).
    pub correct: String,
    /// The incorrect answer: another pair's.
    pub incorrect: String,
}

/// CPython's `random.sample(range(n), k)`: the same indices in the same order.
fn py_sample(rng: &mut PyRandom, n: usize, k: usize) -> Vec<usize> {
    let mut setsize = 21usize;
    if k > 5 {
        let e = ((3 * k) as f64).ln() / 4f64.ln();
        setsize += 4usize.pow(e.ceil() as u32);
    }
    let mut out = Vec::with_capacity(k);
    if n <= setsize {
        let mut pool: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = rng.randbelow((n - i) as u32) as usize;
            out.push(pool[j]);
            pool[j] = pool[n - i - 1];
        }
    } else {
        for _ in 0..k {
            let mut j = rng.randbelow(n as u32) as usize;
            while out.contains(&j) {
                j = rng.randbelow(n as u32) as usize;
            }
            out.push(j);
        }
    }
    out
}

/// The source's `get_prompts`, with Python's `random` reproduced: `n` prompts of `num_pairs`
/// entity/attribute pairs each. First, for every prompt, `random.sample` of the entities and of
/// the attributes; then, per prompt, `random.choice` of the subject and of the incorrect
/// attribute. With `answers` (aligned with `attributes`) the answers are looked up there (the
/// capital of the country); without, the attributes are the answers.
///
/// `PyRandom::seed(s)` here gives the prompts of `random.seed(s)` in Python before the
/// source's calls (and a second call continues the stream, as the source's fruit prompts do).
///
/// # Errors
/// [`LensError::InvalidArgument`] for fewer than 2 pairs, more pairs than entries, or
/// `answers` not aligned with `attributes`.
pub fn sample_prompts(
    rng: &mut PyRandom,
    n: usize,
    entities: &[String],
    attributes: &[String],
    task: Task,
    answers: Option<&[String]>,
    num_pairs: usize,
) -> Result<Vec<BindingPrompt>> {
    if num_pairs < 2 || num_pairs > entities.len() || num_pairs > attributes.len() {
        return Err(LensError::InvalidArgument(format!(
            "{num_pairs} pairs per prompt from {} entities and {} attributes: need at least 2 pairs and no more than either list holds",
            entities.len(),
            attributes.len()
        )));
    }
    if let Some(a) = answers {
        if a.len() != attributes.len() {
            return Err(LensError::InvalidArgument(format!(
                "{} answers for {} attributes; the answers are looked up by the attribute's index",
                a.len(),
                attributes.len()
            )));
        }
    }
    let mut picks = Vec::with_capacity(n);
    for _ in 0..n {
        let e = py_sample(rng, entities.len(), num_pairs);
        let a = py_sample(rng, attributes.len(), num_pairs);
        picks.push((e, a));
    }
    let mut out = Vec::with_capacity(n);
    for (e_idx, a_idx) in picks {
        let ents: Vec<String> = e_idx.iter().map(|&i| entities[i].clone()).collect();
        let attrs: Vec<String> = a_idx.iter().map(|&i| attributes[i].clone()).collect();
        let subject_name = ents[rng.randbelow(num_pairs as u32) as usize].clone();
        let subject = ents.iter().position(|e| *e == subject_name).unwrap_or(0);
        let attribute = attrs[subject].clone();
        // `incorrect_attributes.remove(attribute)`: drops the first equal entry
        let mut others = attrs.clone();
        if let Some(p) = others.iter().position(|a| *a == attribute) {
            others.remove(p);
        }
        let incorrect_attr = others[rng.randbelow(others.len() as u32) as usize].clone();
        let other = attrs.iter().position(|a| *a == incorrect_attr).unwrap_or(0);
        let lookup = |attr: &str| -> String {
            match answers {
                Some(ans) => {
                    let i = attributes.iter().position(|a| a == attr).unwrap_or(0);
                    ans[i].clone()
                }
                None => attr.to_string(),
            }
        };
        let text = task.prompt(&subject_name, &ents, &attrs)?;
        out.push(BindingPrompt {
            task,
            text,
            correct: lookup(&attribute),
            incorrect: lookup(&incorrect_attr),
            entities: ents,
            attributes: attrs,
            subject,
            other,
        });
    }
    Ok(out)
}

// ----- positions ----------------------------------------------------------------------------

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
/// [`LensError::BindingPosition`] naming the entry and the tokens its characters fall in, if
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
        Err(LensError::BindingPosition {
            role: role.to_string(),
            entry: entry.to_string(),
            prompt: index,
            tokens: pieces,
        })
    };
    let mut pos = BindingPositions {
        entities: Vec::new(),
        attributes: Vec::new(),
    };
    for (k, (span, e)) in prompt
        .text
        .entity_spans
        .iter()
        .zip(&prompt.entities)
        .enumerate()
    {
        pos.entities.push(find(span, &format!("entity E_{k}"), e)?);
    }
    for (k, (span, a)) in prompt
        .text
        .attribute_spans
        .iter()
        .zip(&prompt.attributes)
        .enumerate()
    {
        pos.attributes
            .push(find(span, &format!("attribute A_{k}"), a)?);
    }
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
    /// [`LensError::BindingPosition`] for an entry that is not a token of its own,
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
    /// [`Evaluation::rescore`].
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
    /// Tokenizer errors; [`LensError::InvalidArgument`] for `i` out of range.
    pub fn describe_positions(&self, model: &HookedTransformer, i: usize) -> Result<String> {
        let (Some(pos), true) = (self.positions.get(i), i < self.tokens.batch()) else {
            return Err(LensError::InvalidArgument(format!(
                "prompt {i} of a batch of {}",
                self.len()
            )));
        };
        let strs = model.ids_to_str_tokens(self.tokens.row(i))?;
        let mut parts = Vec::new();
        for k in 0..pos.entities.len() {
            for (role, p) in [("E", pos.entities[k]), ("A", pos.attributes[k])] {
                parts.push(format!("{role}_{k} {:?} @{p}", strs[p]));
            }
        }
        Ok(parts.join(" | "))
    }
}

// ----- evaluation ---------------------------------------------------------------------------

/// How a batch is answered: the source's metrics on the final position's logits.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Fraction of prompts whose greedy next token — the argmax of the final logits, i.e. the
    /// first token `generate(max_new_tokens=1, do_sample=False)` gives — is the correct answer
    /// (the source's first accuracy).
    pub accuracy: f32,
    /// Fraction of prompts whose correct answer's logit beats the incorrect one's (the source's
    /// "Accuracy" after the fruit intervention: an argmax over the two answers).
    pub pair_accuracy: f32,
    /// Fraction whose greedy next token is the *incorrect* answer (where a swap sends prompts).
    pub swapped: f32,
    /// Mean over prompts of `logit[correct] - logit[incorrect]`.
    pub logit_diff: f32,
    /// Per prompt logit difference.
    pub per_prompt: Vec<f32>,
    /// Per prompt greedy next token.
    pub predictions: Vec<u32>,
    /// The final position's logits `[batch, d_vocab]` (f32), kept to score other answers
    /// ([`Evaluation::rescore`]).
    pub last_logits: Tensor,
}

impl Evaluation {
    /// The same run scored against other `(correct, incorrect)` ids (no forward pass).
    ///
    /// # Errors
    /// As [`evaluate_logits`].
    pub fn rescore(&self, answers: &[(u32, u32)]) -> Result<Evaluation> {
        evaluate_logits(&self.last_logits, answers)
    }

    /// The evaluation split by which pair the question asks about: element `k` scores only
    /// the prompts whose subject is `E_k` (a model that always answers the last pair's
    /// attribute scores 0 for `k = 0` and 1 for the last).
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] if `answers` does not match the batch.
    pub fn by_subject(
        &self,
        batch: &BindingBatch,
        answers: &[(u32, u32)],
    ) -> Result<Vec<Evaluation>> {
        if answers.len() != batch.len() || self.per_prompt.len() != batch.len() {
            return Err(LensError::InvalidArgument(format!(
                "an evaluation of {} prompts and {} answers for a batch of {}",
                self.per_prompt.len(),
                answers.len(),
                batch.len()
            )));
        }
        (0..batch.num_pairs())
            .map(|k| {
                let rows: Vec<u32> = (0..batch.len())
                    .filter(|&i| batch.prompts[i].subject == k)
                    .map(|i| i as u32)
                    .collect();
                let picked: Vec<(u32, u32)> = rows.iter().map(|&i| answers[i as usize]).collect();
                let idx = Tensor::new(rows, self.last_logits.device())?;
                evaluate_logits(&self.last_logits.index_select(&idx, 0)?, &picked)
            })
            .collect()
    }
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accuracy {:.4} (two-way {:.4}, other answer {:.4}), logit diff {:.4}",
            self.accuracy, self.pair_accuracy, self.swapped, self.logit_diff
        )
    }
}

/// The [`Evaluation`] of final-position logits `[batch, d_vocab]` against `(correct,
/// incorrect)` ids per prompt.
///
/// # Errors
/// [`LensError::InvalidArgument`] if the counts differ or an id is outside the vocabulary.
pub fn evaluate_logits(last_logits: &Tensor, answers: &[(u32, u32)]) -> Result<Evaluation> {
    let last_logits = last_logits.to_dtype(DType::F32)?;
    let rows: Vec<Vec<f32>> = last_logits.to_vec2()?;
    if rows.len() != answers.len() {
        return Err(LensError::InvalidArgument(format!(
            "{} answer pairs for {} prompts",
            answers.len(),
            rows.len()
        )));
    }
    let (mut hit, mut pair, mut other) = (0usize, 0usize, 0usize);
    let mut per_prompt = Vec::with_capacity(rows.len());
    let mut predictions = Vec::with_capacity(rows.len());
    for (r, &(c, i)) in rows.iter().zip(answers) {
        let at = |id: u32| {
            r.get(id as usize).copied().ok_or_else(|| {
                LensError::InvalidArgument(format!(
                    "answer id {id} is outside the vocabulary ({})",
                    r.len()
                ))
            })
        };
        let (lc, li) = (at(c)?, at(i)?);
        let argmax = r
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(t, _)| t as u32);
        hit += usize::from(argmax == c);
        other += usize::from(argmax == i);
        pair += usize::from(lc > li);
        per_prompt.push(lc - li);
        predictions.push(argmax);
    }
    let n = rows.len().max(1) as f32;
    Ok(Evaluation {
        accuracy: hit as f32 / n,
        pair_accuracy: pair as f32 / n,
        swapped: other as f32 / n,
        logit_diff: crate::metrics::mean(&per_prompt),
        per_prompt,
        predictions,
        last_logits,
    })
}

/// Runs the batch with `hooks` (an empty set for the clean run) and evaluates it. Only the
/// final positions' logits are computed.
///
/// # Errors
/// Whatever a hook returns; [`LensError::LayerOutOfRange`].
pub fn evaluate(
    model: &HookedTransformer,
    batch: &BindingBatch,
    hooks: &mut Hooks,
) -> Result<Evaluation> {
    let (logits, _) = model.run_with_hooks_and_cache(
        &batch.tokens,
        hooks,
        Some(HookFilter::Points(Vec::new())),
        LogitsAt::Last,
    )?;
    evaluate_logits(&logits, &batch.answers)
}

// ----- binding vectors ----------------------------------------------------------------------

/// Mean `hook_resid_post` over a batch at every pair's entity and attribute positions.
#[derive(Clone, Debug)]
pub struct BindingMeans {
    /// Mean `resid_post` at `E_k`: `[num_pairs, n_layers, d_model]` (f32).
    pub entity: Tensor,
    /// Mean `resid_post` at `A_k`: `[num_pairs, n_layers, d_model]` (f32).
    pub attribute: Tensor,
}

impl BindingMeans {
    /// One forward of the batch: the means at every layer, read by hooks at the entity and
    /// attribute positions (nothing else is kept), and the clean [`Evaluation`].
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] for prompts with different numbers of pairs.
    pub fn collect(
        model: &HookedTransformer,
        batch: &BindingBatch,
    ) -> Result<(BindingMeans, Evaluation)> {
        let k = batch.num_pairs();
        if batch.positions.iter().any(|p| p.entities.len() != k) {
            return Err(LensError::InvalidArgument(
                "BindingMeans::collect: every prompt must have the same number of pairs".into(),
            ));
        }
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        // flat row index into [batch * pos]: slot (E_0..E_k-1, A_0..A_k-1) major, prompt minor
        let mut idx = Vec::with_capacity(2 * k * b);
        for slot in 0..2 * k {
            for (i, pos) in batch.positions.iter().enumerate() {
                let at = if slot < k {
                    pos.entities[slot]
                } else {
                    pos.attributes[slot - k]
                };
                idx.push((i * p + at) as u32);
            }
        }
        let idx = Tensor::new(idx, model.device())?;
        let n_layers = model.cfg.n_layers;
        let mut per_layer: Vec<Option<Tensor>> = vec![None; n_layers];
        let eval = {
            let mut hooks = Hooks::new();
            let points = (0..n_layers).map(HookPoint::ResidPost).collect();
            let slots = &mut per_layer;
            hooks.add_filter(HookFilter::Points(points), |act, hp| {
                let d = act.dim(2)?;
                let rows = act
                    .reshape((b * p, d))?
                    .index_select(&idx, 0)?
                    .to_dtype(DType::F32)?
                    .reshape((2 * k, b, d))?
                    .mean(1)?; // [2k, d]
                if let Some(l) = hp.layer() {
                    slots[l] = Some(rows);
                }
                Ok(None)
            });
            evaluate(model, batch, &mut hooks)?
        };
        let layers = per_layer
            .into_iter()
            .enumerate()
            .map(|(l, t)| {
                t.ok_or_else(|| {
                    LensError::InvalidArgument(format!("layer {l}'s resid_post never fired"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let all = Tensor::stack(&layers, 1)?; // [2k, n_layers, d]
        Ok((
            BindingMeans {
                entity: all.narrow(0, 0, k)?,
                attribute: all.narrow(0, k, k)?,
            },
            eval,
        ))
    }

    /// `Δ_E = mean[E_0] - mean[E_1]`, `Δ_A = mean[A_0] - mean[A_1]` per layer.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn vectors(&self) -> Result<BindingVectors> {
        self.difference(0, 1)
    }

    /// `mean[E_i] - mean[E_j]` and `mean[A_i] - mean[A_j]` per layer.
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] for a pair index beyond the prompts' pairs.
    pub fn difference(&self, i: usize, j: usize) -> Result<BindingVectors> {
        let k = self.entity.dim(0)?;
        if i >= k || j >= k {
            return Err(LensError::InvalidArgument(format!(
                "pairs {i} and {j} of prompts with {k} pairs"
            )));
        }
        Ok(BindingVectors {
            entity: (self.entity.i(i)? - self.entity.i(j)?)?,
            attribute: (self.attribute.i(i)? - self.attribute.i(j)?)?,
        })
    }
}

/// Binding-ID difference vectors per layer.
#[derive(Clone, Debug)]
pub struct BindingVectors {
    /// `Δ_E[l]`: `[n_layers, d_model]` (f32).
    pub entity: Tensor,
    /// `Δ_A[l]`: `[n_layers, d_model]` (f32).
    pub attribute: Tensor,
}

impl BindingVectors {
    /// L2 norms per layer: `(|Δ_E[l]|, |Δ_A[l]|)`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn norms(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?) };
        Ok((n(&self.entity)?, n(&self.attribute)?))
    }

    /// The control: at every layer a random direction (standard normal, seeded) scaled to the
    /// norm of `Δ_E[l]` (resp. `Δ_A[l]`).
    ///
    /// # Errors
    /// Tensor errors.
    pub fn random_like(&self, seed: u64) -> Result<BindingVectors> {
        let mut rng = PyRandom::seed(seed);
        let mut random = |t: &Tensor| -> Result<Tensor> {
            let (l, d) = t.dims2()?;
            let norms: Vec<f32> = t.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            let mut out = Vec::with_capacity(l * d);
            for norm in norms {
                let g: Vec<f64> = (0..d).map(|_| gaussian(&mut rng)).collect();
                let gn = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
                out.extend(g.iter().map(|x| (x / gn * norm as f64) as f32));
            }
            Ok(Tensor::from_vec(out, (l, d), t.device())?)
        };
        Ok(BindingVectors {
            entity: random(&self.entity)?,
            attribute: random(&self.attribute)?,
        })
    }
}

/// CPython's `random.random()` from the generator's 32-bit words.
fn uniform(rng: &mut PyRandom) -> f64 {
    let a = (rng.getrandbits(32) >> 5) as f64;
    let b = (rng.getrandbits(32) >> 6) as f64;
    (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut PyRandom) -> f64 {
    let u1 = 1.0 - uniform(rng); // (0, 1]
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

// ----- interventions ------------------------------------------------------------------------

/// Which member of a pair an edit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The entity `E_k`.
    Entity,
    /// The attribute `A_k`.
    Attribute,
}

/// Edits of the residual stream at every layer's `hook_resid_post`: each `(role, k, c)` adds
/// `c · Δ_role[l]` at the position of pair `k`'s entity or attribute, in every prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Intervention {
    /// A label for tables.
    pub name: String,
    /// `(role, pair, coefficient)`.
    pub edits: Vec<(Role, usize, f32)>,
}

impl Intervention {
    /// The source's: `resid_post[E_1] -= Δ_E[l]`, `resid_post[A_1] -= Δ_A[l]` at every layer.
    pub fn subtract() -> Self {
        Intervention {
            name: "subtract Δ at E_1, A_1".into(),
            edits: vec![(Role::Entity, 1, -1.0), (Role::Attribute, 1, -1.0)],
        }
    }

    /// The paper's entity swap: `E_0 -= Δ_E`, `E_1 += Δ_E` (E_0 takes E_1's binding ID and
    /// vice versa): the question about `E_k` should get the other attribute.
    pub fn swap_entities() -> Self {
        Intervention {
            name: "swap entity IDs".into(),
            edits: vec![(Role::Entity, 0, -1.0), (Role::Entity, 1, 1.0)],
        }
    }

    /// The attribute swap: `A_0 -= Δ_A`, `A_1 += Δ_A`.
    pub fn swap_attributes() -> Self {
        Intervention {
            name: "swap attribute IDs".into(),
            edits: vec![(Role::Attribute, 0, -1.0), (Role::Attribute, 1, 1.0)],
        }
    }

    /// Both swaps at once: each pair keeps one binding ID, so the answer should not change.
    pub fn swap_both() -> Self {
        let mut edits = Self::swap_entities().edits;
        edits.extend(Self::swap_attributes().edits);
        Intervention {
            name: "swap both".into(),
            edits,
        }
    }

    /// The additive edit per position, as a coefficient matrix `[batch * pos, 2]` (columns:
    /// `Δ_E`, `Δ_A`); the edit at layer `l` is this times `[Δ_E[l]; Δ_A[l]]`.
    fn coefficients(&self, batch: &BindingBatch, device: &candle_core::Device) -> Result<Tensor> {
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        let mut m = vec![0f32; b * p * 2];
        for (i, pos) in batch.positions.iter().enumerate() {
            for &(role, k, c) in &self.edits {
                let (list, col) = match role {
                    Role::Entity => (&pos.entities, 0),
                    Role::Attribute => (&pos.attributes, 1),
                };
                let at = *list.get(k).ok_or_else(|| {
                    LensError::InvalidArgument(format!(
                        "intervention '{}' edits pair {k}, but prompt {i} has {} pairs",
                        self.name,
                        list.len()
                    ))
                })?;
                m[(i * p + at) * 2 + col] += c;
            }
        }
        Ok(Tensor::from_vec(m, (b * p, 2), device)?)
    }

    /// The edit added at layer `l`'s `resid_post`: `[batch, pos, d_model]`, zero except at the
    /// edited positions.
    ///
    /// # Errors
    /// As [`Self::hooks`].
    pub fn delta(
        &self,
        vectors: &BindingVectors,
        batch: &BindingBatch,
        layer: usize,
    ) -> Result<Tensor> {
        let m = self.coefficients(batch, vectors.entity.device())?;
        let v = Tensor::stack(&[vectors.entity.i(layer)?, vectors.attribute.i(layer)?], 0)?;
        let (b, p) = (batch.tokens.batch(), batch.tokens.max_len());
        Ok(m.matmul(&v)?.reshape((b, p, v.dim(1)?))?)
    }

    /// Hooks on every layer's `hook_resid_post` that add the edits; use them with
    /// [`HookedTransformer::run_with_hooks`] on `batch.tokens`.
    ///
    /// # Errors
    /// [`LensError::InvalidArgument`] if the vectors do not fit the model (`[n_layers,
    /// d_model]`) or an edit names a pair the prompts lack.
    pub fn hooks(
        &self,
        model: &HookedTransformer,
        vectors: &BindingVectors,
        batch: &BindingBatch,
    ) -> Result<Hooks<'static>> {
        let mut hooks = Hooks::new();
        self.add_to(&mut hooks, model, vectors, batch)?;
        Ok(hooks)
    }

    /// Adds the edits' hooks to an existing set (after the hooks already there).
    ///
    /// # Errors
    /// As [`Self::hooks`].
    pub fn add_to(
        &self,
        hooks: &mut Hooks,
        model: &HookedTransformer,
        vectors: &BindingVectors,
        batch: &BindingBatch,
    ) -> Result<()> {
        let want = [model.cfg.n_layers, model.cfg.d_model];
        for t in [&vectors.entity, &vectors.attribute] {
            if t.dims() != want {
                return Err(LensError::InvalidArgument(format!(
                    "binding vectors of shape {:?} for a model with [n_layers, d_model] = {want:?}; compute them on this model",
                    t.dims()
                )));
            }
        }
        let device = model.device();
        let m = self.coefficients(batch, device)?;
        // [n_layers, 2, d_model]
        let v = Tensor::stack(&[&vectors.entity, &vectors.attribute], 1)?.to_device(device)?;
        let (b, p, d) = (batch.tokens.batch(), batch.tokens.max_len(), want[1]);
        let points = (0..model.cfg.n_layers).map(HookPoint::ResidPost).collect();
        hooks.add_filter(HookFilter::Points(points), move |act, hp| {
            let Some(l) = hp.layer() else { return Ok(None) };
            let delta = m.matmul(&v.i(l)?)?.reshape((b, p, d))?;
            Ok(Some(act.broadcast_add(&delta.to_dtype(act.dtype())?)?))
        });
        Ok(())
    }
}

/// Runs `batch` with `intervention` built from `vectors` and evaluates it.
///
/// # Errors
/// As [`Intervention::hooks`] and [`evaluate`].
pub fn intervene(
    model: &HookedTransformer,
    batch: &BindingBatch,
    vectors: &BindingVectors,
    intervention: &Intervention,
) -> Result<Evaluation> {
    let mut hooks = intervention.hooks(model, vectors, batch)?;
    evaluate(model, batch, &mut hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_the_source() {
        let e = vec!["Leo".to_string(), "Dean".to_string()];
        let a = vec!["Vietnam".to_string(), "Peru".to_string()];
        let p = Task::Capital.prompt("Dean", &e, &a).unwrap();
        assert_eq!(
            p.text,
            "Answer the question based on the context below. Keep the answer short.\nContext: Leo lives in the capital city ofVietnam.\nDean lives in the capital city ofPeru.\nQuestion: Which city does Dean live in?\nAnswer: Dean lives in the city of"
        );
        assert_eq!(&p.text[p.entity_spans[1].clone()], "Dean");
        assert_eq!(&p.text[p.attribute_spans[0].clone()], "Vietnam");
        let f = vec![" kiwi".to_string(), " apple".to_string()];
        let e = vec!["Hope".to_string(), "Seth".to_string()];
        let p = Task::Fruit.prompt("Seth", &e, &f).unwrap();
        assert_eq!(
            p.text,
            "Answer the question based on the context below. Keep the answer short.\nContext: Hope likes eating the kiwi. Seth likes eating the apple\nrespectively.\nQuestion: What food does Seth like?\nAnswer: Seth likes the"
        );
        assert_eq!(&p.text[p.attribute_spans[1].clone()], " apple");
        assert!(Task::Fruit.prompt("x", &e, &f[..1]).is_err());
    }

    #[test]
    fn sample_is_cpython_for_small_and_large_populations() {
        // `random.seed(1); random.sample(range(10), 3)` and `random.sample(range(50), 4)` in
        // CPython 3.11 (the pool and the set branch)
        let mut r = PyRandom::seed(1);
        assert_eq!(py_sample(&mut r, 10, 3), vec![2, 1, 4]);
        assert_eq!(py_sample(&mut r, 50, 4), vec![7, 31, 48, 28]);
    }
}
