//! How well an LRE stands in for the model: faithfulness (its prediction is the model's) and
//! causality (editing the subject by the operator's inverse changes the model's answer).

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use super::operator::LreOperator;
use super::states::LreStates;
use crate::engine::hooks::Hooks;
use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

/// One test subject's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// The test subject.
    pub subject: String,
    /// The dataset's object.
    pub expected: String,
    /// The candidate the operator scores highest.
    pub predicted: String,
    /// The candidate the model itself scores highest.
    pub model_top1: String,
    /// The operator's top token over the whole vocabulary.
    pub lre_vocab_top1: String,
    /// The model's top next token over the whole vocabulary.
    pub model_vocab_top1: String,
    /// The source's test ([`source_match`]): `lre_vocab_top1`, stripped and lower-cased, starts
    /// with the dataset's object.
    pub correct: bool,
}

/// The source's correctness test (its `lre.py` `evaluate`): the predicted word, stripped and
/// lower-cased, starts with the expected object, lower-cased (`" women"` does not count for
/// `men`).
pub fn source_match(predicted: &str, expected: &str) -> bool {
    let object = expected.trim().to_lowercase();
    !object.is_empty() && predicted.trim().to_lowercase().starts_with(&object)
}

/// An operator's predictions on a test set.
#[derive(Clone, Debug, Serialize)]
pub struct LreEval {
    /// The operator's layer.
    pub layer: usize,
    /// How the operator was estimated (its [`Estimator`](super::operator::Estimator) as text).
    pub estimator: String,
    /// One row per test subject.
    pub predictions: Vec<Prediction>,
}

fn ratio(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

impl LreEval {
    /// Test subjects.
    pub fn n(&self) -> usize {
        self.predictions.len()
    }

    /// How many predictions satisfy `f`.
    fn count(&self, f: impl Fn(&Prediction) -> bool) -> usize {
        self.predictions.iter().filter(|p| f(p)).count()
    }

    /// Faithfulness over the candidates: how often the operator's top candidate is the model's
    /// own top candidate, `(k, n)`.
    pub fn faithful(&self) -> (usize, usize) {
        (self.count(|p| p.predicted == p.model_top1), self.n())
    }

    /// [`Self::faithful`] as a fraction.
    pub fn faithfulness(&self) -> f64 {
        let (k, n) = self.faithful();
        ratio(k, n)
    }

    /// Agreement with the dataset's objects over the candidates, `(k, n)`: the operator's top
    /// candidate is the dataset's object (the labels are the associations the model was expected
    /// to make). The source's own count reads the whole vocabulary: [`Self::source_count`].
    pub fn correct(&self) -> (usize, usize) {
        (self.count(|p| p.predicted == p.expected), self.n())
    }

    /// The count the source prints as "Faithfulness: k/n": the operator's top token over the
    /// whole vocabulary, stripped and lower-cased, starts with the dataset's object (its
    /// `lre.py` `evaluate`), `(k, n)`.
    pub fn source_count(&self) -> (usize, usize) {
        (self.count(|p| p.correct), self.n())
    }

    /// [`Self::correct`] as a fraction.
    pub fn accuracy(&self) -> f64 {
        let (k, n) = self.correct();
        ratio(k, n)
    }

    /// Faithfulness over the vocabulary: the operator's top token is the model's top token.
    pub fn vocab_faithfulness(&self) -> f64 {
        ratio(
            self.count(|p| p.lre_vocab_top1 == p.model_vocab_top1),
            self.n(),
        )
    }

    /// How often the model's own top candidate is the dataset's object.
    pub fn model_accuracy(&self) -> f64 {
        ratio(self.count(|p| p.model_top1 == p.expected), self.n())
    }

    /// The per-subject table in the source's layout (`Subject | Expected | LRE Pred | ✓`: the
    /// operator's top token over the vocabulary, ✓ when it starts with the expected object, as
    /// the source counts) with the top candidate and the model's own candidate added, then the
    /// summary lines.
    pub fn table(&self) -> String {
        let mut out = format!(
            "--- Evaluation (layer {}, {}) ---\n",
            self.layer, self.estimator
        );
        for p in &self.predictions {
            let mark = if p.correct { "✓" } else { "✗" };
            out += &format!(
                "Subject: {:<20}| Expected: {:<11}| LRE Pred: {:<12}| {mark} | top candidate: {:<7}| Model: {}\n",
                p.subject,
                p.expected,
                format!("{:?}", p.lre_vocab_top1.trim()),
                p.predicted,
                p.model_top1
            );
        }
        out + &self.summary()
    }

    /// The summary lines: the source's "Faithfulness: k/n (p%)" (against the dataset's
    /// objects), faithfulness to the model over candidates and over the vocabulary.
    pub fn summary(&self) -> String {
        let (k, n) = self.correct();
        let (f, _) = self.faithful();
        let (sk, _) = self.source_count();
        format!(
            "Faithfulness: {sk}/{n} ({:.2}%)   [the source's count: LRE's top token over the vocabulary starts with the dataset object]\n\
             LRE = dataset object over the candidates: {k}/{n} ({:.2}%)\n\
             Faithful to the model: {f}/{n} ({:.2}%) over the candidates, {:.2}% over the vocabulary; \
             the model itself agrees with the dataset on {:.2}%\n",
            100.0 * ratio(sk, n),
            100.0 * self.accuracy(),
            100.0 * self.faithfulness(),
            100.0 * self.vocab_faithfulness(),
            100.0 * self.model_accuracy(),
        )
    }

    /// The evaluation with its rates, for JSON: `{"layer", "estimator", "faithfulness",
    /// "accuracy", "vocab_faithfulness", "model_accuracy", "n", "predictions": [...]}`.
    pub fn report(&self) -> LreReport<'_> {
        LreReport {
            layer: self.layer,
            estimator: &self.estimator,
            faithfulness: self.faithfulness(),
            accuracy: self.accuracy(),
            vocab_faithfulness: self.vocab_faithfulness(),
            model_accuracy: self.model_accuracy(),
            n: self.n(),
            predictions: &self.predictions,
        }
    }

    /// [`Self::report`] as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.report()).unwrap_or_default()
    }
}

/// An [`LreEval`] with its rates computed: what `lens lre --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct LreReport<'a> {
    /// The layer `h` is read at.
    pub layer: usize,
    /// `regression` or `jacobian`.
    pub estimator: &'a str,
    /// Agreement with the model's own answer over the candidates ([`LreEval::faithfulness`]).
    pub faithfulness: f64,
    /// Agreement with the dataset's objects — the source's "Faithfulness".
    pub accuracy: f64,
    /// Agreement with the model's top token over the whole vocabulary.
    pub vocab_faithfulness: f64,
    /// How often the model itself answers the dataset's object.
    pub model_accuracy: f64,
    /// Test subjects.
    pub n: usize,
    /// One row per test subject.
    pub predictions: &'a [Prediction],
}

/// Applies `op` to every test subject and compares with the model.
///
/// # Errors
/// Tensor and tokenizer errors; a layer beyond the cached states.
pub fn evaluate(model: &HookedTransformer, op: &LreOperator, test: &LreStates) -> Result<LreEval> {
    let z = op.apply(&test.h_at(op.layer)?)?;
    let scores = op.vocab_scores(model, &z)?;
    let top: Vec<u32> = scores.argmax(D::Minus1)?.to_vec1()?;
    let rows: Vec<Vec<f32>> = scores.to_vec2()?;
    let c = &test.candidates;
    let mut predictions = Vec::with_capacity(test.len());
    for (i, s) in test.items.iter().enumerate() {
        let lre_vocab_top1 = model.to_string(&[top[i]])?;
        predictions.push(Prediction {
            subject: s.sample.subject.clone(),
            expected: s.sample.object.clone(),
            predicted: c.objects[c.argmax(&rows[i])].clone(),
            model_top1: c.objects[s.model_candidate()].clone(),
            correct: source_match(&lre_vocab_top1, &s.sample.object),
            lre_vocab_top1,
            model_vocab_top1: model.to_string(&[s.model_top1])?,
        });
    }
    Ok(LreEval {
        layer: op.layer,
        estimator: op.estimator.to_string(),
        predictions,
    })
}

/// The source's layer comparison, for every layer in `layers`: fit the regression estimator on
/// `train` and evaluate on `test`, from the cached states (no further forward passes).
///
/// # Errors
/// As [`LreOperator::fit_regression`] and [`evaluate`].
pub fn layer_sweep(
    model: &HookedTransformer,
    train: &LreStates,
    test: &LreStates,
    layers: impl IntoIterator<Item = usize>,
) -> Result<Vec<LreEval>> {
    layers
        .into_iter()
        .map(|l| evaluate(model, &LreOperator::fit_regression(model, train, l)?, test))
        .collect()
}

/// One causality edit.
#[derive(Clone, Debug, Serialize)]
pub struct Edit {
    /// The test subject.
    pub subject: String,
    /// The model's answer before the edit (its top candidate).
    pub from: String,
    /// The object the edit aims at.
    pub target: String,
    /// The model's top candidate after adding `Δh`.
    pub after: String,
    /// After adding a random vector of the same norm instead (the control).
    pub after_random: String,
    /// `|Δh| / |h|`.
    pub relative_norm: f32,
}

/// A [`Causality`] outcome with its rates: what `lens lre --causality-rank K --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CausalityReport<'a> {
    /// Rank of the pseudo-inverse.
    pub rank: usize,
    /// Fraction of edits after which the model answers the target.
    pub efficacy: f64,
    /// The same for the random-direction control.
    pub random_efficacy: f64,
    /// One row per edit.
    pub edits: &'a [Edit],
}

/// The outcome of [`causality`].
#[derive(Clone, Debug, Serialize)]
pub struct Causality {
    /// The layer whose `hook_resid_post` is edited (the operator's layer).
    pub layer: usize,
    /// Rank of the pseudo-inverse.
    pub rank: usize,
    /// One row per test subject.
    pub edits: Vec<Edit>,
    /// Objects the model gives for no training subject: their `z'` averages the subjects the
    /// dataset labels with them instead.
    pub targets_from_labels: Vec<String>,
}

impl Causality {
    /// Fraction of edits after which the model answers the target.
    pub fn efficacy(&self) -> f64 {
        ratio(self.flipped(), self.edits.len())
    }

    /// Edits after which the model answers the target.
    pub fn flipped(&self) -> usize {
        self.edits.iter().filter(|e| e.after == e.target).count()
    }

    /// The outcome with its rates, for JSON: `{"rank", "efficacy", "random_efficacy",
    /// "edits"}`.
    pub fn report(&self) -> CausalityReport<'_> {
        CausalityReport {
            rank: self.rank,
            efficacy: self.efficacy(),
            random_efficacy: self.random_efficacy(),
            edits: &self.edits,
        }
    }

    /// The same for the random-direction control.
    pub fn random_efficacy(&self) -> f64 {
        let k = self
            .edits
            .iter()
            .filter(|e| e.after_random == e.target)
            .count();
        ratio(k, self.edits.len())
    }

    /// One line per edit and the two rates.
    pub fn table(&self) -> String {
        let mut out = format!(
            "--- Causality (layer {}, rank-{} pseudo-inverse) ---\n",
            self.layer, self.rank
        );
        if !self.targets_from_labels.is_empty() {
            out += &format!(
                "(the model answers {:?} for no training subject: z' for it averages the subjects labelled with it)\n",
                self.targets_from_labels
            );
        }
        for e in &self.edits {
            let mark = if e.after == e.target { "✓" } else { "✗" };
            out += &format!(
                "Subject: {:<20}| {:<8} -> {:<8}| after edit: {:<8} {mark} | random Δ: {:<8} | |Δh|/|h| {:.2}\n",
                e.subject, e.from, e.target, e.after, e.after_random, e.relative_norm
            );
        }
        out + &format!(
            "Causality: {}/{} ({:.2}%) edits flip the model to the target; random Δ of equal norm: {:.2}%\n",
            self.flipped(),
            self.edits.len(),
            100.0 * self.efficacy(),
            100.0 * self.random_efficacy()
        )
    }
}

/// The paper's causality test. For each test subject the model answers `o` (its top
/// candidate); the target `o'` is the next candidate. `z'` is the operator's mean output over
/// the training subjects the model answers `o'` for (over those labelled `o'` if there are none); the edit `Δh = W_k^+ (z' − z)` (rank-`rank`
/// pseudo-inverse) is added to `blocks.{layer}.hook_resid_post` at the subject's last token, and
/// the model runs on. A control adds a random vector of the same norm (seeded).
///
/// # Errors
/// [`LensError::BadParameter`] for a rank of 0 or above `d_model`; [`LensError::TooFew`] for
/// fewer than two candidates or no training subject with some target answer; forward errors.
pub fn causality(
    model: &HookedTransformer,
    op: &LreOperator,
    train: &LreStates,
    test: &LreStates,
    rank: usize,
) -> Result<Causality> {
    if rank == 0 || rank > model.cfg.d_model {
        return Err(LensError::bad_parameter(
            "rank",
            rank,
            &format!(
                "the edit's pseudo-inverse keeps between 1 and d_model = {} directions (the paper: 100)",
                model.cfg.d_model
            ),
        ));
    }
    let c = &test.candidates;
    let nc = c.objects.len();
    if nc < 2 {
        return Err(LensError::too_few(
            "candidate objects for a causality test",
            2,
            nc,
            "use a relation with at least two objects",
        ));
    }
    let z_train = op.apply(&train.h_at(op.layer)?)?;
    // z' per candidate: mean operator output over the training subjects the model answers it
    // for; where the model answers it for none, over those the dataset labels with it
    let mean_over =
        |pick: &dyn Fn(&super::states::SubjectState) -> bool| -> Result<Option<Tensor>> {
            let idx: Vec<u32> = (0..train.len() as u32)
                .filter(|&i| pick(&train.items[i as usize]))
                .collect();
            if idx.is_empty() {
                return Ok(None);
            }
            let idx = Tensor::new(idx.as_slice(), z_train.device())?;
            Ok(Some(z_train.index_select(&idx, 0)?.mean(0)?))
        };
    let mut z_target = Vec::with_capacity(nc);
    let mut from_labels = Vec::new();
    for k in 0..nc {
        let z = match mean_over(&|s| s.model_candidate() == k)? {
            Some(z) => Some(z),
            None => {
                let z = mean_over(&|s| c.index(&s.sample.object) == Some(k))?;
                if z.is_some() {
                    from_labels.push(c.objects[k].clone());
                }
                z
            }
        };
        z_target.push(z);
    }
    let pinv = op.pinv(rank)?; // [d_model, d_out]
    let h = test.h_at(op.layer)?;
    let z = op.apply(&h)?;
    let d = model.cfg.d_model;
    let mut deltas = Vec::with_capacity(test.len());
    let mut targets = Vec::with_capacity(test.len());
    for (i, s) in test.items.iter().enumerate() {
        let from = s.model_candidate();
        let target = (1..nc)
            .map(|o| (from + o) % nc)
            .find(|&k| z_target[k].is_some())
            .ok_or_else(|| LensError::TooFew {
                what: format!(
                    "training subjects answered or labelled anything but {:?}",
                    c.objects[from]
                ),
                need: 1,
                got: 0,
                fix: "causality needs subjects with another object; add some to the training split"
                    .into(),
            })?;
        let zt = z_target[target].as_ref().expect("checked");
        let dz = (zt - z.get(i)?)?;
        deltas.push(pinv.matmul(&dz.unsqueeze(1)?)?.squeeze(1)?);
        targets.push(target);
    }
    let delta = Tensor::stack(&deltas, 0)?; // [n, d_model]
    let norms: Vec<f32> = delta.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    let h_norms: Vec<f32> = h.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    // control: Gaussian directions scaled to each edit's norm (seeded for reproducibility)
    let mut rng = crate::util::pyrandom::PyRandom::seed(0);
    let mut gauss = Vec::with_capacity(test.len() * d);
    for _ in 0..test.len() * d {
        gauss.push(rng.box_muller_32() as f32);
    }
    let g = Tensor::from_vec(gauss, (test.len(), d), model.device())?;
    let g_norm = g.sqr()?.sum_keepdim(1)?.sqrt()?;
    let random = g
        .broadcast_div(&g_norm)?
        .broadcast_mul(&Tensor::new(norms.as_slice(), model.device())?.unsqueeze(1)?)?;
    let after = edited_answers(model, test, op.layer, &delta)?;
    let after_random = edited_answers(model, test, op.layer, &random)?;
    let edits = test
        .items
        .iter()
        .enumerate()
        .map(|(i, s)| Edit {
            subject: s.sample.subject.clone(),
            from: c.objects[s.model_candidate()].clone(),
            target: c.objects[targets[i]].clone(),
            after: c.objects[after[i]].clone(),
            after_random: c.objects[after_random[i]].clone(),
            relative_norm: norms[i] / h_norms[i].max(1e-12),
        })
        .collect();
    Ok(Causality {
        layer: op.layer,
        rank,
        edits,
        targets_from_labels: from_labels,
    })
}

/// The model's top candidate per test prompt after adding `delta[i]` to
/// `blocks.{layer}.hook_resid_post` at prompt `i`'s subject position.
fn edited_answers(
    model: &HookedTransformer,
    test: &LreStates,
    layer: usize,
    delta: &Tensor,
) -> Result<Vec<usize>> {
    let rows: Vec<Vec<u32>> = test.items.iter().map(|s| s.ids.clone()).collect();
    let tokens = crate::engine::text::tokens::Tokens::new(rows, model.cfg.pad_token_id)?;
    let (b, t, d) = (tokens.batch(), tokens.max_len(), model.cfg.d_model);
    let mut add = vec![0f32; b * t * d];
    let delta: Vec<Vec<f32>> = delta.to_dtype(DType::F32)?.to_vec2()?;
    for (i, s) in test.items.iter().enumerate() {
        let o = (i * t + s.h_pos) * d;
        add[o..o + d].copy_from_slice(&delta[i]);
    }
    let add = Tensor::from_vec(add, (b, t, d), model.device())?.to_dtype(model.dtype())?;
    let mut hooks = Hooks::new();
    hooks.add(&format!("blocks.{layer}.hook_resid_post"), move |act, _| {
        Ok(Some((act + &add)?))
    })?;
    let logits = model.run_with_hooks(&tokens, &mut hooks)?;
    let last: Vec<Vec<f32>> = model
        .gather_last(&logits, &tokens)?
        .to_dtype(DType::F32)?
        .to_vec2()?;
    Ok(last.iter().map(|r| test.candidates.argmax(r)).collect())
}
