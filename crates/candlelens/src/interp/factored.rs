//! Low-rank products kept as their two factors — TransformerLens's `FactoredMatrix` — and the
//! per-head circuits built from them: `OV = W_V W_O` (what a head writes, given what it reads)
//! and `QK = W_Q W_Kᵀ` (which residual directions attend to which), each `[d_model, d_model]`
//! of rank at most `d_head`.
//!
//! The spectra are computed on `d_head`-sized matrices, never on the `d_model²` product:
//! singular values through the SVDs of the two factors (the product's singular values are those
//! of `Σ_A V_Aᵀ U_B Σ_B`), eigenvalues as those of `B A` (the non-zero eigenvalues of `AB` and
//! `BA` coincide). Both run in f64 with nalgebra.
#![allow(non_snake_case)] // OV and QK are TransformerLens's names

use candle_core::{DType, Tensor};
use nalgebra::DMatrix;

use crate::engine::model::HookedTransformer;
use crate::error::{LensError, Result};

/// A matrix `A B` held as `A [m, r]` and `B [r, n]`.
#[derive(Clone, Debug)]
pub struct FactoredMatrix {
    /// The left factor `[m, r]`.
    pub a: Tensor,
    /// The right factor `[r, n]`.
    pub b: Tensor,
}

/// A complex eigenvalue (`re + i·im`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eigenvalue {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl Eigenvalue {
    /// `|λ|`.
    pub fn norm(&self) -> f64 {
        self.re.hypot(self.im)
    }
}

fn to_matrix(t: &Tensor, what: &str) -> Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(LensError::Numerical {
            what: format!("the spectrum of {what}"),
            detail: "the factor holds NaN or infinite values".into(),
        });
    }
    Ok(DMatrix::from_row_iterator(
        r,
        c,
        v.into_iter().map(f64::from),
    ))
}

impl FactoredMatrix {
    /// `A B` from `a [m, r]` and `b [r, n]`.
    ///
    /// # Errors
    /// [`LensError::Mismatch`] when the inner dimensions differ or a factor is not a matrix.
    pub fn new(a: Tensor, b: Tensor) -> Result<Self> {
        let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != bd[0] {
            return Err(LensError::mismatch(
                "the factors of a factored matrix",
                format!("A is {ad:?} and B is {bd:?}; they must be [m, r] and [r, n]"),
            ));
        }
        Ok(FactoredMatrix { a, b })
    }

    /// `(m, n)`, the shape of the product.
    pub fn shape(&self) -> (usize, usize) {
        (self.a.dims()[0], self.b.dims()[1])
    }

    /// The inner dimension `r`, an upper bound on the rank.
    pub fn inner(&self) -> usize {
        self.a.dims()[1]
    }

    /// The product `A B` `[m, n]` (only when asked: it is the large one).
    ///
    /// # Errors
    /// None for factors that share a dtype and device; otherwise a raw [`LensError::Candle`]
    /// ([`Self::new`] checks the shapes only).
    pub fn full(&self) -> Result<Tensor> {
        Ok(self.a.matmul(&self.b)?)
    }

    /// `B A` `[r, r]`: the small matrix whose eigenvalues are the product's non-zero ones.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] unless the product is square.
    pub fn ba(&self) -> Result<Tensor> {
        let (m, n) = self.shape();
        if m != n {
            return Err(LensError::Unsupported {
                what: format!("B A of a {m}×{n} factored matrix"),
                fix: "eigenvalues need a square product (m = n)".into(),
            });
        }
        Ok(self.b.matmul(&self.a)?)
    }

    /// The product's singular values, largest first (`min(m, n, r)` of them).
    ///
    /// # Errors
    /// [`LensError::Numerical`] for non-finite factors.
    pub fn singular_values(&self) -> Result<Vec<f64>> {
        let a = to_matrix(&self.a, "A")?;
        let b = to_matrix(&self.b, "B")?;
        let sa = a.svd(false, true);
        let sb = b.svd(true, false);
        let (Some(va_t), Some(ub)) = (sa.v_t, sb.u) else {
            return Err(LensError::Internal(
                "SVD returned no singular vectors".into(),
            ));
        };
        // A B = U_A (Σ_A V_Aᵀ U_B Σ_B) V_Bᵀ with U_A, V_B orthonormal columns
        let middle = DMatrix::from_diagonal(&sa.singular_values)
            * va_t
            * ub
            * DMatrix::from_diagonal(&sb.singular_values);
        let mut s: Vec<f64> = middle.singular_values().iter().copied().collect();
        s.sort_by(|x, y| y.total_cmp(x));
        let (m, n) = self.shape();
        s.truncate(m.min(n).min(self.inner()));
        Ok(s)
    }

    /// The product's eigenvalues that can be non-zero (those of `B A`, `r` of them), largest
    /// magnitude first; complex in general.
    ///
    /// # Errors
    /// [`LensError::Unsupported`] for a non-square product, [`LensError::Numerical`] for
    /// non-finite factors.
    pub fn eigenvalues(&self) -> Result<Vec<Eigenvalue>> {
        let ba = to_matrix(&self.ba()?, "B A")?;
        let mut ev: Vec<Eigenvalue> = ba
            .complex_eigenvalues()
            .iter()
            .map(|c| Eigenvalue { re: c.re, im: c.im })
            .collect();
        ev.sort_by(|x, y| y.norm().total_cmp(&x.norm()).then(x.im.total_cmp(&y.im)));
        Ok(ev)
    }

    /// The Frobenius norm of the product, from its singular values.
    ///
    /// # Errors
    /// As [`Self::singular_values`].
    pub fn norm(&self) -> Result<f64> {
        Ok(self
            .singular_values()?
            .iter()
            .map(|s| s * s)
            .sum::<f64>()
            .sqrt())
    }
}

impl HookedTransformer {
    fn check_head(&self, layer: usize, head: usize) -> Result<()> {
        if layer >= self.cfg.n_layers {
            return Err(LensError::LayerOutOfRange {
                layer,
                n_layers: self.cfg.n_layers,
            });
        }
        if head >= self.cfg.n_heads {
            return Err(LensError::OutOfRange {
                what: "head".into(),
                index: head,
                len: self.cfg.n_heads,
            });
        }
        Ok(())
    }

    /// A head's OV circuit `W_V[l, h] W_O[l, h]` `[d_model, d_model]`, factored: a residual
    /// vector `x` the head attends to adds `x · OV` to the residual stream (before a
    /// post-attention norm, where the family has one).
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`], [`LensError::OutOfRange`] for the head.
    pub fn OV(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        self.check_head(layer, head)?;
        FactoredMatrix::new(
            self.W_V_at(layer)?.get(head)?,
            self.W_O_at(layer)?.get(head)?,
        )
    }

    /// A head's QK circuit `W_Q[l, h] W_K[l, h]ᵀ` `[d_model, d_model]`, factored: the attention
    /// score of a query from `x` to a key from `y` is `x · QK · yᵀ / √d_head` (before rotary and
    /// biases).
    ///
    /// # Errors
    /// [`LensError::LayerOutOfRange`], [`LensError::OutOfRange`] for the head.
    pub fn QK(&self, layer: usize, head: usize) -> Result<FactoredMatrix> {
        self.check_head(layer, head)?;
        FactoredMatrix::new(
            self.W_Q_at(layer)?.get(head)?,
            self.W_K_at(layer)?.get(head)?.t()?.contiguous()?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_rank_one_product_has_one_singular_value_and_one_eigenvalue() {
        // u vᵀ with u = (1, 2, 2), v = (2, 0, 1): σ = |u||v| = 3·√5, λ = v·u = 4
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32], [2.], [2.]], &dev).unwrap();
        let b = Tensor::new(&[[2f32, 0., 1.]], &dev).unwrap();
        let f = FactoredMatrix::new(a, b).unwrap();
        let s = f.singular_values().unwrap();
        assert_eq!(s.len(), 1);
        assert!((s[0] - 3.0 * 5f64.sqrt()).abs() < 1e-9, "{s:?}");
        let e = f.eigenvalues().unwrap();
        assert!(
            (e[0].re - 4.0).abs() < 1e-9 && e[0].im.abs() < 1e-12,
            "{e:?}"
        );
        assert!((f.norm().unwrap() - 3.0 * 5f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_rotation_has_complex_eigenvalues() {
        // A = I₂ (embedded in 2×2), B = 90° rotation: eigenvalues ±i
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).unwrap();
        let b = Tensor::new(&[[0f32, -1.], [1., 0.]], &dev).unwrap();
        let e = FactoredMatrix::new(a, b).unwrap().eigenvalues().unwrap();
        assert!(e
            .iter()
            .all(|l| l.re.abs() < 1e-12 && (l.im.abs() - 1.0).abs() < 1e-12));
        assert!(e[0].im < e[1].im);
    }

    #[test]
    fn bad_factors_are_typed_errors() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(matches!(
            FactoredMatrix::new(a.clone(), b),
            Err(LensError::Mismatch { .. })
        ));
        let b = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let f = FactoredMatrix::new(a, b).unwrap();
        assert!(matches!(
            f.eigenvalues(),
            Err(LensError::Unsupported { .. })
        ));
        let nan = Tensor::new(&[[f32::NAN]], &dev).unwrap();
        let f = FactoredMatrix::new(nan.clone(), nan).unwrap();
        assert!(matches!(
            f.singular_values(),
            Err(LensError::Numerical { .. })
        ));
    }
}
