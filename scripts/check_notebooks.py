"""Checks that every notebook pair is in sync (see notebooks/jupytext.toml): each
notebooks/<name>.rs (jupytext percent format, the source a maintainer edits) has a
notebooks/<name>.ipynb with the same cells and the same `candlelens` metadata, and the reverse.
Exits non-zero with the command that fixes a drift. Run by scripts/test."""

import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def cells(nb):
    return [(c.cell_type, c.source.strip("\n")) for c in nb.cells]


def main():
    problems = []
    rs = {p.stem: p for p in NOTEBOOKS.glob("*.rs")}
    ipynb = {p.stem: p for p in NOTEBOOKS.glob("*.ipynb")}
    for name in sorted(set(ipynb) - set(rs)):
        problems.append(f"{name}.ipynb has no Rust source: .venv-nb/bin/jupytext --to rs:percent notebooks/{name}.ipynb")
    for name in sorted(set(rs) - set(ipynb)):
        problems.append(f"{name}.rs has no notebook: .venv-nb/bin/jupytext --sync notebooks/{name}.rs")
    for name in sorted(set(rs) & set(ipynb)):
        text = jupytext.read(rs[name])
        nb = nbformat.read(ipynb[name], as_version=4)
        a, b = cells(text), cells(nb)
        where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if a != b:
            problems.append(
                f"{name}: the .rs and .ipynb differ from cell {where} on ({len(a)} vs {len(b)} cells); "
                f"after editing one side run .venv-nb/bin/jupytext --sync notebooks/{name}.rs"
            )
        elif text.metadata.get("candlelens") != nb.metadata.get("candlelens"):
            problems.append(f"{name}: the `candlelens` metadata differs; run .venv-nb/bin/jupytext --sync notebooks/{name}.rs")
        if not nb.metadata.get("candlelens", {}).get("expect"):
            problems.append(f"{name}: no `candlelens: expect:` list of the outputs it must produce")
    for p in problems:
        print(f"check-notebooks: {p}", file=sys.stderr)
    print(f"check-notebooks: {len(rs)} pairs, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
