//! `test_prompt`: how the model ranks an answer after a prompt, as data that also prints as
//! TransformerLens's `utils.test_prompt` table.

use std::fmt;

use candle_core::{DType, IndexOp};

use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};
use crate::viz::Table;

/// One vocabulary entry at one position.
#[derive(Clone, Debug, PartialEq)]
pub struct TopToken {
    /// 0 = most likely.
    pub rank: usize,
    /// The token id.
    pub id: u32,
    /// The token as a string.
    pub token: String,
    /// Its logit at that position.
    pub logit: f32,
    /// Its softmax probability at that position.
    pub prob: f32,
}

/// How [`HookedTransformer::test_prompt`] builds and reports its run (TransformerLens's keyword
/// arguments). `TestPromptOptions::default()` is TransformerLens's default call: the tokenizer's
/// BOS choice, a space put before an answer that lacks one, the top 10 tokens.
///
/// ```
/// # use candlelens::prompts::TestPromptOptions;
/// // the Paris source: `prepend_bos=True, prepend_space_to_answer=False`
/// let opts = TestPromptOptions { prepend_bos: Some(true), prepend_space_to_answer: false, ..Default::default() };
/// assert_eq!(opts.top_k, 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPromptOptions {
    /// Prepend BOS to the prompt; `None` = the tokenizer's default.
    pub prepend_bos: Option<bool>,
    /// Put a space before the answer when it has none (TransformerLens's default: true).
    pub prepend_space_to_answer: bool,
    /// How many of the model's top tokens to list at each answer position.
    pub top_k: usize,
}

impl Default for TestPromptOptions {
    fn default() -> Self {
        TestPromptOptions {
            prepend_bos: None,
            prepend_space_to_answer: true,
            top_k: 10,
        }
    }
}

/// The result of [`HookedTransformer::test_prompt`].
#[derive(Clone, Debug)]
pub struct PromptTest {
    /// The prompt's tokens as strings (with BOS if prepended).
    pub prompt_tokens: Vec<String>,
    /// The answer's tokens as strings.
    pub answer_tokens: Vec<String>,
    /// For each answer token: its rank, logit and probability where the model predicts it.
    pub answer: Vec<TopToken>,
    /// For each answer token's position: the model's top-k.
    pub top_k: Vec<Vec<TopToken>>,
}

impl PromptTest {
    /// The probability of the whole answer after the prompt: the product of each answer token's
    /// probability given everything before it (for a one-token answer, that token's probability).
    pub fn answer_prob(&self) -> f64 {
        self.answer.iter().map(|t| t.prob as f64).product()
    }

    /// `(token, rank)` of each answer token.
    pub fn answer_ranks(&self) -> Vec<(String, usize)> {
        self.answer
            .iter()
            .map(|t| (t.token.clone(), t.rank))
            .collect()
    }
}

fn quoted(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

impl PromptTest {
    /// The top-k predictions at each answer position as a table.
    pub fn table(&self) -> Table {
        let mut t = Table::new(
            &format!("Prompt: {}", self.prompt_tokens.concat()),
            ["answer token", "rank", "token", "logit", "prob"],
        );
        for (a, top) in self.answer.iter().zip(&self.top_k) {
            let row = |t: &mut Table, rank: usize, token: String, logit: f32, prob: f32| {
                t.row([
                    format!("{:?}", a.token),
                    rank.to_string(),
                    token,
                    format!("{logit:.2}"),
                    format!("{:.2}%", prob * 100.0),
                ]);
            };
            for x in top {
                let mark = if x.id == a.id { " ←" } else { "" };
                row(
                    &mut t,
                    x.rank,
                    format!("{:?}{mark}", x.token),
                    x.logit,
                    x.prob,
                );
            }
            if a.rank >= top.len() {
                row(&mut t, a.rank, format!("{:?} ←", a.token), a.logit, a.prob);
            }
        }
        t
    }

    /// Shows TransformerLens's text and the table inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        let html = format!(
            "<pre>{}</pre>{}",
            crate::viz::escape(&self.to_string()),
            self.table().to_html()
        );
        crate::viz::display("text/html", &html);
    }
}

impl fmt::Display for PromptTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Tokenized prompt: {}", quoted(&self.prompt_tokens))?;
        writeln!(f, "Tokenized answer: {}", quoted(&self.answer_tokens))?;
        for (a, top) in self.answer.iter().zip(&self.top_k) {
            writeln!(f, "Performance on answer token:")?;
            writeln!(
                f,
                "Rank: {:<8} Logit: {:5.2} Prob: {:6.2}% Token: |{}|",
                a.rank,
                a.logit,
                a.prob * 100.0,
                a.token
            )?;
            for t in top {
                writeln!(
                    f,
                    "Top {}th token. Logit: {:5.2} Prob: {:6.2}% Token: |{}|",
                    t.rank,
                    t.logit,
                    t.prob * 100.0,
                    t.token
                )?;
            }
        }
        let ranks: Vec<String> = self
            .answer_ranks()
            .iter()
            .map(|(t, r)| format!("({t:?}, {r})"))
            .collect();
        writeln!(f, "Ranks of the answer tokens: [{}]", ranks.join(", "))
    }
}

/// One position's logits ranked: most likely first, with the softmax's shift and normaliser.
struct Ranked {
    row: Vec<f32>,
    order: Vec<usize>,
    max: f64,
    z: f64,
}

impl Ranked {
    fn new(row: Vec<f32>) -> Self {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        Ranked { row, order, max, z }
    }

    /// Token `id` as the entry at `rank`.
    fn entry(&self, model: &HookedTransformer, rank: usize, id: u32) -> Result<TopToken> {
        let logit = self.row[id as usize];
        Ok(TopToken {
            rank,
            id,
            token: model.to_string(&[id])?,
            logit,
            prob: ((logit as f64 - self.max).exp() / self.z) as f32,
        })
    }

    /// The `k` most likely entries.
    fn top(&self, model: &HookedTransformer, k: usize) -> Result<Vec<TopToken>> {
        self.order
            .iter()
            .take(k)
            .enumerate()
            .map(|(rank, &j)| self.entry(model, rank, j as u32))
            .collect()
    }
}

impl HookedTransformer {
    /// The `k` most likely next tokens of one position's logits `[d_vocab]`, with logits and
    /// softmax probabilities (most likely first).
    ///
    /// # Errors
    /// [`LensError::Mismatch`] for logits that are not one row of the vocabulary; tokenizer
    /// errors.
    pub fn top_tokens(&self, logits: &candle_core::Tensor, k: usize) -> Result<Vec<TopToken>> {
        if logits.rank() != 1 {
            return Err(LensError::mismatch(
                "top_tokens' logits",
                format!(
                    "got shape {:?}; pass one position's row [d_vocab] (e.g. logits.i((0, pos)))",
                    logits.dims()
                ),
            ));
        }
        Ranked::new(logits.to_dtype(DType::F32)?.to_vec1()?).top(self, k)
    }

    /// Runs `prompt + answer` and reports, at each answer token's position, the answer's rank,
    /// logit and probability and the model's top-k (TransformerLens's `test_prompt`). The prompt
    /// and the answer are tokenized separately and joined, as TransformerLens does, so every
    /// answer token is scored — a tokenizer that writes `" 5"` as `" "` + `"5"` gets both scored,
    /// i.e. exactly the text `prompt + answer` ([`PromptTest::answer_prob`] multiplies them).
    ///
    /// # Errors
    /// [`LensError::EmptyAnswer`] for an empty answer, [`LensError::EmptyPrompt`] for an empty
    /// prompt; tokenizer and model errors.
    pub fn test_prompt(
        &self,
        prompt: &str,
        answer: &str,
        opts: &TestPromptOptions,
    ) -> Result<PromptTest> {
        let TestPromptOptions {
            prepend_bos,
            prepend_space_to_answer,
            top_k,
        } = *opts;
        if answer.is_empty() {
            return Err(LensError::EmptyAnswer);
        }
        let answer = if prepend_space_to_answer && !answer.starts_with(' ') {
            format!(" {answer}")
        } else {
            answer.to_string()
        };
        let prompt_ids = self.tokenizer().encode_with_bos(prompt, prepend_bos)?;
        let answer_ids = self.tokenizer().encode(&answer)?;
        if answer_ids.is_empty() {
            return Err(LensError::EmptyAnswer);
        }
        if prompt_ids.is_empty() {
            return Err(LensError::EmptyPrompt);
        }
        let mut ids = prompt_ids.clone();
        ids.extend(&answer_ids);
        let tokens = self.tokens_from_ids(ids)?;
        let logits = self.forward(&tokens)?;
        let mut answer_rows = Vec::new();
        let mut tops = Vec::new();
        for (i, &target) in answer_ids.iter().enumerate() {
            let pos = prompt_ids.len() - 1 + i;
            let ranked = Ranked::new(logits.i((0, pos))?.to_dtype(DType::F32)?.to_vec1()?);
            let rank = ranked
                .order
                .iter()
                .position(|&j| j == target as usize)
                .unwrap_or(ranked.order.len());
            answer_rows.push(ranked.entry(self, rank, target)?);
            tops.push(ranked.top(self, top_k)?);
        }
        Ok(PromptTest {
            prompt_tokens: self.ids_to_str_tokens(&prompt_ids)?,
            answer_tokens: self.ids_to_str_tokens(&answer_ids)?,
            answer: answer_rows,
            top_k: tops,
        })
    }
}
