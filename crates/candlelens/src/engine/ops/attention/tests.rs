//! The copy-free attention kernel against candle's composed attention.

use super::*;
use candle_core::Device;

/// The same attention from candle's composed ops: keys and values copied per query head,
/// `scale · q kᵀ`, the soft-cap, the mask, the softmax, the values.
fn composed(inp: &AttnInputs) -> (Tensor, Tensor, Tensor) {
    let (h, kv) = (inp.q.dim(2).unwrap(), inp.k.dim(2).unwrap());
    let per_head = |x: &Tensor| {
        let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
        let idx: Vec<u32> = (0..h).map(|i| (i / (h / kv)) as u32).collect();
        let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
        x.index_select(&idx, 1).unwrap().contiguous().unwrap()
    };
    let qt = inp.q.transpose(1, 2).unwrap().contiguous().unwrap();
    let mut s = (qt.matmul(&per_head(inp.k).t().unwrap()).unwrap() * inp.scale).unwrap();
    if let Some(c) = inp.softcap {
        s = ((s / c).unwrap().tanh().unwrap() * c).unwrap();
    }
    let s = s.broadcast_add(inp.mask).unwrap();
    let pat = candle_nn::ops::softmax_last_dim(&s).unwrap();
    let z = pat
        .matmul(&per_head(inp.v))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    (s, pat, z.contiguous().unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    crate::engine::ops::custom::testing::max_abs((a - b).unwrap())
}

#[test]
fn the_kernel_equals_the_composed_attention() {
    let dev = Device::Cpu;
    // (batch, pos, t, heads, kv heads, d_head, window, soft-cap): multi-head, grouped,
    // multi-query, a sliding window, queries after a KV cache (t > pos), Gemma 2's cap, and
    // one above SERIAL_WORK
    let cases = [
        (2, 7, 7, 4, 4, 8, usize::MAX, None),
        (3, 6, 6, 6, 2, 16, usize::MAX, None),
        (1, 5, 5, 4, 1, 32, 3, Some(5.0)),
        (2, 3, 9, 4, 2, 8, usize::MAX, None),
        // enough work for the units to run on every core
        (4, 40, 40, 8, 2, 64, usize::MAX, None),
    ];
    for (b, p, t, h, kv, dh, window, softcap) in cases {
        let q = Tensor::randn(0f32, 1f32, (b, p, h, dh), &dev).unwrap();
        let k = Tensor::randn(0f32, 1f32, (b, t, kv, dh), &dev).unwrap();
        let v = Tensor::randn(0f32, 1f32, (b, t, kv, dh), &dev).unwrap();
        let offset = t - p;
        let mask: Vec<f32> = (offset..t)
            .flat_map(|qi| {
                (0..t).map(move |ki| {
                    if ki > qi || qi - ki >= window {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (p, t), &dev).unwrap();
        let inp = AttnInputs {
            q: &q,
            k: &k,
            v: &v,
            mask: &mask,
            scale: 1.0 / (dh as f64).sqrt(),
            softcap,
        };
        let (s_ref, pat_ref, z_ref) = composed(&inp);
        let case = format!("{b}x{p}x{t}, {h}/{kv} heads, window {window}, cap {softcap:?}");
        let z = attention_z(&inp).unwrap().expect("the kernel applies");
        assert!(max_diff(&z, &z_ref) < 1e-5, "fused z, {case}");
        let s = scores(&inp).unwrap().unwrap();
        // masked entries are -inf in both: compare where finite, and the -inf pattern
        let (sv, rv) = (
            s.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            s_ref.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (a, r) in sv.iter().zip(&rv) {
            assert!(
                (a.is_infinite() && a == r) || (a - r).abs() < 1e-5,
                "scores {a} vs {r}, {case}"
            );
        }
        let z2 = weighted_values(&pat_ref, &v).unwrap().unwrap();
        assert!(max_diff(&z2, &z_ref) < 1e-5, "weighted values, {case}");
    }
}

#[test]
fn tracked_or_other_dtypes_are_left_to_candle() {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1f32, (1, 2, 2, 4), &dev).unwrap();
    let mask = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
    let var = candle_core::Var::from_tensor(&q).unwrap();
    let half = q.to_dtype(DType::F16).unwrap();
    for (q, k) in [(var.as_tensor(), &q), (&half, &half)] {
        let inp = AttnInputs {
            q,
            k,
            v: k,
            mask: &mask,
            scale: 0.5,
            softcap: None,
        };
        assert!(attention_z(&inp).unwrap().is_none());
        assert!(scores(&inp).unwrap().is_none());
    }
}

#[test]
fn keys_of_another_batch_or_width_are_a_typed_error_not_a_read_past_the_end() {
    let dev = Device::Cpu;
    let q = Tensor::zeros((2, 3, 4, 8), DType::F32, &dev).unwrap();
    let mask = Tensor::zeros((3, 3), DType::F32, &dev).unwrap();
    for k_shape in [(1, 3, 2, 8), (2, 3, 2, 4), (2, 3, 3, 8)] {
        let k = Tensor::zeros(k_shape, DType::F32, &dev).unwrap();
        let inp = AttnInputs {
            q: &q,
            k: &k,
            v: &k,
            mask: &mask,
            scale: 1.0,
            softcap: None,
        };
        assert!(matches!(attention_z(&inp), Err(LensError::Mismatch { .. })));
        assert!(matches!(scores(&inp), Err(LensError::Mismatch { .. })));
        assert!(products_only(&q, &k, &k).is_err());
    }
}
