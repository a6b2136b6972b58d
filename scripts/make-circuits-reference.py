#!/usr/bin/env python3
"""Reference spectra of the per-head OV and QK circuits of the tiny GPT-2 and Llama checkpoints,
for crates/candlelens/tests/circuits.rs.

Independent of Candlelens: the weights are read with safetensors/torch, sliced the way
TransformerLens slices them (GPT-2's Conv1D [in, out] blocks; Llama's [out, in] rows, key/value
heads repeated per query head with repeat_interleave), the full d_model x d_model products
OV = W_V[l,h] @ W_O[l,h] and QK = W_Q[l,h] @ W_K[l,h].T are formed, and numpy's SVD and general
eigensolver run on them (Candlelens works on the d_head-sized factors instead).

Run by hand (needs torch, safetensors, numpy; the .venv-ref of scripts/make-reference.py):
    .venv-ref/bin/python scripts/make-circuits-reference.py
"""
import json
import pathlib

import numpy as np
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "crates/candlelens/tests/fixtures/tiny"
OUT = ROOT / "crates/candlelens/tests/fixtures/reference/circuits.json"


def gpt2_heads(w, cfg):
    d, h = cfg["n_embd"], cfg["n_head"]
    dh = d // h
    for l in range(cfg["n_layer"]):
        c_attn = w[f"transformer.h.{l}.attn.c_attn.weight"]  # [d, 3d]
        c_proj = w[f"transformer.h.{l}.attn.c_proj.weight"]  # [d, d], rows = z
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            wq = c_attn[:, 0 * d:1 * d][:, cols]
            wk = c_attn[:, 1 * d:2 * d][:, cols]
            wv = c_attn[:, 2 * d:3 * d][:, cols]
            wo = c_proj[cols, :]
            yield l, head, wq, wk, wv, wo, dh


def llama_heads(w, cfg):
    h, kv, dh = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    group = h // kv
    for l in range(cfg["num_hidden_layers"]):
        q = w[f"model.layers.{l}.self_attn.q_proj.weight"]  # [h*dh, d]
        k = w[f"model.layers.{l}.self_attn.k_proj.weight"]  # [kv*dh, d]
        v = w[f"model.layers.{l}.self_attn.v_proj.weight"]
        o = w[f"model.layers.{l}.self_attn.o_proj.weight"]  # [d, h*dh]
        for head in range(h):
            g = head // group  # repeat_interleave
            wq = q[head * dh:(head + 1) * dh, :].T
            wk = k[g * dh:(g + 1) * dh, :].T
            wv = v[g * dh:(g + 1) * dh, :].T
            wo = o[:, head * dh:(head + 1) * dh].T
            yield l, head, wq, wk, wv, wo, dh


def spectrum(m, r):
    s = np.linalg.svd(m, compute_uv=False)[:r]
    ev = np.linalg.eigvals(m)
    ev = ev[np.argsort(-np.abs(ev), kind="stable")][:r]
    return {"singular_values": s.tolist(), "eigenvalues": [[float(x.real), float(x.imag)] for x in ev]}


def main():
    out = {}
    for family, heads in [("gpt2", gpt2_heads), ("llama", llama_heads)]:
        cfg = json.loads((TINY / family / "config.json").read_text())
        w = {k: t.double().numpy() for k, t in load_file(TINY / family / "model.safetensors").items()}
        rows = []
        for l, head, wq, wk, wv, wo, dh in heads(w, cfg):
            rows.append({
                "layer": l,
                "head": head,
                "OV": spectrum(wv @ wo, dh),
                "QK": spectrum(wq @ wk.T, dh),
            })
        out[family] = rows
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
