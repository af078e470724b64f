"""The benchmarks' harness: paths (the repository, ``../shared``, the results folder), running `reranker` commands
with timings, the environment, and writing a result as ``results/<name>.json`` and ``results/<name>.md``."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared"
EXE = str(Path(sys.executable).with_name("reranker"))


def write_json(name: str, data, out: Path = RESULTS, transform=None) -> Path:
    """``out/<name>.json`` (indented, newline-terminated); ``transform`` rewrites the text first (e.g.
    :func:`machine_independent`)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) + "\n"
    path = out / f"{name}.json"
    path.write_text(transform(text) if transform else text)
    return path


#: A page's hand-written section: everything from this heading on, written after the runs.
READING = "## Reading"


def write_markdown(name: str, lines: list[str], out: Path = RESULTS) -> Path:
    """``out/<name>.md`` from its lines. A ``## Reading`` section written by hand into the page before (text about
    the figures, not made by the script) is kept at the end, so that a rerun or a ``--report-only`` does not lose
    it; a script whose own lines hold that heading replaces it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    kept: list[str] = []
    if path.is_file() and not any(line.startswith(READING) for line in lines):
        old = path.read_text().splitlines()
        start = next((i for i, line in enumerate(old) if line.startswith(READING)), None)
        kept = [""] + old[start:] if start is not None else []
    path.write_text("\n".join([*lines, *kept]).rstrip("\n") + "\n")
    return path


def sh(cmd: list[str], timings: list[dict], label: str, cwd: Path | None = None) -> str:
    """Run ``cmd`` (in ``cwd``), record ``{step, command, seconds}`` in ``timings``, stop the benchmark if it fails."""
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"$ {'(cd ' + str(cwd) + ' && ' if cwd else ''}{shown}{')' if cwd else ''}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, cwd=cwd)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"failed: {shown}\n{res.stderr[-3000:]}")
    portable = shown.replace(EXE, "reranker").replace(f"{ROOT.parent}/", "../")  # no machine-specific paths in results
    timings.append({"step": label, "command": portable, "seconds": round(seconds, 1)})
    return res.stdout


def environment(*packages: str) -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), **{p: version(p) for p in packages}}


def machine_independent(text: str, work: Path) -> str:
    """``text`` with the CLI by name, the work folder as ``$WORK`` and ``../shared`` relative (for committed results)."""
    return text.replace(EXE, "reranker").replace(str(work), "$WORK").replace(f"{ROOT.parent}/", "../")


def timing_table(timings: list[dict], work: Path) -> list[str]:
    rows = ["| step | seconds | command |", "|---|---:|---|"]
    def shown(cmd: str) -> str:
        return machine_independent(cmd, work)

    rows += [f"| {t['step']} | {t['seconds']} | `{shown(t['command'])}` |" for t in timings]
    rows += ["", f"Total: {sum(t['seconds'] for t in timings):.0f} s."]
    return rows


def timings_section(timings: list[dict], work: Path) -> list[str]:
    """The ``## Commands and wall time`` section every result page ends with."""
    return ["## Commands and wall time", "", *timing_table(timings, work)]


def publish(name: str, lines: list[str], timings: list[dict], work: Path, out: Path = RESULTS) -> Path:
    """A result page's tail, written once: ``lines``, then the commands and their wall time, to ``out/<name>.md``
    (a hand-written ``## Reading`` kept, as :func:`write_markdown`), and the page on stdout."""
    md = [*lines, "", *timings_section(timings, work)]
    path = write_markdown(name, md, out)
    print("\n".join(md))
    return path
