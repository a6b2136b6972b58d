#!/usr/bin/env python3
"""The part of SAELens's release table (`sae_lens/pretrained_saes.yaml`) that Candlelens can
load: releases in SAELens's own format or Gemma Scope's (conversion `sae_lens`, `gemma_2`,
`gemma_3`) for models Candlelens runs. Writes data/sae/releases.json (release -> repo, model,
format, config overrides, and per SAE its id, folder, L0, Neuronpedia id and norm scaling factor). SAELens is MIT-licensed
(data/sae/LICENSE-SAELens).

Run by hand with the yaml of a SAELens checkout (the table is versioned there, not fetched by
CI):
    .venv-ref/bin/python scripts/make-sae-releases.py path/to/pretrained_saes.yaml VERSION
"""
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FORMATS = {None: "sae_lens", "sae_lens": "sae_lens", "gemma_2": "gemma_scope", "gemma_3": "gemma_scope_2"}
# SAELens's model names of the families Candlelens loads
MODELS = ("gpt2-small", "gemma-2-2b", "gemma-2-9b", "gemma-2b", "google/gemma-3-270m", "google/gemma-3-1b",
          "pythia-70m-deduped", "meta-llama/Llama-3.1-8B", "mistral-7b")


def main(path, version):
    table = yaml.safe_load(Path(path).read_text())
    out = {"saelens_version": version, "releases": {}}
    for name, r in table.items():
        fmt = FORMATS.get(r.get("conversion_func"))
        if fmt is None or r.get("model") not in MODELS or not isinstance(r.get("saes"), list):
            continue
        saes = []
        for s in r["saes"]:
            if not isinstance(s, dict) or "id" not in s or "path" not in s:
                continue  # the table has a few malformed entries; SAELens skips them too
            e = {"id": s["id"], "path": s["path"]}
            for k in ("l0", "neuronpedia", "norm_scaling_factor"):
                if s.get(k) is not None:
                    e[k] = s[k]
            saes.append(e)
        rel = {"repo_id": r["repo_id"], "model": r["model"], "format": fmt, "saes": saes}
        if r.get("config_overrides"):
            rel["config_overrides"] = r["config_overrides"]
        out["releases"][name] = rel
    dest = ROOT / "data/sae/releases.json"
    dest.write_text(json.dumps(out, separators=(",", ":")))
    n = sum(len(r["saes"]) for r in out["releases"].values())
    print(f"wrote {dest}: {len(out['releases'])} releases, {n} SAEs")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
