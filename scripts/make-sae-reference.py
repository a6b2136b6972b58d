#!/usr/bin/env python3
"""Small sparse autoencoders and transcoders in SAELens's on-disk format, with their
activations computed independently in numpy — the reference the SAE tests hold Candlelens to.

For each architecture (SAELens 6: `standard`, `jumprelu`, `topk`, `jumprelu_transcoder`; one
in the pre-6 flat config layout with `activation_fn_str: "topk"`; a Gemma Scope `params.npz`)
it writes `crates/candlelens/tests/fixtures/sae/<name>/` (`cfg.json` +
`sae_weights.safetensors`, or `params.npz`) sized for the tiny Llama checkpoint (d_model 64,
d_mlp 96), and into `crates/candlelens/tests/fixtures/reference/sae.json` the inputs `x`
[n, d_in] and, per SAE, `acts_pre`, `acts_post` and `recons`, as SAELens computes them:

    x' = norm_in(x) (- b_dec if apply_b_dec_to_input)
    pre = x' @ W_enc + b_enc
    standard: relu(pre); jumprelu: relu(pre) * (pre > threshold) (strict);
    topk: the k largest entries of pre, ReLU applied to them, the rest 0
    recons = norm_out(post @ W_dec + b_dec)   (transcoders: + x @ W_skip.T, no norm, no b_dec)

Run by hand (the reference venv: numpy + safetensors); the output is committed:
    .venv-ref/bin/python scripts/make-sae-reference.py
"""
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/candlelens/tests/fixtures"
D_MODEL, D_MLP, D_SAE = 64, 96, 48
rng = np.random.default_rng(7)


def weights(d_in, d_sae, d_out):
    return {
        "W_enc": rng.normal(0, 0.3, (d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(-0.2, 0.3, (d_sae,)).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (d_sae, d_out)).astype(np.float32),
        "b_dec": rng.normal(0, 0.1, (d_out,)).astype(np.float32),
    }


def encode(w, x, arch, apply_b_dec, norm, k=None):
    x = x.astype(np.float64)
    if norm == "constant_norm_rescale":
        c = np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1, keepdims=True)
        x = x * c
    if apply_b_dec:
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        post = np.maximum(pre, 0)
    elif arch == "jumprelu":
        post = np.maximum(pre, 0) * (pre > w["threshold"])
    elif arch == "topk":
        post = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=-1)[:, :k]
        for r in range(pre.shape[0]):
            post[r, idx[r]] = np.maximum(pre[r, idx[r]], 0)
    return pre, post


def decode(w, post, x, norm):
    y = post @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        c = np.sqrt(x.shape[-1]) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
        y = y / c
    if "W_skip" in w:
        y = y + x @ w["W_skip"].T
    return y


def write(name, w, cfg):
    d = FIXTURES / "sae" / name
    d.mkdir(parents=True, exist_ok=True)
    if cfg is None:
        np.savez(d / "params.npz", **{k: v for k, v in w.items()})
    else:
        save_file({k: np.ascontiguousarray(v) for k, v in w.items()}, str(d / "sae_weights.safetensors"))
        (d / "cfg.json").write_text(json.dumps(cfg, indent=1))


def v6(arch, d_in, d_sae, hook, extra=None, apply_b_dec=True, norm="none", d_out=None):
    cfg = {
        "architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec, "normalize_activations": norm, "reshape_activations": "none",
        "metadata": {"model_name": "tiny-llama", "hook_name": hook, "hook_head_index": None,
                     "sae_lens_version": "6.18.0", "prepend_bos": False, "context_size": 16},
    }
    if d_out is not None:
        cfg["d_out"] = d_out
    cfg.update(extra or {})
    return cfg


def main():
    x = rng.normal(0, 1.0, (6, D_MODEL)).astype(np.float32)
    x_mlp = rng.normal(0, 1.0, (6, D_MODEL)).astype(np.float32)
    out = {"x": x.tolist(), "x_mlp": x_mlp.tolist(), "saes": {}}

    def record(name, w, arch, xin, apply_b_dec, norm, k=None):
        pre, post = encode(w, xin, arch, apply_b_dec, norm, k)
        rec = decode(w, post, xin, norm)
        out["saes"][name] = {"input": "x_mlp" if xin is x_mlp else "x", "acts_pre": pre.tolist(),
                             "acts_post": post.tolist(), "recons": rec.tolist(),
                             "l0": float((post > 0).sum(axis=-1).mean())}

    w = weights(D_MODEL, D_SAE, D_MODEL)
    write("standard", w, v6("standard", D_MODEL, D_SAE, "blocks.1.hook_resid_pre"))
    record("standard", w, "standard", x, True, "none")

    w = weights(D_MODEL, D_SAE, D_MODEL)
    w["threshold"] = rng.uniform(0.0, 0.4, (D_SAE,)).astype(np.float32)
    write("jumprelu", w, v6("jumprelu", D_MODEL, D_SAE, "blocks.1.hook_resid_pre", apply_b_dec=False))
    record("jumprelu", w, "jumprelu", x, False, "none")

    w = weights(D_MODEL, D_SAE, D_MODEL)
    write("topk", w, v6("topk", D_MODEL, D_SAE, "blocks.1.hook_resid_mid", {"k": 5},
                        norm="constant_norm_rescale"))
    record("topk", w, "topk", x, True, "constant_norm_rescale", k=5)

    # the pre-6 flat layout: hook at the top level, top-k through activation_fn_kwargs
    w = weights(D_MODEL, D_SAE, D_MODEL)
    write("topk_v5", w, {"architecture": "standard", "d_in": D_MODEL, "d_sae": D_SAE, "dtype": "float32",
                         "model_name": "tiny-llama", "hook_name": "blocks.0.hook_resid_post", "hook_layer": 0,
                         "hook_head_index": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
                         "apply_b_dec_to_input": False, "normalize_activations": "none",
                         "sae_lens_training_version": "5.11.0"})
    record("topk_v5", w, "topk", x, False, "none", k=3)

    # a transcoder from the MLP input (after ln2) to the MLP output, with a skip connection
    w = weights(D_MODEL, D_SAE, D_MODEL)
    w["threshold"] = rng.uniform(0.0, 0.4, (D_SAE,)).astype(np.float32)
    w["W_skip"] = rng.normal(0, 0.1, (D_MODEL, D_MODEL)).astype(np.float32)
    cfg = v6("jumprelu_skip_transcoder", D_MODEL, D_SAE, "blocks.0.ln2.hook_normalized", apply_b_dec=False, d_out=D_MODEL)
    cfg["metadata"]["hook_name_out"] = "blocks.0.hook_mlp_out"
    write("transcoder", w, cfg)
    record("transcoder", w, "jumprelu", x_mlp, False, "none")

    # Gemma Scope's raw params.npz (JumpReLU, no b_dec subtraction, no normalisation)
    w = weights(D_MODEL, D_SAE, D_MODEL)
    w["threshold"] = rng.uniform(0.0, 0.4, (D_SAE,)).astype(np.float32)
    write("gemma_scope", w, None)
    record("gemma_scope", w, "jumprelu", x, False, "none")

    path = FIXTURES / "reference" / "sae.json"
    path.write_text(json.dumps(out))
    print(f"wrote {path} and {len(out['saes'])} SAE folders")


if __name__ == "__main__":
    main()
