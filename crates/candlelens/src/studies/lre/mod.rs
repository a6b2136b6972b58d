//! Linear relational embeddings (LRE): how well one linear map `z ≈ β W h + b` from a
//! subject's hidden state `h` (after block `l`, at the subject's last token) stands in for the
//! model's decoding of a relation ("{} students are typically" → men / women).
//!
//! Two estimators: the source experiment's least-norm regression onto the object's unembedding
//! ([`LreOperator::fit_regression`]), and the Jacobian estimator of Hernandez et al. (2023),
//! "Linearity of Relation Decoding in Transformer Language Models" ([`LreOperator::fit_jacobian`]).
//! Metrics: faithfulness ([`evaluate`]) and causality ([`causality`]).
//!
//! ```no_run
//! use candlelens::prelude::*;
//! use candlelens::lre::{Candidates, LreStates, LreOperator, Relation, evaluate};
//! # fn main() -> candlelens::Result<()> {
//! let model = HookedTransformer::from_pretrained("gemma-3-270m")?;
//! let rel = Relation::from_file("data/data_sample.json")?;
//! let template = rel.template(Some("{} students are typically"))?;
//! let (train, test) = rel.split_like_source(42, 0.6);        // random.seed(42); shuffle
//! let cands = Candidates::new(&model, &rel.objects(), &template)?;
//! let train = LreStates::collect(&model, &train, &template, &cands)?;  // every layer, once
//! let test = LreStates::collect(&model, &test, &template, &cands)?;
//! let op = LreOperator::fit_regression(&model, &train, 9)?;
//! println!("{}", evaluate(&model, &op, &test)?.table());
//! # Ok(()) }
//! ```

mod eval;
mod linalg;
mod operator;

mod relation;
mod sources;
mod states;
pub mod steps;

pub use crate::util::pyrandom::PyRandom;
pub use eval::{
    causality, evaluate, layer_sweep, source_match, Causality, CausalityReport, Edit, LreEval,
    LreReport, Prediction,
};
pub use linalg::{least_norm_fit, low_rank_pinv, singular_values};
pub use operator::{jacobian, Estimator, LreOperator, SubjectJacobian};
pub use relation::{check_template, Relation, Sample};
pub use sources::{
    SourceComparison, SourceEvaluation, SourceNotebook, SourceRow, SourceTable, ALT_TEMPLATE,
    SOURCE_NOTEBOOKS, SOURCE_VAR, TEMPLATE,
};
pub use states::{subject_last_token, Candidates, LreStates, ReadAt, SubjectState};
