#!/usr/bin/env python3
"""The source's LRE evaluation (seed 001, `lre-experiment` at be7929b, `lre/lre.py`), rerun step
for step with Hugging Face transformers on the embedded Gemma 3 270M (the Q4_K_M GGUF
dequantized to float32) — the reference `lens lre --read-at prompt-last` and the LRE notebook are
held to, subject by subject. The source ran the same model (google/gemma-3-270m, float32, on
Apple's mps); its printed tables are transcribed in data/lre-source/gemma3-270m.json.

Run by hand (never by CI); its output is committed:

    .venv-tl/bin/python scripts/make-lre-source-reference.py   # torch, transformers, scikit-learn

The method, as its lre.py does it:
- data/data_sample.json (the source's file), random.seed(42); random.shuffle(data); the first
  int(0.6 * 38) = 22 train, the other 16 test;
- prompt = template.format(subject); tokenizer(prompt) with its special tokens (Gemma's <bos>);
- h = the output of model.layers[N] at input_ids.shape[1] - 1 (the prompt's last token);
- the target = lm_head.weight[first token of " " + object];
- W, b = sklearn LinearRegression().fit(h_train, targets);
- predicted = tokenizer.decode(argmax(z @ lm_head.weight.T)).strip(), correct when its
  lower-case starts with the object's.

Writes crates/candlelens/tests/fixtures/reference/lre-source-method.json:
    {"model": "gemma-3-270m", "transformers_version", "sklearn_version", "test_subjects": [...],
     "evaluations": [{"layer": int, "template": str, "score": int,
                      "rows": [{"subject", "expected", "predicted", "correct", "top_id", "margin"}]}]}
`margin` is the top logit minus the runner-up's: a near-tie a float's rounding can flip.
"""
import json
import random
from pathlib import Path

import numpy as np
import sklearn
import torch
import transformers
from sklearn.linear_model import LinearRegression
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path.home() / ".cache" / "candlelens" / "models"
EVALS = [(5, "{} students are typically"), (10, "{} students are typically"),
         (15, "{} students are typically"), (15, "Most {} majors are")]


def main():
    d, f = MODELS / "gemma-3-270m", "gemma-3-270m-q4_k_m.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    data = json.loads((ROOT / "data" / "data_sample.json").read_text())
    random.seed(42)
    random.shuffle(data)
    k = int(len(data) * 0.6)
    train, test = data[:k], data[k:]
    lm_head = model.lm_head.weight.detach()

    def h_of(text, layer):
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tok.bos_token_id, "Gemma's tokenizer prepends <bos>"
        out = {}
        hook = model.model.layers[layer].register_forward_hook(
            lambda m, a, o: out.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(input_ids=ids)
        hook.remove()
        return out["h"][0, ids.shape[1] - 1].numpy()

    def target(obj):
        enc = tok.encode(" " + obj, add_special_tokens=False) or tok.encode(obj, add_special_tokens=False)
        return lm_head[enc[0]].numpy()

    evaluations = []
    for layer, template in EVALS:
        x = np.stack([h_of(template.format(s["subject"]), layer) for s in train])
        y = np.stack([target(s["object"]) for s in train])
        reg = LinearRegression().fit(x, y)
        rows = []
        for s in test:
            z = torch.tensor(reg.predict(h_of(template.format(s["subject"]), layer)[None])[0], dtype=torch.float32)
            logits = z @ lm_head.T
            top2 = torch.topk(logits, 2)
            word = tok.decode(top2.indices[0].item()).strip()
            rows.append({"subject": s["subject"], "expected": s["object"], "predicted": word,
                         "correct": word.lower().startswith(s["object"].lower()),
                         "top_id": top2.indices[0].item(),
                         "margin": float(top2.values[0] - top2.values[1])})
        score = sum(r["correct"] for r in rows)
        print(f"layer {layer} {template!r}: {score}/{len(rows)}")
        evaluations.append({"layer": layer, "template": template, "score": score, "rows": rows})
    out = {"model": "gemma-3-270m", "transformers_version": transformers.__version__,
           "sklearn_version": sklearn.__version__, "test_subjects": [s["subject"] for s in test],
           "evaluations": evaluations}
    path = ROOT / "crates" / "candlelens" / "tests" / "fixtures" / "reference" / "lre-source-method.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
