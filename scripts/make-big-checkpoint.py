#!/usr/bin/env python3
"""Writes a large random checkpoint folder (config.json, sharded *.safetensors with
model.safetensors.index.json, tokenizer.json) for the memory benchmark `scripts/bench-load`.
Its weights are random: it measures loading, not language. Not committed (GBs).

    .venv-ref/bin/python scripts/make-big-checkpoint.py --shape gpt2-xl --dtype f32 --out /tmp/big-gpt2-xl
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    # name: (n_layer, n_embd, n_head, vocab, n_positions)
    "gpt2-medium": (24, 1024, 16, 50257, 1024),
    "gpt2-large": (36, 1280, 20, 50257, 1024),
    "gpt2-xl": (48, 1600, 25, 50257, 1024),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-xl")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", type=int, default=3)
    a = ap.parse_args()
    n_layer, d, h, vocab, n_pos = SHAPES[a.shape]
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    tensors = {"transformer.wte.weight": rnd(vocab, d), "transformer.wpe.weight": rnd(n_pos, d, std=0.01)}
    for l in range(n_layer):
        p = f"transformer.h.{l}."
        tensors.update({
            p + "ln_1.weight": torch.ones(d, dtype=dtype), p + "ln_1.bias": torch.zeros(d, dtype=dtype),
            p + "attn.c_attn.weight": rnd(d, 3 * d), p + "attn.c_attn.bias": torch.zeros(3 * d, dtype=dtype),
            p + "attn.c_proj.weight": rnd(d, d), p + "attn.c_proj.bias": torch.zeros(d, dtype=dtype),
            p + "ln_2.weight": torch.ones(d, dtype=dtype), p + "ln_2.bias": torch.zeros(d, dtype=dtype),
            p + "mlp.c_fc.weight": rnd(d, 4 * d), p + "mlp.c_fc.bias": torch.zeros(4 * d, dtype=dtype),
            p + "mlp.c_proj.weight": rnd(4 * d, d), p + "mlp.c_proj.bias": torch.zeros(d, dtype=dtype),
        })
    tensors["transformer.ln_f.weight"] = torch.ones(d, dtype=dtype)
    tensors["transformer.ln_f.bias"] = torch.zeros(d, dtype=dtype)

    names = list(tensors)
    per = (len(names) + a.shards - 1) // a.shards
    weight_map = {}
    for i in range(a.shards):
        fname = f"model-{i + 1:05d}-of-{a.shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i * per:(i + 1) * per]}
        save_file(part, out / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": n_layer, "n_embd": d,
        "n_head": h, "vocab_size": vocab, "n_positions": n_pos, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
    }))
    shutil.copy(ROOT / "crates/candlelens/tests/fixtures/tiny/gpt2/tokenizer.json", out / "tokenizer.json")
    print(f"{a.shape} ({a.dtype}): {total / 2**30:.2f} GiB of weights in {a.shards} shards at {out}")


if __name__ == "__main__":
    main()
