#!/usr/bin/env python3
"""Attribution-patching reference from PyTorch autograd on the tiny transformers checkpoints:
for a clean and a corrupted batch (right-padded), the gradient of the mean logit difference
on the corrupted run, times (clean - corrupted) activations, summed per cell and normalised by
(clean - corrupted) metric — the grids `Attribution::nodes` computes with candle's autograd.

Run by hand (the .venv-ref of scripts/make-reference.py); its output is committed, CI never
runs it:
    .venv-ref/bin/python scripts/make-attribution-reference.py

Writes crates/candlelens/tests/fixtures/reference/attribution.json: per family the token ids,
the answer pair, both metric values, the resid_pre grid [layer][pos] and the head grid
[layer][head] (hook_z: the input of the attention output projection, split into heads).
"""
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/candlelens/tests/fixtures"
PROMPTS = ["The pet of this family is", "Is Paris the capital of"]
ANSWER = (5, 9)
# (family, whether Candlelens prepends the BOS by hand: the GPT-2-tokenizer families)
FAMILIES = [("gpt2", True), ("llama", False), ("gemma2", False), ("mixtral", False)]


def corrupt_rows(rows):
    out = []
    for r in rows:
        r = list(r)
        n = len(r)
        r[n // 2] = (r[n // 2] + 17) % 250 + 3
        r[n - 3] = (r[n - 3] + 29) % 250 + 3
        out.append(r)
    return out


def layers_of(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    return model.transformer.h


def out_proj(layer):
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attn")
    for name in ("o_proj", "c_proj", "dense"):
        if hasattr(attn, name):
            return getattr(attn, name)
    raise ValueError("no attention output projection")


def run(model, ids, mask, lengths, track):
    """Metric and per-layer (resid_pre, z) of one batch; with `track`, tensors keep .grad."""
    acts = {}
    hooks = []
    for l, layer in enumerate(layers_of(model)):
        def pre(m, args, kwargs, l=l):
            h = args[0] if args else kwargs["hidden_states"]
            if track:
                h.retain_grad()
            acts[("resid_pre", l)] = h
        def zpre(m, args, l=l):
            z = args[0]
            if track:
                z.retain_grad()
            acts[("z", l)] = z
        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(out_proj(layer).register_forward_pre_hook(zpre))
    logits = model(ids, attention_mask=mask).logits
    for h in hooks:
        h.remove()
    last = torch.stack([logits[b, n - 1] for b, n in enumerate(lengths)])
    metric = (last[:, ANSWER[0]] - last[:, ANSWER[1]]).mean()
    return metric, acts


def family_reference(family, prepend):
    d = FIXTURES / "tiny" / family
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    bos = cfg.bos_token_id
    rows = [([bos] if prepend else []) + tk.encode(p).ids for p in PROMPTS]
    bad = corrupt_rows(rows)
    lengths = [len(r) for r in rows]
    n = max(lengths)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    def batch(rs):
        return torch.tensor([r + [pad] * (n - len(r)) for r in rs])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    with torch.no_grad():
        m_clean, clean = run(model, batch(rows), mask, lengths, False)
    m_bad, bad_acts = run(model, batch(bad), mask, lengths, True)
    m_bad.backward()
    heads = cfg.num_attention_heads
    norm = float(m_clean - m_bad)
    resid, head_grid = [], []
    for l in range(len(layers_of(model))):
        g = bad_acts[("resid_pre", l)].grad
        diff = clean[("resid_pre", l)] - bad_acts[("resid_pre", l)].detach()
        resid.append(((g * diff).sum(dim=(0, 2)) / norm).tolist())
        gz = bad_acts[("z", l)].grad
        dz = clean[("z", l)] - bad_acts[("z", l)].detach()
        b, p, w = gz.shape
        prod = (gz * dz).reshape(b, p, heads, w // heads)
        head_grid.append((prod.sum(dim=(0, 1, 3)) / norm).tolist())
    print(f"{family}: clean {float(m_clean):.4f}, corrupted {float(m_bad):.4f}")
    return {
        "clean_ids": rows,
        "corrupt_ids": bad,
        "answer": list(ANSWER),
        "clean_metric": float(m_clean),
        "corrupt_metric": float(m_bad),
        "resid_pre": resid,
        "heads": head_grid,
    }


def main():
    out = {f: family_reference(f, prepend) for f, prepend in FAMILIES}
    path = FIXTURES / "reference" / "attribution.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
