"""Executes evcxr notebooks headlessly (see scripts/run-notebooks) and fails on any cell error.

evcxr reports a panic, an `Err` from `?` or a compile error on stderr without marking the cell
failed, so every output is scanned for them. A notebook may list outputs it must produce in its
metadata (`"candlelens": {"expect": ["image/svg+xml", "text/html"]}`): a run without them fails.
"""

import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REPORTS = ROOT / "reports"
FAILURE = re.compile(r"(^|\n)\s*(Error:|error(\[E\d+\])?:)|panicked at")


def failures(nb):
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            text = ""
            if out.output_type == "error":
                text = f"{out.get('ename', '')}: {out.get('evalue', '')}"
            elif out.output_type == "stream":
                text = out.get("text", "")
            elif out.output_type in ("display_data", "execute_result"):
                text = out.get("data", {}).get("text/plain", "")
            if out.output_type == "error" or FAILURE.search(text):
                first = text.strip().splitlines()[0] if text.strip() else out.output_type
                found.append(f"cell {i}: {first[:300]}")
    return found


def mimes(nb):
    have = set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            have.update(out.get("data", {}).keys())
    return have


def run(path: Path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="rust",
        timeout=3600,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.time()
    problems = []
    try:
        client.execute()
    except CellExecutionError as e:
        problems.append(str(e).splitlines()[0])
    except Exception as e:  # kernel died, timeout
        problems.append(f"{type(e).__name__}: {e}")
    seconds = time.time() - t0
    problems += failures(nb)
    expect = nb.metadata.get("candlelens", {}).get("expect", [])
    missing = [m for m in expect if m not in mimes(nb)]
    if missing:
        problems.append(f"missing outputs: {', '.join(missing)}")
    REPORTS.mkdir(exist_ok=True)
    out = REPORTS / path.name
    nbformat.write(nb, out)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (REPORTS / (path.stem + ".html")).write_text(html, encoding="utf-8")
    return seconds, problems


def main(names):
    paths = [NOTEBOOKS / (n if n.endswith(".ipynb") else n + ".ipynb") for n in names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [p for p in paths if not p.exists()]
    if missing:
        print("run-notebooks: no such notebook: " + ", ".join(str(p) for p in missing), file=sys.stderr)
        return 2
    failed = 0
    total = 0.0
    for p in paths:
        print(f"running {p.name} ...", flush=True)
        seconds, problems = run(p)
        total += seconds
        status = "ok" if not problems else "FAILED"
        print(f"  {p.name}: {status} in {seconds:.1f} s -> reports/{p.stem}.html", flush=True)
        for pr in problems:
            print(f"    {pr}", flush=True)
        failed += bool(problems)
    print(f"total {total:.1f} s ({total / 60:.1f} min) for {len(paths)} notebooks")
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
