//! The two decompositions an LRE needs, on `ndarray` through `linfa-linalg` (linfa's pure-Rust
//! linear algebra): a least-norm least-squares fit and a low-rank pseudo-inverse.

use candle_core::{DType, Device, Tensor};
use linfa_linalg::svd::{SvdSort, SVD};
use ndarray::{Array1, Array2, Axis};

use crate::error::{LensError, Result};

pub(crate) fn to_array(t: &Tensor) -> Result<Array2<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Array2::from_shape_vec((r, c), v.into_iter().map(f64::from).collect())
        .map_err(|e| LensError::Internal(format!("tensor to matrix: {e}")))
}

pub(crate) fn to_tensor(a: &Array2<f64>, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, a.dim(), device)?)
}

fn svd(a: &Array2<f64>) -> Result<(Array2<f64>, Array1<f64>, Array2<f64>)> {
    // linfa's SVD never converges on NaN: refuse it rather than loop
    let bad = a.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(LensError::Numerical {
            what: "the LRE's SVD".into(),
            detail: format!("its {}×{} matrix holds {bad} NaN or infinite values, from the hidden states or the Jacobian; check the model's dtype (f16 overflows), its weights and any hook", a.nrows(), a.ncols()),
        });
    }
    let (u, s, vt) = a.svd(true, true).map_err(|e| LensError::Numerical {
        what: "SVD".into(),
        detail: e.to_string(),
    })?;
    let (u, s, vt) = (u, s, vt).sort_svd_desc();
    match (u, vt) {
        (Some(u), Some(vt)) => Ok((u, s, vt)),
        _ => Err(LensError::Internal(
            "SVD returned no singular vectors".into(),
        )),
    }
}

/// Singular values kept: above `max(rows, cols) · ε_f32 · s_max` (numpy's `lstsq` cutoff for
/// single-precision data), at most `rank`.
fn kept(s: &Array1<f64>, rows: usize, cols: usize, rank: usize) -> usize {
    let smax = s.first().copied().unwrap_or(0.0);
    let cut = rows.max(cols) as f64 * f64::from(f32::EPSILON) * smax;
    s.iter().take(rank).take_while(|&&v| v > cut).count()
}

/// Ordinary least squares with an intercept, `y ≈ W x + b`, for `x [n, d_in]`, `y [n, d_out]`.
/// With fewer examples than features the problem has many exact solutions; this returns the one
/// of least Frobenius norm (what scikit-learn's `LinearRegression` — the source's estimator —
/// returns through LAPACK's `gelsd`): centre both, `W^T = X_c^+ Y_c` with the pseudo-inverse from
/// an SVD. Returns `(W [d_out, d_in], b [d_out])` in f32.
///
/// # Errors
/// Shape mismatch or SVD failure.
pub fn least_norm_fit(x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = x.device().clone();
    let (xa, ya) = (to_array(x)?, to_array(y)?);
    if xa.nrows() != ya.nrows() || xa.nrows() == 0 {
        return Err(LensError::mismatch("regression inputs and targets", format!(
                "{} inputs and {} targets; a regression needs one target per input, and at least one",
                xa.nrows(),
                ya.nrows()
            )));
    }
    let (xm, ym) = (
        xa.mean_axis(Axis(0)).unwrap_or_default(),
        ya.mean_axis(Axis(0)).unwrap_or_default(),
    );
    let xc = &xa - &xm;
    let yc = &ya - &ym;
    let (u, s, vt) = svd(&xc)?;
    let k = kept(&s, xc.nrows(), xc.ncols(), usize::MAX);
    // W^T = V_k S_k^-1 U_k^T Y_c  ->  [d_in, d_out]
    let mut ut_y = u.slice(ndarray::s![.., ..k]).t().dot(&yc); // [k, d_out]
    for (mut row, &sv) in ut_y.axis_iter_mut(Axis(0)).zip(s.iter()) {
        row /= sv;
    }
    let wt = vt.slice(ndarray::s![..k, ..]).t().dot(&ut_y);
    let w = wt.t().to_owned(); // [d_out, d_in]
    let b = &ym - &w.dot(&xm);
    let b2 = b.insert_axis(Axis(0));
    Ok((to_tensor(&w, &dev)?, to_tensor(&b2, &dev)?.squeeze(0)?))
}

/// The rank-`rank` pseudo-inverse of `w [d_out, d_in]`, `[d_in, d_out]`: `V_k S_k^-1 U_k^T`
/// over the `rank` largest singular values (fewer if the rest are numerically zero). The LRE
/// paper edits subjects with it: `Δh = W_k^+ (z' − z)`.
///
/// # Errors
/// SVD failure.
pub fn low_rank_pinv(w: &Tensor, rank: usize) -> Result<Tensor> {
    let a = to_array(w)?;
    let (u, s, vt) = svd(&a)?;
    let k = kept(&s, a.nrows(), a.ncols(), rank.max(1));
    let mut ut = u.slice(ndarray::s![.., ..k]).t().to_owned(); // [k, d_out]
    for (mut row, &sv) in ut.axis_iter_mut(Axis(0)).zip(s.iter()) {
        row /= sv;
    }
    let p = vt.slice(ndarray::s![..k, ..]).t().dot(&ut);
    to_tensor(&p, w.device())
}

/// Singular values of `w`, largest first.
///
/// # Errors
/// SVD failure.
pub fn singular_values(w: &Tensor) -> Result<Vec<f32>> {
    let (_, s, _) = svd(&to_array(w)?)?;
    Ok(s.iter().map(|&v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_matrix_is_a_numerical_error_not_an_endless_svd() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, f32::NAN], [0., 1.]], &dev).unwrap();
        let e = low_rank_pinv(&w, 2).unwrap_err();
        assert!(matches!(e, LensError::Numerical { .. }), "{e:?}");
        assert!(e.to_string().contains("1 NaN or infinite"), "{e}");
    }

    // The reference is numpy, as scikit-learn's LinearRegression computes it (centre, then
    // scipy/numpy lstsq): scripts/make-lre-reference.py prints these numbers.
    #[test]
    fn least_norm_matches_sklearn() {
        let dev = Device::Cpu;
        let x = Tensor::new(
            &[[1f32, 2., 0., 1.], [0., 1., 1., 3.], [2., 0., 1., 1.]],
            &dev,
        )
        .unwrap();
        let y = Tensor::new(&[[1f32, 0.], [2., 1.], [0., 3.]], &dev).unwrap();
        let (w, b) = least_norm_fit(&x, &y).unwrap();
        let w: Vec<Vec<f32>> = w.to_vec2().unwrap();
        let b: Vec<f32> = b.to_vec1().unwrap();
        for (got, want) in w.iter().flatten().zip(SKLEARN_COEF.iter().flatten()) {
            assert!((got - want).abs() < 1e-5, "{w:?}");
        }
        for (got, want) in b.iter().zip(SKLEARN_INTERCEPT) {
            assert!((got - want).abs() < 1e-5, "{b:?}");
        }
    }

    const SKLEARN_COEF: [[f32; 4]; 2] = [
        [-0.447_368_4, 0.263_157_9, -0.026_315_79, 0.421_052_6],
        [0.5, -1.0, 0.5, 0.0],
    ];
    const SKLEARN_INTERCEPT: [f32; 2] = [0.5, 1.5];

    #[test]
    fn low_rank_pinv_inverts_on_the_kept_subspace() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[3f32, 0., 0.], [0., 2., 0.], [0., 0., 0.5]], &dev).unwrap();
        let p: Vec<Vec<f32>> = low_rank_pinv(&w, 2).unwrap().to_vec2().unwrap();
        let want = [[1. / 3., 0., 0.], [0., 0.5, 0.], [0., 0., 0.]];
        for (g, w) in p.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6, "{p:?}");
        }
        let full: Vec<Vec<f32>> = low_rank_pinv(&w, 10).unwrap().to_vec2().unwrap();
        assert!((full[2][2] - 2.0).abs() < 1e-5);
    }
}
