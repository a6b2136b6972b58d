"""The PyTorch side of scripts/bench: the same workloads as `lens bench forward|jacobian` on
Hugging Face transformers (an embedded GGUF dequantized to f32, eager attention), one JSON line.

  forward  --model M (--prompt P | --prompts FILE) [--last] --runs N
           median forward time; with --prompts the lines run as one right-padded batch (with
           its attention mask); --last computes the unembedding only at each prompt's last
           real position (the same logits work as `lens bench forward --last`).
  jacobian --model M --layer L --subjects N
           torch.autograd.functional.jacobian(vectorize=True) of the last block's output at the
           last position with respect to blocks.L.hook_resid_post at the subject's last token,
           on the gender relation (data/data_sample.json, "{} students are typically", the
           source's seed-42 split): seconds per subject.
  probe    --features DIR --runs N
           scikit-learn's LogisticRegression(C) fitted per layer on the features, labels and
           split `lens bench probe --features-out DIR` wrote: median milliseconds per layer at
           scikit-learn's default tolerance and at the tolerance Candlelens's probe converges
           to (tol=1e-10), with the held-out accuracy of each.

Run with the reference venv (.venv-ref, see scripts/make-reference.py).
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FILES = {
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}
ROOT = Path(__file__).resolve().parent.parent


def load(name):
    base = Path(
        os.environ.get("CANDLELENS_MODELS")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candlelens" / "models"
    )
    d, f = base / name, FILES[name]
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return tok, model, time.perf_counter() - t0


def forward(a):
    tok, model, load_s = load(a.model)
    prompts = [a.prompt] if a.prompt else [l for l in Path(a.prompts).read_text().splitlines() if l.strip()]
    rows = [tok(p)["input_ids"] for p in prompts]
    n = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    last = torch.tensor([len(r) - 1 for r in rows])

    def run():
        if a.last:
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return model.lm_head(h[torch.arange(len(rows)), last])
        return model(input_ids=ids, attention_mask=mask).logits

    ms = []
    with torch.inference_mode():
        run()
        for _ in range(a.runs):
            t = time.perf_counter()
            run()
            ms.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(ms), "batch": len(rows), "n_tokens": n, "load_s": load_s}


def subject_last_token(tok, prompt, subject, bos):
    """Index of the last token covering the subject (offsets), BOS counted."""
    enc = tok(prompt, return_offsets_mapping=True, add_special_tokens=bos)
    start = prompt.index(subject)
    end = start + len(subject)
    pos = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start and e > s]
    return enc["input_ids"], pos[-1]


def jacobian(a):
    tok, model, _ = load(a.model)
    data = json.loads((ROOT / "data" / "data_sample.json").read_text())
    random.seed(42)
    random.shuffle(data)
    train = data[: int(len(data) * 0.6)]
    template = "{} students are typically"
    layers = model.model.layers
    bos = a.model.startswith("gemma")  # as the models' tokenizers default (Gemma: BOS)
    total = 0.0
    n = max(1, min(a.subjects, len(train)))
    for s in train[:n]:
        prompt = template.format(s["subject"])
        ids, pos = subject_last_token(tok, prompt, s["subject"], bos)
        ids = torch.tensor([ids])
        with torch.no_grad():
            hs = model.model(input_ids=ids, output_hidden_states=True).hidden_states
        h0 = hs[a.layer + 1][0, pos].clone()
        z_box = {}

        def put(mod, args, out, h):
            x = out[0] if isinstance(out, tuple) else out
            x = x.clone()
            x[0, pos] = h
            return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x

        def take(mod, args, out):
            x = out[0] if isinstance(out, tuple) else out
            z_box["z"] = x[0, -1]

        def f(h):
            hk = layers[a.layer].register_forward_hook(lambda m, i, o: put(m, i, o, h))
            tk = layers[-1].register_forward_hook(take)
            try:
                model.model(input_ids=ids)
            finally:
                hk.remove()
                tk.remove()
            return z_box["z"]

        t = time.perf_counter()
        j = torch.autograd.functional.jacobian(f, h0, vectorize=True)
        total += time.perf_counter() - t
        assert j.shape == (h0.shape[0], h0.shape[0])
    return {"seconds_per_subject": total / n, "subjects": n, "layer": a.layer}


def probe(a):
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegression

    d = Path(a.features)
    meta = json.loads((d / "meta.json").read_text())
    y = np.array(meta["labels"], dtype=int)
    train, test = meta["train"], meta["test"]
    layers = []
    for layer in meta["layers"]:
        x = np.load(d / f"layer-{layer}.npy").astype(np.float64)
        row = {"layer": layer}
        for key, tol in (("", 1e-4), ("_tight", 1e-10)):
            make = lambda: LogisticRegression(C=meta["C"], tol=tol, max_iter=100000)
            make().fit(x[train], y[train])  # warm-up
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                clf = make().fit(x[train], y[train])
                times.append((time.perf_counter() - t) * 1e3)
            row["fit_ms" + key] = statistics.median(times)
            row["test_acc" + key] = float(clf.score(x[test], y[test]))
        layers.append(row)
    return {
        "sklearn_version": sklearn.__version__,
        "layers": layers,
        "mean_fit_ms": statistics.mean(r["fit_ms"] for r in layers),
        "mean_fit_ms_tight": statistics.mean(r["fit_ms_tight"] for r in layers),
    }


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True, choices=sorted(FILES))
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt")
    g.add_argument("--prompts")
    f.add_argument("--last", action="store_true")
    f.add_argument("--runs", type=int, default=10)
    j = sub.add_parser("jacobian")
    j.add_argument("--model", required=True, choices=sorted(FILES))
    j.add_argument("--layer", type=int, required=True)
    j.add_argument("--subjects", type=int, default=2)
    p = sub.add_parser("probe")
    p.add_argument("--features", required=True)
    p.add_argument("--runs", type=int, default=5)
    for q in (f, j, p):
        q.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = {"forward": forward, "jacobian": jacobian, "probe": probe}[a.cmd](a)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
