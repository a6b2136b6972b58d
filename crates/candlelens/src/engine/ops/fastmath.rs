//! Vectorised per-element math for the CPU kernels: an `exp` the compiler can turn into SIMD
//! code (glibc's `expf` is a scalar call, 4% of a batched forward in SiLU and softmax), and
//! [`with_simd`], which runs a loop compiled for the widest vector unit the CPU has
//! (AVX-512, else AVX2 + FMA, else the baseline), chosen at run time.

/// The f32 data a kernel reads: the slice of a contiguous f32 CPU storage under `layout`, or
/// `None` (another device, a strided layout).
///
/// # Errors
/// Another dtype than f32 in CPU storage.
pub(crate) fn cpu_f32<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> crate::error::Result<Option<&'a [f32]>> {
    use candle_core::WithDType;
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((a, b))) => {
            Ok(Some(&f32::cpu_storage_as_slice(cpu)?[a..b]))
        }
        _ => Ok(None),
    }
}

/// `e^x` in f32: Cody–Waite reduction `x = n ln 2 + r` and Cephes' degree-5 polynomial for
/// `e^r` on `|r| ≤ ln2 / 2`, scaled by `2^n` through the exponent bits. Relative error below
/// 2·10⁻⁷ (within 2 ulp of the correctly rounded value) on the normal range; `0` below
/// `-87.3` (so `exp(-inf) = 0`, as a masked softmax needs), held at `e^88.37` (2.4·10³⁸)
/// above. Branch-free, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^9
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.336_55, 88.376_26);
    // round to nearest by the 1.5·2²³ trick: no `floor` call where SSE4.1 is missing
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_55 {
        0.0
    } else {
        er * scale
    }
}

/// Runs `f` compiled for the widest vector unit this CPU has: the closure inlines into a
/// function built with AVX-512 (or AVX2 + FMA) enabled, so its loops over [`exp`] and
/// friends vectorise at that width. The baseline build elsewhere.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Defines `fn $name(args)` that runs the body `$block`, compiled for AVX-512 (or AVX2 + FMA)
/// where the CPU has it, chosen at run time — the explicit form of [`with_simd`] for a kernel
/// whose body would not inline into a closure's SIMD build — and the body itself as the
/// `#[inline(always)]` function `$body`, for other kernels' bodies to call. The signature is
/// written once: `simd_fn! { fn name, name_in(args) { body } }`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident, $body:ident($($arg:ident: $ty:ty),* $(,)?) $block:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { wide($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { narrow($($arg),*) };
                }
            }
            $body($($arg),*)
        }

        #[doc = concat!("The body of [`", stringify!($name), "`], inlined into its SIMD builds.")]
        #[inline(always)]
        fn $body($($arg: $ty),*) $block
    };
}
pub(crate) use simd_fn;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `Σ f(x)` over `xs`, accumulated in 16 lanes so that the loop vectorises (the order of the
/// additions differs from a sequential sum by rounding only).
#[inline(always)]
pub(crate) fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let mut chunks = xs.chunks_exact(L);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| f(x)).sum::<f32>()
}

/// Below this many elements a kernel runs on the calling thread: handing a few microseconds
/// of work to the pool costs more than it saves.
pub(crate) const SERIAL_BELOW: usize = 32_768;

/// `f(a[i], b[i])` for every `i` into a new vector, in chunks of 4096 on every core, each
/// chunk's loop under [`with_simd`]. No zero-fill first: every element is written once.
/// `a` and `b` have one length.
pub(crate) fn par_zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 4096;
    let n = a.len().min(b.len());
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(a[..n].par_chunks(CHUNK).zip(b[..n].par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            with_simd(|| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    o.write(f(x, y));
                }
            })
        });
    // SAFETY: the chunks cover 0..n and every element was written above.
    unsafe { out.set_len(n) };
    out
}

/// `f(a[i])` for every `i` into a new vector (see [`par_zip_map`]).
pub(crate) fn par_map(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    par_zip_map(a, a, |x, _| f(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(100.0).is_finite());
    }
}
