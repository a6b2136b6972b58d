//! The source's prompt templates ([`Task`]) and its seeded sampling of prompts
//! ([`sample_prompts`], Python's `random` reproduced).

use std::ops::Range;

use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;

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
    /// [`LensError::Mismatch`] if `entities` and `attributes` differ in length.
    pub fn prompt(
        &self,
        subject: &str,
        entities: &[String],
        attributes: &[String],
    ) -> Result<PromptText> {
        if entities.len() != attributes.len() {
            return Err(LensError::mismatch(
                "entities and attributes",
                format!(
                    "{} entities but {} attributes; a prompt binds them in pairs",
                    entities.len(),
                    attributes.len()
                ),
            ));
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
/// [`LensError::TooFew`] for fewer than 2 pairs or more pairs than entries,
/// [`LensError::Mismatch`] for `answers` not aligned with `attributes`.
pub fn sample_prompts(
    rng: &mut PyRandom,
    n: usize,
    entities: &[String],
    attributes: &[String],
    task: Task,
    answers: Option<&[String]>,
    num_pairs: usize,
) -> Result<Vec<BindingPrompt>> {
    if num_pairs < 2 {
        return Err(LensError::too_few(
            "pairs per prompt",
            2,
            num_pairs,
            "a binding prompt needs at least two entity/attribute pairs",
        ));
    }
    let shortest = entities.len().min(attributes.len());
    if num_pairs > shortest {
        return Err(LensError::TooFew {
            what: format!(
                "entries for {num_pairs} pairs per prompt ({} entities, {} attributes)",
                entities.len(),
                attributes.len()
            ),
            need: num_pairs,
            got: shortest,
            fix: "ask for no more pairs than either list holds".into(),
        });
    }
    if let Some(a) = answers {
        if a.len() != attributes.len() {
            return Err(LensError::mismatch("answers and attributes", format!(
                    "{} answers for {} attributes; the answers are looked up by the attribute's index",
                    a.len(),
                    attributes.len()
                )));
        }
    }
    let mut picks = Vec::with_capacity(n);
    for _ in 0..n {
        let e = rng.sample(entities.len(), num_pairs);
        let a = rng.sample(attributes.len(), num_pairs);
        picks.push((e, a));
    }
    let mut out = Vec::with_capacity(n);
    for (e_idx, a_idx) in picks {
        let ents: Vec<String> = e_idx.iter().map(|&i| entities[i].clone()).collect();
        let attrs: Vec<String> = a_idx.iter().map(|&i| attributes[i].clone()).collect();
        let subject_name = ents[rng.choice(num_pairs)].clone();
        let subject = ents.iter().position(|e| *e == subject_name).unwrap_or(0);
        let attribute = attrs[subject].clone();
        // `incorrect_attributes.remove(attribute)`: drops the first equal entry
        let mut others = attrs.clone();
        if let Some(p) = others.iter().position(|a| *a == attribute) {
            others.remove(p);
        }
        let incorrect_attr = others[rng.choice(others.len())].clone();
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
}
