#!/usr/bin/env python3
"""Reference numbers from Hugging Face transformers, written as small JSON fixtures that the Rust
tests compare against. Run by hand; its output is committed; CI never runs it.

Set-up (once; torch from PyPI pulls ~3 GB of CUDA libraries but runs on the CPU):

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch transformers gguf numpy accelerate
    scripts/fetch-models
    .venv-ref/bin/python scripts/make-reference.py            # everything
    .venv-ref/bin/python scripts/make-reference.py --only gguf   # or: tiny
    .venv-ref/bin/python scripts/make-reference.py --family neox # one tiny family

What it writes (under crates/candlelens/tests/fixtures/):

* reference/<alias>.json for the two embedded GGUF models (SmolLM2-135M, Gemma 3 270M), loaded
  with transformers' own GGUF support (weights dequantized to f32, eager attention): for prompts
  of the four source experiments' kinds, the token ids, the top-20 raw final-position logits, the
  residual stream entering every block at the last position, the final normalised residual, the
  layer-0 attention pattern, the loss; plus tokenizer cases.
* tiny/<family>/ : a tiny random checkpoint per family (config.json, model.safetensors,
  tokenizer.json) saved by transformers, and reference.json with the logits at every real
  position, every resid_pre / resid_post and every attention pattern, for a right-padded batch.

Two deliberate deviations from transformers' GGUF loading, both to match the real models:
* SmolLM2: transformers builds its tokenizer from GGUF as a plain GPT-2 byte-level BPE, but the
  model's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct) pre-tokenizes with
  Digits(individual_digits=True) before ByteLevel; we set that pre-tokenizer.
* Gemma 3: GGUF metadata lacks the local RoPE base and the sliding-window pattern; the config is
  checked against google/gemma-3-270m's and corrected where it differs (printed).
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "candlelens" / "tests" / "fixtures"

PROMPTS = [
    "1 2 3 4",
    "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is",
    "Is Paris the capital of France?\n",
    "Answer the question based on the context below. Keep the answer short.\n"
    "Context: Leo lives in the capital city of Vietnam.\nDean lives in the capital city of Peru.\n"
    "Question: Which city does Dean live in?\nAnswer: Dean lives in the city of",
    "engineering students are typically",
]
PATTERN_PROMPTS = {0, 2, 4}
LOSS_PROMPTS = {0, 1}

TOKENIZER_CASES = [
    "12345", "3.14159", "2024-11-22", "a  b   c    d", "  leading spaces", "trailing spaces   ",
    "line one\nline two", "tab\there", "\n\n", "para\n\n\nnext", "café naïve Zürich", "日本語のテキスト",
    "Привет мир", "emoji 😀👍🏽 end", "!!!???...", 'fn main() { println!("hi"); }',
    "don't it's we'll THEY'RE", "the <bos> token", "<|endoftext|> and <|im_start|>", "", " ",
    "Hello, world!", "  ", "x=1+2*3", "https://example.com/a?b=c", "ﬁ ligature and é vs é",
    "ALL CAPS SENTENCE", "MiXeD cAsE", "100% of 7 = 0.07", "tabs\t\tand\r\nwindows",
]


def models_dir() -> Path:
    if os.environ.get("CANDLELENS_MODELS"):
        return Path(os.environ["CANDLELENS_MODELS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "candlelens" / "models"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _f32(x: float) -> float:
    """The shortest decimal that round-trips the float32 value (keeps the JSON small)."""
    return float(str(np.float32(x)))


def _map(v):
    return [_map(x) for x in v] if isinstance(v, list) else _f32(v)


def floats(t: torch.Tensor):
    return [_f32(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def nested(t: torch.Tensor):
    return _map(t.detach().to(torch.float32).tolist())


def smollm2_pretokenizer(tok):
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return "pre_tokenizer set to Sequence[Digits(individual), ByteLevel(no prefix space)] as in the hub tokenizer.json"


def gemma3_config_fix(cfg):
    """Checks the GGUF-derived config against google/gemma-3-270m's and corrects it."""
    notes = []
    want = {
        "sliding_window": 512,
        "query_pre_attn_scalar": 256,
        "head_dim": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "hidden_size": 640,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    }
    for k, v in want.items():
        if getattr(cfg, k, None) != v:
            notes.append(f"{k}: {getattr(cfg, k, None)!r} -> {v!r}")
            setattr(cfg, k, v)
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    if list(getattr(cfg, "layer_types", []) or []) != layer_types:
        notes.append(f"layer_types: {getattr(cfg, 'layer_types', None)!r} -> every 6th full")
        cfg.layer_types = layer_types
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "sliding_attention" in rp:
        if rp["sliding_attention"].get("rope_theta") != 10000.0:
            notes.append(f"rope_parameters.sliding_attention.rope_theta: {rp['sliding_attention'].get('rope_theta')} -> 10000")
            rp["sliding_attention"]["rope_theta"] = 10000.0
        if rp["full_attention"].get("rope_theta") != 1000000.0:
            notes.append(f"rope_parameters.full_attention.rope_theta: {rp['full_attention'].get('rope_theta')} -> 1e6")
            rp["full_attention"]["rope_theta"] = 1000000.0
    else:
        if getattr(cfg, "rope_local_base_freq", None) != 10000.0:
            notes.append(f"rope_local_base_freq: {getattr(cfg, 'rope_local_base_freq', None)} -> 10000")
            cfg.rope_local_base_freq = 10000.0
        if getattr(cfg, "rope_theta", None) != 1000000.0:
            notes.append(f"rope_theta: {getattr(cfg, 'rope_theta', None)} -> 1e6")
            cfg.rope_theta = 1000000.0
    return notes


def config_summary(cfg):
    keys = [
        "model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_theta", "rope_local_base_freq",
        "rope_parameters", "sliding_window", "layer_types", "query_pre_attn_scalar", "tie_word_embeddings",
        "hidden_act", "hidden_activation", "final_logit_softcapping", "attn_logit_softcapping",
    ]
    out = {}
    for k in keys:
        if hasattr(cfg, k):
            v = getattr(cfg, k)
            try:
                json.dumps(v)
            except TypeError:
                v = repr(v)
            out[k] = v
    return out


def gguf_reference(alias: str, file: str):
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d = models_dir() / alias
    path = d / file
    if not path.exists():
        raise SystemExit(f"{path} missing: run scripts/fetch-models first")
    notes = []
    tok = AutoTokenizer.from_pretrained(d, gguf_file=file)
    cfg = AutoConfig.from_pretrained(d, gguf_file=file)
    if alias == "smollm2-135m":
        notes.append(smollm2_pretokenizer(tok))
    if alias == "gemma-3-270m":
        fixes = gemma3_config_fix(cfg)
        notes.extend(f"config corrected: {f}" for f in fixes)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=file, config=cfg, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(alias, json.dumps(config_summary(model.config), default=str))
    for n in notes:
        print("  note:", n)

    prompts = []
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok(text)["input_ids"]
            ids_ns = tok(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            out = model(x, output_hidden_states=True, output_attentions=True)
            last = out.logits[0, -1]
            top = torch.topk(last, 20)
            hs = out.hidden_states
            n_layers = model.config.num_hidden_layers
            entry = {
                "text": text,
                "token_ids": ids,
                "token_ids_no_special": ids_ns,
                "str_tokens": tok.convert_ids_to_tokens(ids),
                "top_k": [{"id": int(j), "logit": float(v)} for v, j in zip(top.values, top.indices)],
                "logsumexp_last": float(torch.logsumexp(last.double(), 0)),
                "resid_pre": [floats(hs[l][0, -1]) for l in range(n_layers)],
                "final_normed": floats(hs[n_layers][0, -1]),
            }
            if i in PATTERN_PROMPTS:
                entry["attn_pattern_layer0"] = nested(out.attentions[0][0])
            if i in LOSS_PROMPTS:
                entry["loss"] = float(model(x, labels=x).loss)
            prompts.append(entry)
            top3 = [(tok.convert_ids_to_tokens([t["id"]])[0], round(t["logit"], 3)) for t in entry["top_k"][:3]]
            print(f"  {text[:40]!r}: {len(ids)} tokens, top-3 {top3}, loss {entry.get('loss')}")

    cases = []
    for text in TOKENIZER_CASES:
        ids = tok(text)["input_ids"]
        ids_ns = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {"text": text, "ids": ids, "ids_no_special": ids_ns, "decoded": tok.decode(ids_ns)}
        )

    doc = {
        "model": alias,
        "gguf_file": file,
        "gguf_sha256": sha256(path),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "config": config_summary(model.config),
        "notes": notes,
        "prompts": prompts,
        "tokenizer_cases": cases,
    }
    out = FIXTURES / "reference" / f"{alias}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    print(f"  wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


# ----- tiny random checkpoints --------------------------------------------------------------

TINY_CORPUS = [
    "The pet of this family is Fido. Rachel is a human. Pebbles is a cat.",
    "Is Paris the capital of France? Yes. Is Rome in Spain? No.",
    "Answer the question based on the context below. Keep the answer short.",
    "1 2 3 4 5 6 7 8 9 10 11 12",
    "engineering students are typically men; nursing students are typically women.",
]
TINY_PROMPTS = [
    "The pet of this family is",
    "Is Paris the capital of France?",
]


def tiny_tokenizer(bos: str, eos: str, pad: str, add_bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    specials = list(dict.fromkeys([pad, eos, bos]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(TINY_CORPUS, trainer)
    if add_bos:
        bos_id = tk.token_to_id(bos)
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tk


def randomise(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "ln_f" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))


def decoder_layers(model):
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    if hasattr(model, "gpt_neox"):
        return model.gpt_neox.layers
    return model.transformer.h


def tiny_reference(family: str, model, tk, save_dtype, prepend_bos_id=None):
    """Saves the checkpoint, reloads it in f32 and records the reference. `prepend_bos_id`:
    a BOS id put before every prompt by hand (GPT-2 / GPT-J, as TransformerLens does)."""
    from transformers import AutoModelForCausalLM

    out_dir = FIXTURES / "tiny" / family
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(save_dtype).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    tk.save(str(out_dir / "tokenizer.json"))
    # the reference runs on the saved checkpoint, converted to f32, as the Rust loader does
    ref = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    rows = [([prepend_bos_id] if prepend_bos_id is not None else []) + tk.encode(p).ids for p in TINY_PROMPTS]
    n = max(len(r) for r in rows)
    pad = getattr(ref.config, "pad_token_id", None) or 0
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    pre, post = {}, {}
    layers = decoder_layers(ref)
    hooks = []
    for l, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, args, kwargs, l=l: pre.__setitem__(l, (args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True))
        hooks.append(layer.register_forward_hook(
            lambda m, args, out, l=l: post.__setitem__(l, (out[0] if isinstance(out, tuple) else out).clone())))
    with torch.no_grad():
        out = ref(ids, attention_mask=mask, output_attentions=True)
    for h in hooks:
        h.remove()
    doc = {
        "family": family,
        "prompts": TINY_PROMPTS,
        "token_ids": rows,
        "config": config_summary(ref.config),
        "logits": [nested(out.logits[b, : len(r)]) for b, r in enumerate(rows)],
        "resid_pre": [[nested(pre[l][b, : len(r)]) for b, r in enumerate(rows)] for l in range(len(layers))],
        "resid_post": [[nested(post[l][b, : len(r)]) for b, r in enumerate(rows)] for l in range(len(layers))],
        "patterns": [
            [nested(out.attentions[l][b, :, : len(r), : len(r)]) for b, r in enumerate(rows)]
            for l in range(len(layers))
        ],
    }
    (out_dir / "reference.json").write_text(json.dumps(doc, separators=(",", ":")))
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"tiny {family}: {[len(r) for r in rows]} tokens, {size / 1e3:.0f} kB in {out_dir}")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    tk = tiny_tokenizer("<|begin_of_text|>", "<|end_of_text|>", "<pad>")
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        bos_token_id=tk.token_to_id("<|begin_of_text|>"), eos_token_id=tk.token_to_id("<|end_of_text|>"),
        pad_token_id=tk.token_to_id("<pad>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    randomise(model, 1)
    tiny_reference("llama", model, tk, torch.bfloat16)


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tk = tiny_tokenizer("<bos>", "<eos>", "<pad>")
    cfg = Gemma3TextConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        bos_token_id=tk.token_to_id("<bos>"), eos_token_id=tk.token_to_id("<eos>"),
        pad_token_id=tk.token_to_id("<pad>"),
    )
    if hasattr(cfg, "rope_parameters") and isinstance(cfg.rope_parameters, dict) and "sliding_attention" in cfg.rope_parameters:
        cfg.rope_parameters["full_attention"]["rope_theta"] = 1000000.0
        cfg.rope_parameters["sliding_attention"]["rope_theta"] = 10000.0
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    randomise(model, 2)
    tiny_reference("gemma3", model, tk, torch.float16)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tk.get_vocab_size(), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                     activation_function="gelu_new", bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    randomise(model, 3)
    tiny_reference("gpt2", model, tk, torch.float32, prepend_bos_id=eot)


def tiny_gptj():
    from transformers import GPTJConfig, GPTJForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = GPTJConfig(vocab_size=tk.get_vocab_size(), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                     rotary_dim=8, activation_function="gelu_new", tie_word_embeddings=False,
                     bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = GPTJForCausalLM(cfg)
    randomise(model, 4)
    tiny_reference("gptj", model, tk, torch.bfloat16, prepend_bos_id=eot)


def tiny_neox():
    """GPT-NeoX / Pythia: parallel attention + MLP with two LayerNorms, partial rotate-half rotary
    (a quarter of each head), fused per-head q/k/v with biases."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = GPTNeoXConfig(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=256,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                        hidden_act="gelu", tie_word_embeddings=False, bos_token_id=eot,
                        eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg)
    randomise(model, 9)
    tiny_reference("neox", model, tk, torch.float32, prepend_bos_id=eot)


def tiny_mistral():
    """Mistral: Llama with a sliding window on every layer, here shorter than the prompts."""
    from transformers import MistralConfig, MistralForCausalLM

    tk = tiny_tokenizer("<s>", "</s>", "<unk>")
    cfg = MistralConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, sliding_window=5, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=tk.token_to_id("<s>"), eos_token_id=tk.token_to_id("</s>"),
        pad_token_id=tk.token_to_id("<unk>"),
    )
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg)
    randomise(model, 10)
    tiny_reference("mistral", model, tk, torch.bfloat16)


def tiny_gpt_neo():
    """GPT-Neo: learned positions, global and local (window 4, shorter than the prompts) layers
    alternating, unscaled attention scores, q/k/v without biases."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = GPTNeoConfig(vocab_size=tk.get_vocab_size(), max_position_embeddings=64, hidden_size=64,
                       num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                       window_size=4, intermediate_size=128, activation_function="gelu_new",
                       bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(cfg)
    randomise(model, 11)
    # randomise() scales by 1/sqrt(fan_in); unscaled scores would saturate the softmax
    with torch.no_grad():
        for layer in model.transformer.h:
            layer.attn.attention.q_proj.weight.mul_(0.25)
    tiny_reference("gpt_neo", model, tk, torch.float32, prepend_bos_id=eot)


def tiny_phi():
    """Phi-2: one LayerNorm feeding parallel attention and MLP, partial rotate-half rotary (0.4 of
    each head), biases on q/k/v/dense/fc1/fc2 and on the unembedding."""
    from transformers import PhiConfig, PhiForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = PhiConfig(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                    partial_rotary_factor=0.4, hidden_act="gelu_new", tie_word_embeddings=False,
                    bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(0)
    model = PhiForCausalLM(cfg)
    randomise(model, 12)
    tiny_reference("phi", model, tk, torch.float32, prepend_bos_id=eot)


def tiny_phi3():
    """Phi-3 / Phi-4-mini: Llama with fused qkv_proj and gate_up_proj, a sliding window on every
    layer, partial rotary (Phi-4-mini rotates 3/4 of each head)."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tk = tiny_tokenizer("<s>", "<|endoftext|>", "<unk>")
    cfg = Phi3Config(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=256, original_max_position_embeddings=256, partial_rotary_factor=0.75,
                     rms_norm_eps=1e-5, sliding_window=6, tie_word_embeddings=False,
                     bos_token_id=tk.token_to_id("<s>"), eos_token_id=tk.token_to_id("<|endoftext|>"),
                     pad_token_id=tk.token_to_id("<unk>"))
    torch.manual_seed(0)
    model = Phi3ForCausalLM(cfg)
    randomise(model, 13)
    tiny_reference("phi3", model, tk, torch.bfloat16)


def tiny_olmo2():
    """OLMo 2: no norms before attention and MLP, RMSNorms on their outputs, q and k normalised
    over all heads at once before rotary."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|pad|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = Olmo2Config(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=eot, pad_token_id=tk.token_to_id("<|pad|>"))
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(cfg)
    randomise(model, 14)
    tiny_reference("olmo2", model, tk, torch.bfloat16, prepend_bos_id=eot)


def tiny_mixtral():
    """Mixtral: Mistral's attention, a sparse MoE MLP (4 experts, top 2, renormalised)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tk = tiny_tokenizer("<s>", "</s>", "<unk>")
    cfg = MixtralConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, sliding_window=None, num_local_experts=4, num_experts_per_tok=2,
        tie_word_embeddings=False, bos_token_id=tk.token_to_id("<s>"),
        eos_token_id=tk.token_to_id("</s>"), pad_token_id=tk.token_to_id("<unk>"),
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg)
    randomise(model, 15)
    tiny_reference("mixtral", model, tk, torch.bfloat16)


def tiny_qwen2_moe():
    """Qwen 2 MoE (Qwen1.5-MoE): 4 experts, top 2 without renormalising, and a shared expert of
    its own width behind a sigmoid gate; q/k/v biases."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|im_end|>", "<|endoftext|>", add_bos=False)
    cfg = Qwen2MoeConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96,
        moe_intermediate_size=32, shared_expert_intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=tk.token_to_id("<|im_end|>"),
        pad_token_id=tk.token_to_id("<|endoftext|>"),
    )
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(cfg)
    randomise(model, 16)
    tiny_reference("qwen2_moe", model, tk, torch.bfloat16)


def tiny_qwen3_moe():
    """Qwen 3 MoE: per-head q/k norms, 8 experts, top 3, renormalised; no shared expert."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|im_end|>", "<|endoftext|>", add_bos=False)
    cfg = Qwen3MoeConfig(
        vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96,
        moe_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
        num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], use_sliding_window=False, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tk.token_to_id("<|im_end|>"),
        pad_token_id=tk.token_to_id("<|endoftext|>"),
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(cfg)
    randomise(model, 17)
    tiny_reference("qwen3_moe", model, tk, torch.bfloat16)


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
                      bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    randomise(model, 5)
    tiny_reference("qwen2", model, tk, torch.bfloat16)


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tk = tiny_tokenizer("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", add_bos=False)
    eot = tk.token_to_id("<|endoftext|>")
    cfg = Qwen3Config(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                      rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
                      bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    randomise(model, 6)
    tiny_reference("qwen3", model, tk, torch.float32)


def tiny_gemma():
    from transformers import GemmaConfig, GemmaForCausalLM

    tk = tiny_tokenizer("<bos>", "<eos>", "<pad>")
    cfg = GemmaConfig(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                      hidden_act="gelu_pytorch_tanh", bos_token_id=tk.token_to_id("<bos>"),
                      eos_token_id=tk.token_to_id("<eos>"), pad_token_id=tk.token_to_id("<pad>"))
    torch.manual_seed(0)
    model = GemmaForCausalLM(cfg)
    randomise(model, 7)
    tiny_reference("gemma", model, tk, torch.bfloat16)


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tk = tiny_tokenizer("<bos>", "<eos>", "<pad>")
    cfg = Gemma2Config(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                       sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                       final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh",
                       bos_token_id=tk.token_to_id("<bos>"), eos_token_id=tk.token_to_id("<eos>"),
                       pad_token_id=tk.token_to_id("<pad>"))
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    randomise(model, 8)
    tiny_reference("gemma2", model, tk, torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["gguf", "tiny"], help="write only one kind of fixture")
    ap.add_argument("--family", help="write only this tiny family's fixture (e.g. neox)")
    args = ap.parse_args()
    if args.family:
        torch.set_grad_enabled(False)
        globals()[f"tiny_{args.family}"]()
        return
    torch.set_grad_enabled(False)
    if args.only in (None, "gguf"):
        gguf_reference("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
        gguf_reference("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf")
    if args.only in (None, "tiny"):
        tiny_gpt2()
        tiny_gptj()
        tiny_neox()
        tiny_llama()
        tiny_mistral()
        tiny_gpt_neo()
        tiny_phi()
        tiny_phi3()
        tiny_olmo2()
        tiny_mixtral()
        tiny_qwen2_moe()
        tiny_qwen3_moe()
        tiny_qwen2()
        tiny_qwen3()
        tiny_gemma()
        tiny_gemma2()
        tiny_gemma3()


if __name__ == "__main__":
    main()
