//! Python's `random` module, as far as the sources need it: `random.seed(n)` with an integer,
//! then `random()`, `shuffle`, `sample`, `choice` and `gauss` — the same draws in the same
//! order as CPython, so that seeded splits (LRE) and sampled prompts (entity binding) match the
//! sources exactly. The Mersenne Twister itself is the `rand_mt` crate; this file adds
//! CPython's seeding (`init_by_array` over the seed's 32-bit words), `getrandbits`,
//! `_randbelow` and the functions built on them.

use rand_mt::Mt;

/// A generator in the state `random.seed(seed)` leaves Python's global generator in.
pub struct PyRandom {
    mt: Mt,
    /// `random.gauss` draws normals in pairs and keeps the second for the next call.
    gauss_next: Option<f64>,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed (CPython: the key is the seed's
    /// 32-bit words, least significant first; `0` is the key `[0]`).
    pub fn seed(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        PyRandom {
            mt: Mt::new_with_key(key),
            gauss_next: None,
        }
    }

    /// `random.getrandbits(k)` for `1 <= k <= 32`: the top `k` bits of the next output.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.mt.next_u32() >> (32 - k.clamp(1, 32))
    }

    /// `random._randbelow(n)`: uniform in `0..n` by rejection on `n.bit_length()` bits.
    /// `n` must be below 2^32 (lists longer than that are not shuffled here).
    pub fn randbelow(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`: Fisher–Yates from the end, `j = _randbelow(i + 1)`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow((i + 1) as u32) as usize;
            x.swap(i, j);
        }
    }

    /// `random.random()`: a uniform float in `[0, 1)` from 53 bits of two 32-bit outputs.
    pub fn random(&mut self) -> f64 {
        let a = (self.getrandbits(32) >> 5) as f64;
        let b = (self.getrandbits(32) >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `random.choice(seq)` as an index: `_randbelow(len)` (`0` for an empty sequence, where
    /// Python raises).
    pub fn choice(&mut self, len: usize) -> usize {
        self.randbelow(len as u32) as usize
    }

    /// `random.sample(range(n), k)`: `k` distinct indices in CPython's order (a pool for small
    /// `n`, rejection from a set otherwise — the same switch at the same size). `k` is capped
    /// at `n` (Python raises).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut setsize = 21usize;
        if k > 5 {
            let e = ((3 * k) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(e.ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u32) as usize;
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            for _ in 0..k {
                let mut j = self.randbelow(n as u32) as usize;
                while out.contains(&j) {
                    j = self.randbelow(n as u32) as usize;
                }
                out.push(j);
            }
        }
        out
    }

    /// `random.gauss(0, 1)`: CPython's Box–Muller, `x2pi = random() * 2π`, `g2rad =
    /// sqrt(-2 ln(1 - random()))`, returning `cos(x2pi) g2rad` and keeping `sin(x2pi) g2rad`
    /// for the next call.
    pub fn gauss(&mut self) -> f64 {
        if let Some(z) = self.gauss_next.take() {
            return z;
        }
        let x2pi = self.random() * std::f64::consts::TAU;
        let g2rad = (-2.0 * (1.0 - self.random()).ln()).sqrt();
        self.gauss_next = Some(x2pi.sin() * g2rad);
        x2pi.cos() * g2rad
    }

    /// A standard normal from two `random()` draws, `sqrt(-2 ln(1 - u₁)) cos(2π u₂)` — not
    /// `random.gauss`'s sequence. The entity-binding random control
    /// ([`crate::binding::BindingVectors::random_like`]) draws these.
    pub fn box_muller(&mut self) -> f64 {
        let u1 = 1.0 - self.random(); // (0, 1]
        let u2 = self.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A standard normal from two 32-bit words, `u₁ = (w₁ + 1) / (2³² + 1)`, `u₂ = w₂ / 2³²`,
    /// Box–Muller as [`Self::box_muller`] — the LRE causality control's draw
    /// ([`crate::lre::causality`]).
    pub fn box_muller_32(&mut self) -> f64 {
        let u1 = (f64::from(self.getrandbits(32)) + 1.0) / 4_294_967_297.0;
        let u2 = f64::from(self.getrandbits(32)) / 4_294_967_296.0;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Printed by CPython 3.12: `random.seed(42); [random.getrandbits(32) for _ in range(3)]`
    // and `random.seed(42); x = list(range(38)); random.shuffle(x); print(x)`.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::seed(42);
        let words: Vec<u32> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(words, [2746317213, 478163327, 107420369]);
        let mut x: Vec<usize> = (0..38).collect();
        PyRandom::seed(42).shuffle(&mut x);
        assert_eq!(
            x,
            [
                11, 33, 10, 32, 34, 29, 12, 5, 25, 30, 27, 4, 9, 19, 3, 24, 20, 22, 16, 37, 31, 26,
                0, 36, 13, 18, 2, 35, 28, 23, 21, 6, 8, 14, 15, 17, 1, 7
            ]
        );
    }

    #[test]
    fn matches_cpython_other_seeds() {
        // `random.seed(0); x = list(range(10)); random.shuffle(x)` and seed 2**40 + 7
        let mut x: Vec<usize> = (0..10).collect();
        PyRandom::seed(0).shuffle(&mut x);
        assert_eq!(x, [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]);
        let mut y: Vec<usize> = (0..10).collect();
        PyRandom::seed((1 << 40) + 7).shuffle(&mut y);
        assert_eq!(y, [0, 5, 2, 3, 6, 1, 8, 4, 7, 9]);
    }

    #[test]
    fn sample_is_cpython_for_small_and_large_populations() {
        // `random.seed(1); random.sample(range(10), 3)` and `random.sample(range(50), 4)` in
        // CPython 3.11 (the pool and the set branch)
        let mut r = PyRandom::seed(1);
        assert_eq!(r.sample(10, 3), vec![2, 1, 4]);
        assert_eq!(r.sample(50, 4), vec![7, 31, 48, 28]);
    }
}
