#!/usr/bin/env python3
"""Reference numbers for the LRE code's tests (crates/candlelens/src/lre/).

- The least-norm regression: what scikit-learn's LinearRegression (the source's estimator)
  computes for dense input — centre X and Y, then LAPACK least squares (numpy.linalg.lstsq,
  minimum-norm for under-determined problems).
- Python's random.seed(n); random.shuffle(x) permutations (the source's 60/40 split).

Needs only numpy (any Python 3). Prints the values the tests hard-code.
"""
import random

import numpy as np

X = np.array([[1, 2, 0, 1], [0, 1, 1, 3], [2, 0, 1, 1]], float)
Y = np.array([[1, 0], [2, 1], [0, 3]], float)
xm, ym = X.mean(0), Y.mean(0)
W, *_ = np.linalg.lstsq(X - xm, Y - ym, rcond=None)
print("least-norm coef (W, [d_out, d_in]):", np.round(W.T, 8).tolist())
print("intercept:", np.round(ym - xm @ W, 8).tolist())

for seed, n in [(42, 38), (0, 10), (2**40 + 7, 10)]:
    random.seed(seed)
    x = list(range(n))
    random.shuffle(x)
    print(f"random.seed({seed}); shuffle(range({n})):", x)
random.seed(42)
print("random.seed(42); getrandbits(32) x3:", [random.getrandbits(32) for _ in range(3)])
random.seed(42)
x = list("abcde")
random.shuffle(x)
print("random.seed(42); shuffle('abcde'):", x)
