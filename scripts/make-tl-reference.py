#!/usr/bin/env python3
"""TransformerLens reference fixtures for weight processing (fold_ln, center_writing_weights,
center_unembed, fold_value_biases) and for the cache helpers built on them (direct logit
attribution). Run by hand; its output is committed; CI never runs it.

Set-up (once; no Hugging Face hub access is needed, torch from PyPI pulls ~3 GB of CUDA
libraries but runs on the CPU):

    python3 -m venv .venv-tl
    .venv-tl/bin/pip install "transformer-lens==3.9.0" safetensors numpy   # pulls torch, transformers 5.x
    .venv-tl/bin/python scripts/make-tl-reference.py                  # every family
    .venv-tl/bin/python scripts/make-tl-reference.py --family llama   # one family

It reads the tiny random checkpoints in crates/candlelens/tests/fixtures/tiny/<family>/ and
writes, for each family, crates/candlelens/tests/fixtures/tl/<family>/:

* unprocessed.safetensors: the HookedTransformer parameters (TL's names and shapes, float32,
  contiguous) of HookedTransformer.from_pretrained_no_processing.
* processed.safetensors: the same for plain HookedTransformer.from_pretrained (TL's defaults:
  fold_ln, center_writing_weights, center_unembed, fold_value_biases all True).
* fold_ln.safetensors, center_writing_weights.safetensors, center_unembed.safetensors,
  fold_value_biases.safetensors: from_pretrained with exactly one flag True (reference.json
  files.<name>.flags_passed holds the four flags exactly as passed). To keep the fixtures small
  these hold only the parameters that differ from unprocessed.safetensors, and of those only
  blocks.0.* and the non-block ones (later blocks go through the same code); every parameter not
  listed in files.<name>.changed is bit-identical to unprocessed.safetensors, and
  files.<name>.absent_vs_unprocessed lists those the flag removes (fold_ln turns LN/RMS into
  LNPre/RMSPre, which have no parameters).
* reference.json: the config as TL sees it (tl_config_unprocessed / tl_config_processed), what TL
  did with each flag (flags_applied, warnings per file), the token ids (tokens, token_a, token_b),
  and for both "processed" and "unprocessed": logits [pos][d_vocab], ln_final.hook_scale [pos],
  blocks.0.hook_resid_pre [pos][d_model], blocks.1.attn.hook_z at the last position
  [n_heads][d_head], logit_diff = logits[-1, A] - logits[-1, B], b_U_diff = b_U[A] - b_U[B], and
  the direct logit attribution of that difference at the last position: dla_heads
  (cache.stack_head_results), dla_components (cache.decompose_resid) and dla_accumulated
  (cache.accumulated_resid(incl_mid=True)), all with layer=-1, pos_slice=-1, apply_ln=True,
  projected on model.tokens_to_residual_directions(A) - ...(B) (= W_U[:, A] - W_U[:, B]).
  Floats are rounded to 6 significant digits.

Only parameters are saved (model.named_parameters()), not buffers (causal mask, IGNORE, rotary
sin/cos tables). With GQA, TL stores the key/value parameters as `_W_K`, `_W_V`, `_b_K`, `_b_V`
with shape [n_key_value_heads, ...]; the public W_K/W_V properties repeat_interleave them to
n_heads.

TransformerLens only loads models by official name, so the loader is pointed at the local tiny
checkpoint: the HF model is built here from the local directory and passed as hf_model, and
transformer_lens.loading_from_pretrained's AutoConfig / convert_hf_model_config are patched so
that the official name resolves to the tiny config (for families whose official names TL maps to a
hard-coded config, e.g. Gemma 2, the hard-coded dict is taken as the template and its sizes are
overridden from the tiny config). The TL config is asserted against the tiny config, and TL's
unprocessed logits are checked against the HF model's (max abs diff < 1e-4) before anything is
written.
"""

import argparse
import importlib.metadata
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import transformer_lens.loading_from_pretrained as tl_loading  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "candlelens" / "tests" / "fixtures"
TINY = FIXTURES / "tiny"
OUT = FIXTURES / "tl"

# Token ids fed directly (the tiny tokenizers are arbitrary); all < d_vocab (300).
TOKENS = [[1, 5, 9, 17, 33, 2, 40, 8]]
TOKEN_A, TOKEN_B = 5, 9

# Official TL name whose architecture matches the tiny checkpoint. Llama uses a Llama-architecture
# name that TL resolves through AutoConfig (its meta-llama/* names map to hard-coded 1B+ configs),
# so TL's own LlamaForCausalLM config conversion (incl. llama3 rope scaling) is what is exercised.
FAMILIES = {
    "gpt2": "gpt2",
    "llama": "01-ai/Yi-6B",
    "qwen2": "Qwen/Qwen2-0.5B",
    "gemma2": "google/gemma-2-2b",
}

FLAG_NAMES = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]
NO_FLAGS = {k: False for k in FLAG_NAMES}

CFG_FIELDS = [
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "n_key_value_heads",
    "act_fn", "normalization_type", "positional_embedding_type", "eps", "rotary_base",
    "rotary_dim", "rotary_adjacent_pairs", "use_NTK_by_parts_rope", "NTK_by_parts_factor",
    "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor", "NTK_original_ctx_len",
    "gated_mlp", "final_rms", "parallel_attn_mlp", "use_attn_scale", "attn_scale",
    "use_local_attn", "window_size", "attn_types", "attn_scores_soft_cap",
    "output_logits_soft_cap", "use_normalization_before_and_after", "rmsnorm_uses_offset",
    "scale_attn_by_inverse_layer_idx", "use_qk_norm", "tie_word_embeddings",
    "original_architecture",
]


def sig6(x):
    """Round to 6 significant digits (keeps the JSON small)."""
    if isinstance(x, list):
        return [sig6(v) for v in x]
    return float(f"{float(x):.6g}")


def tolist6(t):
    return sig6(t.detach().double().cpu().tolist())


def jsonable(v):
    if isinstance(v, torch.dtype):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return v


def family_overrides(family, hf_cfg):
    """Fields to force on TL's cfg_dict for names TL maps to a hard-coded config."""
    if family != "gemma2":
        return {}
    lt = hf_cfg.layer_types
    return {
        "d_model": hf_cfg.hidden_size,
        "d_head": hf_cfg.head_dim,
        "n_heads": hf_cfg.num_attention_heads,
        "d_mlp": hf_cfg.intermediate_size,
        "n_layers": hf_cfg.num_hidden_layers,
        "n_ctx": hf_cfg.max_position_embeddings,
        "eps": hf_cfg.rms_norm_eps,
        "d_vocab": hf_cfg.vocab_size,
        "act_fn": hf_cfg.hidden_activation,
        "n_key_value_heads": hf_cfg.num_key_value_heads,
        "rotary_base": hf_cfg.rope_parameters["rope_theta"],
        "window_size": hf_cfg.sliding_window,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in lt],
        "attn_scores_soft_cap": hf_cfg.attn_logit_softcapping,
        "output_logits_soft_cap": hf_cfg.final_logit_softcapping,
        # TL's Gemma-2 27B entry does the same: scores are scaled by 1/sqrt(query_pre_attn_scalar).
        "attn_scale": math.sqrt(hf_cfg.query_pre_attn_scalar),
    }


class _LocalAutoConfig:
    hf_cfg = None

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls.hf_cfg


def install_patches(family, hf_cfg):
    """Make TL's official-name config lookup return the tiny config."""
    if family == "gpt2" and not hasattr(hf_cfg, "n_ctx"):
        # The hub's gpt2 config.json carries the legacy field n_ctx (= n_positions), which TL
        # reads; transformers 5 no longer writes it, so the tiny config lacks it.
        hf_cfg.n_ctx = hf_cfg.n_positions
    _LocalAutoConfig.hf_cfg = hf_cfg
    tl_loading.AutoConfig = _LocalAutoConfig
    orig = getattr(install_patches, "_orig", None) or tl_loading.convert_hf_model_config
    install_patches._orig = orig

    def convert(model_name, **kwargs):
        d = orig(model_name, **kwargs)
        d.update(family_overrides(family, hf_cfg))
        return d

    tl_loading.convert_hf_model_config = convert


def check_cfg(family, cfg, hf_cfg):
    """Assert the TL config really is the tiny config."""
    g = lambda *names, default=None: next(  # noqa: E731
        (getattr(hf_cfg, n) for n in names if getattr(hf_cfg, n, None) is not None), default
    )
    n_heads = g("num_attention_heads", "n_head")
    d_model = g("hidden_size", "n_embd")
    want = {
        "n_layers": g("num_hidden_layers", "n_layer"),
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": g("head_dim", default=d_model // n_heads),
        "d_mlp": g("intermediate_size", "n_inner", default=4 * d_model),
        "d_vocab": hf_cfg.vocab_size,
        "n_ctx": g("max_position_embeddings", "n_positions"),
        "eps": g("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"),
    }
    kv = g("num_key_value_heads", default=n_heads)
    if family == "qwen2":  # TL keeps n_key_value_heads even when == n_heads for Qwen2
        want["n_key_value_heads"] = kv
    else:
        want["n_key_value_heads"] = kv if kv != n_heads else None
    rp = getattr(hf_cfg, "rope_parameters", None) or {}
    if "rope_theta" in rp:
        want["rotary_base"] = rp["rope_theta"]
    if rp.get("rope_type") == "llama3":
        want.update(
            use_NTK_by_parts_rope=True,
            NTK_by_parts_factor=rp["factor"],
            NTK_by_parts_low_freq_factor=rp["low_freq_factor"],
            NTK_by_parts_high_freq_factor=rp["high_freq_factor"],
            NTK_original_ctx_len=rp["original_max_position_embeddings"],
        )
    bad = {k: (getattr(cfg, k), v) for k, v in want.items() if getattr(cfg, k) != v}
    assert not bad, f"{family}: TL cfg differs from the tiny config (tl, tiny): {bad}"


def load_hf(family):
    d = TINY / family
    hf_cfg = AutoConfig.from_pretrained(d)
    hf_cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_pretrained(
        d, config=hf_cfg, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return hf_cfg, model


def load_tl(family, official, hf_model, flags):
    # A fresh tokenizer per load: TL mutates the one it is given. It is never used to tokenize
    # (token ids are fed directly); it only spares TL a hub look-up.
    tok = AutoTokenizer.from_pretrained(TINY / family)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = HookedTransformer.from_pretrained(
            official,
            hf_model=hf_model,
            tokenizer=tok,
            device="cpu",
            dtype=torch.float32,
            **flags,
        )
    logging.getLogger().removeHandler(handler)
    # TL's own warnings (logging.warning and warnings.warn), less its deprecation notice for
    # HookedTransformer.from_pretrained itself.
    msgs = [r.getMessage() for r in records] + [
        str(w.message) for w in caught
        if not issubclass(w.category, DeprecationWarning)
    ]
    for m in msgs:
        print(f"   TL warning: {m}")
    model.eval()
    return model, msgs


def params(model):
    return {k: v.detach().float().contiguous().clone() for k, v in model.named_parameters()}


def save(tensors, path, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)  # safetensors writes 0600


def analyse(model):
    """Logits, selected activations and direct logit attribution for TOKENS."""
    toks = torch.tensor(TOKENS)
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
        direction = (
            model.tokens_to_residual_directions(TOKEN_A)
            - model.tokens_to_residual_directions(TOKEN_B)
        )

        def project(stack_labels):
            stack, labels = stack_labels
            # stack: [components, batch, d_model] (pos sliced to the last position)
            vals = (stack[:, 0, :] @ direction).tolist()
            return {"labels": labels, "values": sig6(vals)}

        heads = project(cache.stack_head_results(
            layer=-1, pos_slice=-1, apply_ln=True, return_labels=True))
        comps = project(cache.decompose_resid(
            layer=-1, pos_slice=-1, apply_ln=True, return_labels=True))
        accum = project(cache.accumulated_resid(
            layer=-1, incl_mid=True, pos_slice=-1, apply_ln=True, return_labels=True))
    b_U = model.unembed.b_U
    return {
        "logits": tolist6(logits[0]),
        "ln_final.hook_scale": tolist6(cache["ln_final.hook_scale"][0, :, 0]),
        "blocks.0.hook_resid_pre": tolist6(cache["blocks.0.hook_resid_pre"][0]),
        "blocks.1.attn.hook_z_last": tolist6(cache["blocks.1.attn.hook_z"][0, -1]),
        "logit_diff": sig6((logits[0, -1, TOKEN_A] - logits[0, -1, TOKEN_B]).item()),
        "b_U_diff": sig6((b_U[TOKEN_A] - b_U[TOKEN_B]).item()),
        "dla_heads": heads,
        "dla_components": comps,
        "dla_accumulated": accum,
    }, logits


def tl_cfg_dict(cfg):
    return {k: jsonable(getattr(cfg, k, None)) for k in CFG_FIELDS}


def run_family(family):
    official = FAMILIES[family]
    print(f"== {family} (as {official})")
    hf_cfg, hf_model = load_hf(family)
    install_patches(family, hf_cfg)

    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(TOKENS)).logits.float()

    out = OUT / family
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "family": family,
        "tl_official_name_used": official,
        "tiny_checkpoint": f"tests/fixtures/tiny/{family}",
        "versions": {
            "transformer_lens": importlib.metadata.version("transformer-lens"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "tokens": TOKENS,
        "token_a": TOKEN_A,
        "token_b": TOKEN_B,
        "files": {},
    }

    # 1. Unprocessed. HookedTransformer.from_pretrained_no_processing passes all four flags False.
    unproc, w_un = load_tl(family, official, hf_model, NO_FLAGS)
    check_cfg(family, unproc.cfg, hf_cfg)
    diff = (unproc(torch.tensor(TOKENS)).float() - hf_logits).abs().max().item()
    print(f"   TL unprocessed vs HF logits: max abs diff {diff:.3g}")
    assert diff < 1e-4, f"{family}: TL load does not match HF ({diff})"
    report["tl_vs_hf_max_abs_logit_diff_unprocessed"] = diff
    un_params = params(unproc)
    report["tl_config_unprocessed"] = tl_cfg_dict(unproc.cfg)
    report["unprocessed"], _ = analyse(unproc)
    save(un_params, out / "unprocessed.safetensors", {"flags": NO_FLAGS})
    report["files"]["unprocessed.safetensors"] = {
        "flags_passed": NO_FLAGS, "content": "all parameters", "warnings": w_un,
    }

    # 2. Processed with TL's defaults.
    default_flags = {k: True for k in FLAG_NAMES}
    proc, w_proc = load_tl(family, official, hf_model, {})
    check_cfg(family, proc.cfg, hf_cfg)
    p_params = params(proc)
    report["tl_config_processed"] = tl_cfg_dict(proc.cfg)
    report["processed"], p_logits = analyse(proc)
    lp_diff = (
        torch.log_softmax(p_logits.float(), -1) - torch.log_softmax(hf_logits, -1)
    ).abs().max().item()
    report["processed_vs_hf_max_abs_logprob_diff"] = lp_diff
    print(f"   TL processed vs HF log-probs: max abs diff {lp_diff:.3g}")
    save(p_params, out / "processed.safetensors", {"flags": default_flags})
    report["files"]["processed.safetensors"] = {
        "flags_passed": "defaults of HookedTransformer.from_pretrained (all four True)",
        "content": "all parameters", "warnings": w_proc,
    }

    # 3. One flag at a time; store only the tensors that change.
    for flag in FLAG_NAMES:
        flags = dict(NO_FLAGS, **{flag: True})
        m, w = load_tl(family, official, hf_model, flags)
        mp = params(m)
        changed = {}
        unchanged = []
        for k, v in mp.items():
            if k in un_params and v.shape == un_params[k].shape and torch.equal(v, un_params[k]):
                unchanged.append(k)
            else:
                changed[k] = v
        missing = sorted(set(un_params) - set(mp))
        # Size: keep block 0 and the non-block tensors; later blocks go through the same code.
        stored = {k: v for k, v in changed.items() if not k.startswith("blocks.") or
                  k.startswith("blocks.0.")}
        fname = f"{flag}.safetensors"
        save(stored, out / fname, {"flags": flags})
        lp = (
            torch.log_softmax(m(torch.tensor(TOKENS)).float(), -1)
            - torch.log_softmax(hf_logits, -1)
        ).abs().max().item()
        report["files"][fname] = {
            "flags_passed": flags,
            "normalization_type_after": m.cfg.normalization_type,
            "content": "the parameters that differ from unprocessed.safetensors, "
                       "restricted to blocks.0.* and the non-block parameters",
            "changed": sorted(changed),
            "stored": sorted(stored),
            "unchanged": sorted(unchanged),
            "absent_vs_unprocessed": missing,
            "max_abs_logprob_diff_vs_hf": lp,
            "warnings": w,
        }
        print(f"   {flag}: {len(changed)} tensors changed, {len(missing)} absent; "
              f"log-prob diff vs HF {lp:.3g}")

    report["flags_applied"] = describe_applied(report, p_params, un_params)
    report["flags_applied"]["notes"] = flag_notes(unproc.cfg)

    # One top-level key per line, each value compact.
    body = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}"
                       for k, v in report.items())
    (out / "reference.json").write_text("{\n" + body + "\n}\n")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"   wrote {out.relative_to(ROOT)} ({total / 1e6:.2f} MB)")


def describe_applied(report, p_params, un_params):
    """Whether each single-flag load changed anything (TL silently skips some flags)."""
    applied = {}
    for flag in FLAG_NAMES:
        ch = report["files"][f"{flag}.safetensors"]["changed"]
        applied[flag] = {"changed_anything": bool(ch), "changed_tensors": ch}
    applied["defaults_changed_tensors"] = sorted(
        k for k in p_params if k not in un_params or not torch.equal(p_params[k], un_params[k])
    )
    return applied


def flag_notes(cfg):
    """What TL 3.9 does with each flag for this config (from its source, checked by the files)."""
    rms = cfg.normalization_type in ("RMS", "RMSPre")
    softcap = cfg.output_logits_soft_cap is not None and cfg.output_logits_soft_cap > 0
    has_bias = cfg.original_architecture in ("GPT2LMHeadModel", "Qwen2ForCausalLM")
    return {
        "fold_ln": (
            "applied; RMS -> RMSPre: norm weights multiplied into the reading weights, no bias "
            "folding, no centering" if rms else
            "applied; LN -> LNPre: ln weights/biases folded into the reading weights/biases, "
            "then reading weights centered over d_model"
        ),
        "center_writing_weights": (
            "silently skipped (TL centers writing weights only for LN/LNPre models without "
            "final_rms)" if rms else "applied"
        ),
        "center_unembed": (
            "skipped with a warning (output logit softcap)" if softcap else "applied"
        ),
        "fold_value_biases": (
            "applied" if has_bias else
            "applied, but a no-op: the model has no value biases (TL's b_V are zeros)"
        ),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES))
    args = ap.parse_args()
    failed = []
    for fam in args.family or list(FAMILIES):
        try:
            run_family(fam)
        except Exception as e:  # report and go on with the other families
            import traceback

            traceback.print_exc()
            print(f"!! {fam} skipped: {type(e).__name__}: {e}")
            failed.append(fam)
    if failed:
        print(f"skipped: {failed}")
        sys.exit(1 if set(failed) & {"gpt2", "llama"} else 0)


if __name__ == "__main__":
    main()
