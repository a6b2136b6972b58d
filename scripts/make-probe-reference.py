#!/usr/bin/env python3
"""Probe reference from scikit-learn on Hugging Face hidden states of the tiny Llama: logistic
probes (L2, scikit-learn's LogisticRegression(C)) and linear probes (LinearRegression and
Ridge(alpha), R^2) per layer, on the split Python's random gives, with a shuffled-label control.

Run by hand (never by CI); its output is committed:

    .venv-tl/bin/python scripts/make-probe-reference.py      # torch, transformers, scikit-learn

Writes crates/candlelens/tests/fixtures/reference/probes.json:

    {
      "sklearn_version": str, "transformers_version": str,
      "family": "llama", "hook": "resid_post", "seed": 42, "test_fraction": 0.25, "C": 0.5,
      "alpha": 2.0,
      "rows": [[int]],            # prompts as ids (no BOS), run one at a time
      "labels": [0|1],            # 1 when the prompt holds an id below 20 at an even position
      "targets": [float],         # a real target for the linear probe: the mean id / 10
      "train": [int], "test": [int],    # random.seed(seed); idx = list(range(n));
                                        # random.shuffle(idx); train = idx[:round((1-F)*n)]
      "control_labels": [0|1],    # labels shuffled by random.Random(seed + 1).shuffle
      "control_targets": [float], # targets shuffled the same way
      "layers": [{
        "layer": int,             # decoder layer `layer`'s output at the last token = resid_post
        "features": [[float]],    # those hidden states, [n, d_model] (float32 values)
        "coef": [float], "intercept": float, "train_acc": float, "test_acc": float,
        "decision_test": [float], # coef . x + intercept on the test rows
        "control_train_acc": float, "control_test_acc": float,
        "linear_coef": [float], "linear_intercept": float, "linear_r2_test": float,
        "ridge_coef": [float], "ridge_intercept": float,   # Ridge(alpha) on the train rows
        "ridge_r2_train": float, "ridge_r2_test": float,
        "ridge_control_r2_train": float, "ridge_control_r2_test": float   # on control_targets
      }]
    }

LogisticRegression(C=C, tol=1e-10, max_iter=100000) minimises
C * sum(log loss) + 0.5 * |w|^2 with an unpenalised intercept (lbfgs), the objective whose
optimum Candlelens's probe reaches through linfa-logistic with alpha = 1 / C.
"""
import json
import random
from pathlib import Path

import numpy as np
import sklearn
import torch
import transformers
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "candlelens" / "tests" / "fixtures"
SEED, F, C, ALPHA, N = 42, 0.25, 0.5, 2.0, 160


def main():
    gen = random.Random(0)
    rows = [[gen.randint(3, 60) for _ in range(gen.randint(4, 8))] for _ in range(N)]
    labels = [int(any(t < 20 for t in r[::2])) for r in rows]
    targets = [float(np.float32(sum(r) / len(r) / 10)) for r in rows]
    idx = list(range(N))
    random.seed(SEED)
    random.shuffle(idx)
    k = round((1 - F) * N)
    train, test = idx[:k], idx[k:]
    control = labels[:]
    random.Random(SEED + 1).shuffle(control)
    control_targets = targets[:]
    random.Random(SEED + 1).shuffle(control_targets)

    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny" / "llama", dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    # each decoder layer's output (resid_post): transformers' last hidden_states entry is after
    # the final norm, so read the layers themselves
    outs = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, l=l: outs.__setitem__(l, o[0] if isinstance(o, tuple) else o))
             for l, layer in enumerate(model.model.layers)]
    hs = []
    with torch.no_grad():
        for r in rows:
            model(torch.tensor([r]))
            hs.append([outs[l].clone() for l in range(len(hooks))])
    for h in hooks:
        h.remove()
    layers = []
    y, yc, t, tc = np.array(labels), np.array(control), np.array(targets), np.array(control_targets)
    for layer in range(model.config.num_hidden_layers):
        x = np.stack([h[layer][0, -1].numpy() for h in hs]).astype(np.float64)
        clf = LogisticRegression(C=C, tol=1e-10, max_iter=100000).fit(x[train], y[train])
        ctl = LogisticRegression(C=C, tol=1e-10, max_iter=100000).fit(x[train], yc[train])
        lin = LinearRegression().fit(x[train], t[train])
        ridge = Ridge(alpha=ALPHA).fit(x[train], t[train])
        ridge_ctl = Ridge(alpha=ALPHA).fit(x[train], tc[train])
        layers.append({
            "layer": layer,
            "features": [[float(str(np.float32(v))) for v in row] for row in x],
            "coef": clf.coef_[0].tolist(),
            "intercept": float(clf.intercept_[0]),
            "train_acc": float(clf.score(x[train], y[train])),
            "test_acc": float(clf.score(x[test], y[test])),
            "decision_test": clf.decision_function(x[test]).tolist(),
            "control_train_acc": float(ctl.score(x[train], yc[train])),
            "control_test_acc": float(ctl.score(x[test], yc[test])),
            "linear_coef": lin.coef_.tolist(),
            "linear_intercept": float(lin.intercept_),
            "linear_r2_test": float(lin.score(x[test], t[test])),
            "ridge_coef": ridge.coef_.tolist(),
            "ridge_intercept": float(ridge.intercept_),
            "ridge_r2_train": float(ridge.score(x[train], t[train])),
            "ridge_r2_test": float(ridge.score(x[test], t[test])),
            "ridge_control_r2_train": float(ridge_ctl.score(x[train], tc[train])),
            "ridge_control_r2_test": float(ridge_ctl.score(x[test], tc[test])),
        })
        print(f"layer {layer}: train {layers[-1]['train_acc']:.3f} test {layers[-1]['test_acc']:.3f} "
              f"control test {layers[-1]['control_test_acc']:.3f} linear R2 {layers[-1]['linear_r2_test']:.3f} ridge R2 {layers[-1]['ridge_r2_test']:.3f}")
    out = {
        "sklearn_version": sklearn.__version__,
        "transformers_version": transformers.__version__,
        "family": "llama", "hook": "resid_post", "seed": SEED, "test_fraction": F, "C": C,
        "alpha": ALPHA,
        "rows": rows, "labels": labels, "targets": targets, "train": train, "test": test,
        "control_labels": control, "control_targets": control_targets, "layers": layers,
    }
    path = FIXTURES / "reference" / "probes.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
