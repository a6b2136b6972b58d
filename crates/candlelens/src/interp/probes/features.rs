//! The features probes read: a layer's activation at each prompt's last real token, and the
//! f64 matrices the solvers take.

use candle_core::{DType, Device, Tensor};
use ndarray::{Array1, Array2};

use crate::engine::hooks::{HookFilter, HookPoint, Hooks};
use crate::engine::model::{HookedTransformer, LogitsAt};
use crate::engine::text::tokens::Tokens;
use crate::error::{LensError, Result};

/// `[n, d]` features as an f64 matrix, checked finite.
pub(super) fn matrix(x: &Tensor) -> Result<Array2<f64>> {
    let (n, d) = x.dims2()?;
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(LensError::Numerical {
            what: "probe features".into(),
            detail: format!(
                "row {} holds a NaN or infinite value; check the model's dtype, weights and hooks",
                i / d.max(1)
            ),
        });
    }
    Array2::from_shape_vec((n, d), v.into_iter().map(f64::from).collect())
        .map_err(|e| LensError::Internal(format!("features to matrix: {e}")))
}

pub(super) fn rows_of(x: &Array2<f64>, idx: &[usize]) -> Array2<f64> {
    x.select(ndarray::Axis(0), idx)
}

pub(super) fn direction_tensor(w: &Array1<f64>) -> Result<Tensor> {
    let v: Vec<f32> = w.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, w.len(), &Device::Cpu)?)
}

/// The activation at each of `points` at each prompt's last real token, `[n, d]` per point, run
/// in batches of `batch_size` prompts (memory bounded by the batch).
///
/// # Errors
/// As [`HookedTransformer::run_with_hooks_and_cache`]; [`LensError::BadParameter`] for a zero
/// batch size.
pub fn last_token_features(
    model: &HookedTransformer,
    tokens: &Tokens,
    points: &[HookPoint],
    batch_size: usize,
) -> Result<Vec<Tensor>> {
    if batch_size == 0 {
        return Err(LensError::bad_parameter("batch_size", 0, "give at least 1"));
    }
    let mut per_point: Vec<Vec<Tensor>> = vec![Vec::new(); points.len()];
    for chunk in tokens.rows().chunks(batch_size) {
        let t = Tokens::with_padding(chunk.to_vec(), tokens.pad_id(), tokens.padding())?;
        let (_, cache) = model.run_with_hooks_and_cache(
            &t,
            &mut Hooks::new(),
            Some(HookFilter::Points(points.to_vec())),
            LogitsAt::Last,
        )?;
        for (i, hp) in points.iter().enumerate() {
            let act = cache.at(*hp)?;
            for (b, &p) in t.last_positions().iter().enumerate() {
                per_point[i].push(act.get(b)?.get(p)?.to_dtype(DType::F32)?);
            }
        }
    }
    per_point
        .into_iter()
        .map(|rows| Ok(Tensor::stack(&rows, 0)?))
        .collect()
}
