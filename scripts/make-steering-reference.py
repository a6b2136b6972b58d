#!/usr/bin/env python3
"""Steering reference from Hugging Face transformers on the tiny random checkpoints: contrastive
(CAA) steering vectors from hidden states, greedy generation steered with a forward pre-hook, and
ActAdd's single-pair difference added at the prompt's first positions.

Run by hand (never by CI); its output is committed:

    .venv-tl/bin/python scripts/make-steering-reference.py

Each checkpoint crates/candlelens/tests/fixtures/tiny/<family>/ is loaded in float32 with eager
attention. Writes crates/candlelens/tests/fixtures/reference/steering.json:

    {
      "transformers_version": str, "torch_version": str, "layer": 1, "max_new_tokens": 8,
      "positive": [[int]], "negative": [[int]],     # prompts as ids (no BOS added), ragged
      "prompts": [[int]],                           # the prompts generation continues
      "families": {
        family: {
          "vector": [float] * d_model,   # mean over `positive` of hidden_states[layer] at each
                                         # prompt's last token (each prompt run alone) minus the
                                         # same over `negative`; hidden_states[layer] is the
                                         # residual stream entering block `layer`
          "norm": float,
          "greedy": [[int] * 8],         # unsteered, prompts left-padded, as generation.json
          "coef": float,                 # the coefficient of the steered run
          "steered": [[int] * 8],        # a forward pre-hook on block `layer` adds coef * vector
                                         # to its input at every position (prompt, pads, new)
          "changed_rows": [bool],
          "act_add": {                     # or {"skipped": why} where nothing moves it
            "positive": [int], "negative": [int],   # one pair of equal length
            "prompt": [int],                        # one prompt, no padding
            "coef": float,                          # from 8, doubled until new_ids != greedy
            "greedy": [int] * 8,                    # unsteered
            "new_ids": [int] * 8                    # coef * (h+ - h-)[j] added at prompt position j
          }
        }
      }
    }

The coefficient starts at 4 and doubles until at least one row's continuation changes.
"""
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "candlelens" / "tests" / "fixtures"
FAMILIES = ["gpt2", "llama", "gemma2"]
LAYER = 1
MAX_NEW = 8
POSITIVE = [[3, 5, 9, 17, 33], [7, 3, 11, 40], [4, 22, 19]]
NEGATIVE = [[12, 40, 8, 3], [9, 9, 21, 5, 6, 30], [15, 3]]
PROMPTS = [[3, 5, 9, 17, 33, 12, 40, 8], [7, 3, 11], [4, 22, 19, 60, 25]]
ACT_POS, ACT_NEG, ACT_PROMPT = [3, 5, 9], [7, 3, 11], [4, 22, 19, 60, 25]


def layers_of(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    return model.transformer.h


def last_hidden(model, row):
    with torch.no_grad():
        out = model(torch.tensor([row]), output_hidden_states=True)
    return out.hidden_states[LAYER][0, -1]


def hidden(model, row):
    with torch.no_grad():
        out = model(torch.tensor([row]), output_hidden_states=True)
    return out.hidden_states[LAYER][0]


def pre_hook(model, add):
    """A forward pre-hook on block LAYER replacing its input hidden states h by add(h)."""

    def hook(_module, args, kwargs):
        if args:
            return (add(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = add(kwargs["hidden_states"])
        return args, kwargs

    return layers_of(model)[LAYER].register_forward_pre_hook(hook, with_kwargs=True)


def generate(model, rows, pad):
    n = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    gc = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None,
                          bos_token_id=None, pad_token_id=pad, use_cache=True)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    new = out[:, n:]
    assert new.shape == (len(rows), MAX_NEW), new.shape
    return new.tolist()


def family_reference(family):
    d = FIXTURES / "tiny" / family
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    cfg = model.config
    pad = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
    pos = torch.stack([last_hidden(model, r) for r in POSITIVE]).mean(0)
    neg = torch.stack([last_hidden(model, r) for r in NEGATIVE]).mean(0)
    v = pos - neg
    greedy = generate(model, PROMPTS, pad)
    coef = 4.0
    while True:
        h = pre_hook(model, lambda x: x + coef * v)
        try:
            steered = generate(model, PROMPTS, pad)
        finally:
            h.remove()
        changed = [s != g for s, g in zip(steered, greedy)]
        if any(changed) or coef > 1e3:
            break
        coef *= 2
    assert any(changed), family
    diff = hidden(model, ACT_POS) - hidden(model, ACT_NEG)  # [k, d_model]
    k = diff.shape[0]
    act_coef = 8.0

    def add_first(x):
        if x.shape[1] >= k:  # the prompt's run; generation steps cover later positions only
            x = x.clone()
            x[:, :k] += act_coef * diff
        return x

    act_greedy = generate(model, [ACT_PROMPT], pad)[0]
    while True:
        h = pre_hook(model, add_first)
        try:
            act_new = generate(model, [ACT_PROMPT], pad)[0]
        finally:
            h.remove()
        if act_new != act_greedy or act_coef > 1e3:
            break
        act_coef *= 2
    act_add = {"positive": ACT_POS, "negative": ACT_NEG, "prompt": ACT_PROMPT,
               "coef": act_coef, "greedy": act_greedy, "new_ids": act_new}
    if act_new == act_greedy:
        # a continuation no coefficient moves tests nothing: record why instead
        act_add = {"skipped": f"no coefficient up to {act_coef} changes the continuation"}
    print(f"{family}: |v| {float(v.norm()):.4g}, coef {coef}, changed {changed}, act_add {act_new}")
    return {
        "vector": [float(x) for x in v.tolist()],
        "norm": float(v.norm()),
        "greedy": greedy,
        "coef": coef,
        "steered": steered,
        "changed_rows": changed,
        "act_add": act_add,
    }


def main():
    out = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "layer": LAYER,
        "max_new_tokens": MAX_NEW,
        "positive": POSITIVE,
        "negative": NEGATIVE,
        "prompts": PROMPTS,
        "families": {f: family_reference(f) for f in FAMILIES},
    }
    path = FIXTURES / "reference" / "steering.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
