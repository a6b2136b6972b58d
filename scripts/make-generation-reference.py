#!/usr/bin/env python3
"""Generation reference from Hugging Face transformers on the tiny random checkpoints: left-padded
batched forward passes, greedy generation, and greedy generation with a steering vector added to
the residual stream.

Run by hand (never by CI); its output is committed:

    .venv-tl/bin/python scripts/make-generation-reference.py

(any venv with torch, transformers, numpy works; see scripts/make-reference.py). Each checkpoint
crates/candlelens/tests/fixtures/tiny/<family>/ is loaded in float32 with eager attention, as in
make-reference.py. A family that fails to load is skipped, with the reason printed and recorded
under "skipped".

Writes crates/candlelens/tests/fixtures/reference/generation.json:

    {
      "transformers_version": str, "torch_version": str,
      "max_new_tokens": 8,
      "skipped": {family: reason},
      "families": {
        family: {
          "n_ctx": int, "vocab_size": int, "d_model": int, "n_layers": int,
          "max_abs_alone_vs_batched": float,
          "left_padded": {
            "pad_id": int,                 # config.pad_token_id, else 0
            "rows": [[int]],               # each prompt's ids (no BOS added), ids in 3..=60
            "padded": [[int]],             # rows left-padded with pad_id to the longest
            "attention_mask": [[int]],     # 0 on pads
            "position_ids": [[int]],       # cumsum(attention_mask) - 1, clamped at 0
            "last_logits": [[float]],      # batched run, last column, full vocab, 6 sig. digits
            "alone_last_logits": [[float]],# each row run alone, unpadded, its last logits
            "max_abs_alone_vs_batched": float
          },
          "greedy": {"new_ids": [[int] * 8], "min_top2_margin": float},
          "steered": {"layer": 0, "scale": float, "v": [float] * d_model,
                      "new_ids": [[int] * 8], "min_top2_margin": float,
                      "changed_rows": [bool]}
        }
      }
    }

Greedy: model.generate(padded, attention_mask, max_new_tokens=8, do_sample=False) with an explicit
GenerationConfig whose eos_token_id is None, so generation can never stop early; no
min_new_tokens (its logits processor would push EOS to -inf and change the argmax). Exactly 8
new tokens per row is asserted. Every generate() result is also checked against a cache-less
loop (full re-run of the padded sequence each step, explicit position_ids, argmax of the last
column). "min_top2_margin" is the smallest gap between the best and second-best logit over the
8 steps and 3 rows (a small one means a Rust argmax may legitimately flip).

Steered: a forward hook on the first decoder layer (model.model.layers[0], or
model.transformer.h[0] for GPT-2) adds v to its output hidden states at every position (prompt,
pads and new tokens), i.e. v is added to the residual stream entering block 1. In transformers
5.x the decoder layers return the hidden-states tensor itself; the hook also handles a tuple
(first element) for older versions. v = torch.randn(d_model, generator=manual_seed(0)) * scale,
stored exactly (shortest decimal of each float32); scale starts at 5.0 and is doubled until at
least one row's continuation differs from "greedy".
"""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "candlelens" / "tests" / "fixtures"
FAMILIES = ["gpt2", "llama", "gemma2", "qwen2", "mistral", "gemma3"]
# ids kept clear of the tiny tokenizers' special ids (0, 1, 2)
ROWS = [[3, 5, 9, 17, 33, 12, 40, 8], [7, 3, 11], [4, 22, 19, 60, 25]]
MAX_NEW = 8
SCALE = 5.0


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def f32(x: float) -> float:
    return float(str(np.float32(x)))


def layers_of(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    return model.transformer.h


def n_ctx_of(cfg):
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions")


def left_pad(rows, pad):
    n = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def add_hook(model, v):
    def hook(_module, _args, out):
        if isinstance(out, tuple):
            return (out[0] + v,) + tuple(out[1:])
        return out + v

    return layers_of(model)[0].register_forward_hook(hook)


def generate(model, ids, mask, pad):
    gc = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None,
                          bos_token_id=None, pad_token_id=pad, use_cache=True)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    new = out[:, ids.shape[1]:]
    assert new.shape == (ids.shape[0], MAX_NEW), new.shape
    return new.tolist()


def uncached_greedy(model, ids, mask):
    """Greedy without a KV cache: the whole padded sequence re-run each step."""
    margin = float("inf")
    new = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            logits = model(ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits[:, -1]
            top = torch.topk(logits, 2).values
            margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
            nxt = logits.argmax(-1, keepdim=True)
            new.append(nxt)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(new, 1).tolist(), margin


def load(family):
    d = FIXTURES / "tiny" / family
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def family_reference(family, model):
    cfg = model.config
    pad = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
    d_model = cfg.hidden_size
    vocab = cfg.vocab_size
    assert all(1 <= t <= 200 for r in ROWS for t in r)

    ids, mask = left_pad(ROWS, pad)
    pos = positions(mask)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        alone = [model(torch.tensor([r])).logits[0, -1] for r in ROWS]
    diff = max(float((batched[b] - alone[b]).abs().max()) for b in range(len(ROWS)))
    print(f"{family}: pad {pad}, max |alone - batched| last logits = {diff:.3g}")

    greedy = generate(model, ids, mask, pad)
    loop, g_margin = uncached_greedy(model, ids, mask)
    assert greedy == loop, (family, "generate vs cache-less loop", greedy, loop)
    print(f"  greedy {greedy} (= cache-less loop; min top-2 margin {g_margin:.3g})")

    base = torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    scale = SCALE
    while True:
        v = torch.tensor([f32(x) for x in (base * scale).tolist()], dtype=torch.float32)
        h = add_hook(model, v)
        try:
            steered = generate(model, ids, mask, pad)
            sloop, s_margin = uncached_greedy(model, ids, mask)
        finally:
            h.remove()
        assert steered == sloop, (family, "steered generate vs cache-less loop", steered, sloop)
        changed = [s != g for s, g in zip(steered, greedy)]
        if any(changed) or scale > 1e3:
            break
        print(f"  steering at scale {scale} changed nothing; doubling")
        scale *= 2
    assert any(changed), family
    print(f"  steered (layer 0 output + v, scale {scale}) {steered}, changed rows {changed}, "
          f"min top-2 margin {s_margin:.3g}")

    return {
        "n_ctx": int(n_ctx_of(cfg)),
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "n_layers": int(cfg.num_hidden_layers),
        "max_abs_alone_vs_batched": diff,
        "left_padded": {
            "pad_id": int(pad),
            "rows": ROWS,
            "padded": ids.tolist(),
            "attention_mask": mask.tolist(),
            "position_ids": pos.tolist(),
            "last_logits": [[sig6(x) for x in batched[b].tolist()] for b in range(len(ROWS))],
            "alone_last_logits": [[sig6(x) for x in a.tolist()] for a in alone],
            "max_abs_alone_vs_batched": diff,
        },
        "greedy": {"new_ids": greedy, "min_top2_margin": g_margin},
        "steered": {"layer": 0, "scale": scale, "v": [f32(x) for x in v.tolist()], "new_ids": steered,
                    "min_top2_margin": s_margin, "changed_rows": changed},
    }


def main():
    torch.set_num_threads(1)
    doc = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "max_new_tokens": MAX_NEW,
        "skipped": {},
        "families": {},
    }
    for family in FAMILIES:
        try:
            model = load(family)
        except Exception as e:  # noqa: BLE001 - a family that fails to load is reported, not fatal
            reason = f"failed to load: {type(e).__name__}: {e}"
            print(f"{family}: SKIPPED ({reason})")
            doc["skipped"][family] = reason
            continue
        doc["families"][family] = family_reference(family, model)
    out = FIXTURES / "reference" / "generation.json"
    out.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
