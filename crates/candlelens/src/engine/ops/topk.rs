//! The `k` largest entries of each row: the routing of a mixture of experts and the TopK SAE's
//! activation select with the same rule (ties go to the lower index, as a stable sort would).

use candle_core::{DType, Tensor};

use crate::error::Result;

/// For each row of `x [.., d]`, `keep(value)` at its `k` largest entries and 0 elsewhere, as an
/// untracked f32 tensor of `x`'s shape (`keep = |_| 1.0` gives the 0/1 mask of the top `k`).
///
/// # Errors
/// None: every `x` and `k` work (a `k` above `d` keeps every entry, `k = 0` none); only candle's
/// allocation failure on `x`'s device.
pub(crate) fn top_k_rows(x: &Tensor, k: usize, keep: impl Fn(f32) -> f32) -> Result<Tensor> {
    let shape = x.shape().clone();
    let d = *x.dims().last().unwrap_or(&1);
    let v: Vec<f32> = x.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; v.len()];
    let mut idx: Vec<usize> = Vec::with_capacity(d);
    let k = k.min(d);
    if k > 0 {
        for (row, o) in v.chunks(d).zip(out.chunks_mut(d)) {
            idx.clear();
            idx.extend(0..d);
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &j in &idx[..k] {
                o[j] = keep(row[j]);
            }
        }
    }
    Ok(Tensor::from_vec(out, shape, x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn keeps_the_k_largest_with_ties_to_the_lower_index() {
        let x = Tensor::new(
            &[[0.5f32, 2.0, 2.0, -1.0], [3.0, -2.0, 0.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let mask: Vec<Vec<f32>> = top_k_rows(&x, 2, |_| 1.0).unwrap().to_vec2().unwrap();
        assert_eq!(
            mask,
            vec![vec![0.0, 1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0, 1.0]]
        );
        let ties: Vec<Vec<f32>> = top_k_rows(&x, 1, |v| v).unwrap().to_vec2().unwrap();
        assert_eq!(
            ties,
            vec![vec![0.0, 2.0, 0.0, 0.0], vec![3.0, 0.0, 0.0, 0.0]]
        );
    }
}
