//! Which rows train a probe and which test it: Python's seeded shuffle.

use crate::error::{LensError, Result};
use crate::util::pyrandom::PyRandom;

/// Which rows train a probe and which test it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Row indices of the training set.
    pub train: Vec<usize>,
    /// Row indices of the held-out set.
    pub test: Vec<usize>,
}

impl Split {
    /// The split Python gives: `random.seed(seed); idx = list(range(n)); random.shuffle(idx)`,
    /// the first `round((1 − test_fraction) · n)` indices (Python's rounding, half to even)
    /// train, the rest test.
    ///
    /// # Errors
    /// [`LensError::BadParameter`] unless `0 < test_fraction < 1` and both sets get a row.
    pub fn python(n: usize, test_fraction: f64, seed: u64) -> Result<Split> {
        let k = ((1.0 - test_fraction) * n as f64).round_ties_even();
        if !(test_fraction > 0.0 && test_fraction < 1.0) || k < 1.0 || k >= n as f64 {
            return Err(LensError::bad_parameter(
                "test_fraction",
                test_fraction,
                &format!("give a fraction in (0, 1) that leaves at least one of the {n} rows on each side"),
            ));
        }
        let mut idx: Vec<usize> = (0..n).collect();
        PyRandom::seed(seed).shuffle(&mut idx);
        let test = idx.split_off(k as usize);
        Ok(Split { train: idx, test })
    }
}
