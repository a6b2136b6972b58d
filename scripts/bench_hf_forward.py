"""The Hugging Face side of scripts/bench-forward: median forward time of transformers on an
embedded GGUF model (dequantized to f32, eager attention), printed as JSON."""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FILES = {
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(FILES))
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = Path(os.environ.get("CANDLELENS_MODELS") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "candlelens" / "models")
    d, f = base / a.model, FILES[a.model]
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([tok(a.prompt)["input_ids"]])
    ms = []
    with torch.inference_mode():
        model(ids)
        for _ in range(a.runs):
            t = time.perf_counter()
            model(ids)
            ms.append((time.perf_counter() - t) * 1e3)
    json.dump({"median_ms": statistics.median(ms), "load_s": load_s, "n_tokens": ids.shape[1]}, sys.stdout)


if __name__ == "__main__":
    main()
