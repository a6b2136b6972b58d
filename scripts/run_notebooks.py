"""Executes evcxr notebooks headlessly (see scripts/run-notebooks) and fails on any cell error.

evcxr reports a panic, an `Err` from `?` or a compile error on stderr without marking the cell
failed, so every output is scanned for them. A notebook may list outputs it must produce in its
metadata (`"candlelens": {"expect": ["image/svg+xml", "text/html"]}`): a run without them fails.
A notebook that reproduces several source runs lists them (`"candlelens": {"runs": {"lre-gpt2":
{"CANDLELENS_LRE_MODEL": "gpt2"}, ...}}`): it is executed once per run, with that run's
environment, and each run writes its own report (reports/<run>.html). A run can be named on the
command line instead of its notebook.
"""

import os
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



def write_whole(path, text):
    """Writes a report whole or not at all: a temporary name of this process beside it, then
    an atomic rename (a killed run leaves the previous report, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

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


def run(path: Path, report: str, env: dict):
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment it is started in
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
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.time() - t0
    problems += failures(nb)
    expect = nb.metadata.get("candlelens", {}).get("expect", [])
    missing = [m for m in expect if m not in mimes(nb)]
    if missing:
        problems.append(f"missing outputs: {', '.join(missing)}")
    REPORTS.mkdir(exist_ok=True)
    write_whole(REPORTS / (report + ".ipynb"), nbformat.writes(nb))
    html, _ = HTMLExporter().from_notebook_node(nb)
    write_whole(REPORTS / (report + ".html"), html)
    return seconds, problems


def runs_of(path: Path):
    """(report name, environment) of each run of a notebook: its `runs`, or one plain run."""
    runs = nbformat.read(path, as_version=4).metadata.get("candlelens", {}).get("runs")
    if not runs:
        return [(path.stem, {})]
    return [(name, {k: str(v) for k, v in env.items()}) for name, env in runs.items()]


def plan(names):
    """The (notebook, report, environment) runs that `names` (notebooks or run names) ask for."""
    every = [(p, r, env) for p in sorted(NOTEBOOKS.glob("*.ipynb")) for r, env in runs_of(p)]
    if not names:
        return every, []
    chosen, unknown = [], []
    for n in names:
        stem = n[: -len(".ipynb")] if n.endswith(".ipynb") else n
        hits = [x for x in every if x[0].stem == stem or x[1] == stem]
        chosen += hits
        if not hits:
            unknown.append(n)
    return chosen, unknown


def main(names):
    runs, unknown = plan(names)
    if unknown:
        print("run-notebooks: no such notebook or run: " + ", ".join(unknown), file=sys.stderr)
        return 2
    failed = 0
    total = 0.0
    for p, report, env in runs:
        label = p.name if report == p.stem else f"{p.name} as {report} ({', '.join(f'{k}={v}' for k, v in env.items())})"
        print(f"running {label} ...", flush=True)
        seconds, problems = run(p, report, env)
        total += seconds
        status = "ok" if not problems else "FAILED"
        print(f"  {report}: {status} in {seconds:.1f} s -> reports/{report}.html", flush=True)
        for pr in problems:
            print(f"    {pr}", flush=True)
        failed += bool(problems)
    print(f"total {total:.1f} s ({total / 60:.1f} min) for {len(runs)} notebook runs")
    print(f"{len(runs) - failed} passed, {failed} failed")
    return 1 if failed else 0


def warm():
    """Compiles candlelens in the kernel's build folder (EVCXR_TMPDIR): the `:dep` cell every
    notebook starts with, run once. Prints the seconds it took (a few when it was built)."""
    os.makedirs(os.environ["EVCXR_TMPDIR"], exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        ':dep candlelens = { path = "../crates/candlelens", default-features = false }\n'
        "use candlelens::prelude::*;")])
    t0 = time.time()
    NotebookClient(nb, kernel_name="rust", timeout=3600,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    problems = failures(nb)
    if problems:
        print("setup: building candlelens inside the kernel failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"setup: candlelens built for the notebooks' kernel ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(warm() if sys.argv[1:] == ["--warm"] else main(sys.argv[1:]))
