//! Python's `random` module, as far as the source's data split needs it: `random.seed(n)` with
//! an integer, then `random.shuffle(list)`. The Mersenne Twister itself is the `rand_mt` crate;
//! this file adds CPython's seeding (`init_by_array` over the seed's 32-bit words),
//! `getrandbits` and `_randbelow`, so the same subjects land in train and test as in Python.

use rand_mt::Mt;

/// A generator in the state `random.seed(seed)` leaves Python's global generator in.
pub struct PyRandom {
    mt: Mt,
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
}
