#!/usr/bin/env python3
"""Path-patching reference from PyTorch hooks on HF transformers (eager attention), the IOI
paper's recipe, on the tiny checkpoints:

1. run the corrupted batch with every head's z (the input of the attention output projection)
   set to the corrupted run's, except the sender head's, set to the clean run's; MLPs free (or
   frozen at the corrupted run's output);
2. receivers = the logits: the metric of that run. Receivers = every head's queries (or values)
   in the last layer: read the query (value) projection's output off that run, then run the
   corrupted batch again with that projection's output put in, and measure.

Scores are normalised: (patched - corrupted) / (clean - corrupted); the metric is the mean
logit difference of ANSWER at each prompt's last position.

Run by hand with the reference venv (see scripts/make-reference.py); the output is committed,
CI never runs it:
    .venv-ref/bin/python scripts/make-path-patching-reference.py

Writes crates/candlelens/tests/fixtures/reference/path_patching.json: per family the token ids,
the metric values, and the [layer][head] grids "logits", "logits_frozen_mlps", "q_last",
"v_last" (one sender head per cell).
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
FAMILIES = [("gpt2", True), ("llama", False), ("gemma2", False), ("neox", True)]


def corrupt_rows(rows):
    out = []
    for r in rows:
        r = list(r)
        n = len(r)
        r[1] = (r[1] + 17) % 250 + 3
        r[n - 3] = (r[n - 3] + 29) % 250 + 3
        out.append(r)
    return out


def layers_of(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    if hasattr(model, "gpt_neox"):
        return model.gpt_neox.layers
    return model.transformer.h


def attn_of(layer):
    for name in ("self_attn", "attn", "attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise ValueError("no attention module")


def out_proj(layer):
    attn = attn_of(layer)
    for name in ("o_proj", "c_proj", "dense"):
        if hasattr(attn, name):
            return getattr(attn, name)
    raise ValueError("no attention output projection")


def mlp_of(layer):
    return layer.mlp


class Family:
    """Where one family's q and v live in its projection outputs."""

    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.heads
        self.kv = getattr(cfg, "num_key_value_heads", None) or self.heads

    def projection(self, layer, which):
        """(module, function putting `src` into `out` for `which` in 'q'/'v', all heads)."""
        attn = attn_of(layer)
        if hasattr(attn, "q_proj"):
            mod = attn.q_proj if which == "q" else attn.v_proj
            return mod, lambda out, src: src
        if hasattr(attn, "c_attn"):  # GPT-2: [q | k | v]
            d = self.d_model
            part = 0 if which == "q" else 2

            def put(out, src):
                out = out.clone()
                out[..., part * d:(part + 1) * d] = src[..., part * d:(part + 1) * d]
                return out
            return attn.c_attn, put
        # GPT-NeoX: per head [q | k | v]
        part = 0 if which == "q" else 2
        h, dh = self.heads, self.d_head

        def put(out, src):
            o = out.clone().reshape(*out.shape[:-1], h, 3, dh)
            s = src.reshape(*src.shape[:-1], h, 3, dh)
            o[..., part, :] = s[..., part, :]
            return o.reshape(out.shape)
        return attn.query_key_value, put


def run(model, ids, mask, lengths, pre_hooks=(), fwd_hooks=()):
    hs = [m.register_forward_pre_hook(f) for m, f in pre_hooks]
    hs += [m.register_forward_hook(f) for m, f in fwd_hooks]
    try:
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
    finally:
        for h in hs:
            h.remove()
    last = torch.stack([logits[b, n - 1] for b, n in enumerate(lengths)])
    return float((last[:, ANSWER[0]] - last[:, ANSWER[1]]).mean())


def capture(model, ids, mask, lengths):
    """z per layer, MLP outputs per layer and the q/v projection outputs of every layer."""
    z, mlp = {}, {}
    pre, fwd = [], []
    for l, layer in enumerate(layers_of(model)):
        pre.append((out_proj(layer), lambda m, a, l=l: z.__setitem__(l, a[0].clone())))
        fwd.append((mlp_of(layer), lambda m, a, o, l=l: mlp.__setitem__(l, o.clone())))
    metric = run(model, ids, mask, lengths, pre, fwd)
    return metric, z, mlp


def family_reference(family, prepend):
    d = FIXTURES / "tiny" / family
    tk = Tokenizer.from_file(str(d / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    fam = Family(model)
    cfg = model.config
    rows = [([cfg.bos_token_id] if prepend else []) + tk.encode(p).ids for p in PROMPTS]
    bad = corrupt_rows(rows)
    lengths = [len(r) for r in rows]
    n = max(lengths)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)

    def batch(rs):
        return torch.tensor([r + [pad] * (n - len(r)) for r in rs])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    m_clean, z_clean, _ = capture(model, batch(rows), mask, lengths)
    m_bad, z_bad, mlp_bad = capture(model, batch(bad), mask, lengths)
    layers = layers_of(model)
    n_layers = len(layers)
    norm = m_clean - m_bad
    h, dh = fam.heads, fam.d_head

    def frozen_z_hooks(sender):
        hooks = []
        for l, layer in enumerate(layers):
            def f(m, a, l=l):
                z = z_bad[l].clone()
                if sender[0] == l:
                    s = sender[1]
                    z[..., s * dh:(s + 1) * dh] = z_clean[l][..., s * dh:(s + 1) * dh]
                return (z,)
            hooks.append((out_proj(layer), f))
        return hooks

    def frozen_mlp_hooks():
        return [(mlp_of(layer), lambda m, a, o, l=l: mlp_bad[l]) for l, layer in enumerate(layers)]

    def grid(score, last_layer):
        return [[score((l, s)) if l < last_layer else 0.0 for s in range(h)] for l in range(n_layers)]

    def to_logits(sender, freeze):
        fwd = frozen_mlp_hooks() if freeze else []
        return (run(model, batch(bad), mask, lengths, frozen_z_hooks(sender), fwd) - m_bad) / norm

    def to_heads(which):
        r = n_layers - 1
        mod, put = fam.projection(layers[r], which)

        def score(sender):
            seen = {}
            fwd = [(mod, lambda m, a, o: seen.__setitem__("x", o.clone()))]
            run(model, batch(bad), mask, lengths, frozen_z_hooks(sender), fwd)
            patch = [(mod, lambda m, a, o: put(o, seen["x"]))]
            return (run(model, batch(bad), mask, lengths, (), patch) - m_bad) / norm
        return grid(score, r)

    out = {
        "clean_ids": rows,
        "corrupt_ids": bad,
        "answer": list(ANSWER),
        "clean_metric": m_clean,
        "corrupt_metric": m_bad,
        "logits": grid(lambda s: to_logits(s, False), n_layers),
        "logits_frozen_mlps": grid(lambda s: to_logits(s, True), n_layers),
        "q_last": to_heads("q"),
        "v_last": to_heads("v"),
    }
    print(f"{family}: clean {m_clean:.4f}, corrupted {m_bad:.4f}, logits grid {out['logits']}")
    return out


def main():
    out = {f: family_reference(f, prepend) for f, prepend in FAMILIES}
    path = FIXTURES / "reference" / "path_patching.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
