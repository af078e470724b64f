"""Check that committed benchmark results are reproduced by their commands (within noise).

For each named result (``benchmarks/results/NAME.json``), the committed version (from git,
``--ref``, default ``HEAD``) is the reference and the file in the working tree is the new run:
run the benchmark's command first (``--run`` runs the command given with ``--command NAME=CMD``,
or a plain ``python benchmarks/NAME.py``), then this script compares every number of the two
JSON trees, leaf by leaf:

- quality figures (nDCG, MRR, recall, NLL, ECE, agreement, ...) must agree within ``--atol``
  (default 0.005): they are deterministic up to float rounding and thread scheduling;
- timing figures (keys with seconds, ``_s``, pairs/s, rss, latency, load) are reported with their
  ratio, never judged: they depend on the machine and on what else ran; so are a load test's work
  counts (requests and pairs finished in a fixed time), where only errors are judged;
- bookkeeping (environment, versions, timings tables, dates, paths) is skipped.

Writes ``benchmarks/results/reproduction.md`` (one section per result, newest first, earlier
sections kept) and exits 1 when a quality figure moved beyond the tolerance.

Usage: ``python benchmarks/reproduce.py bm25_baseline dl19_quality [--run] [--atol 0.005]``; README's benchmark
table comes back with ``demo_quality`` (its demo row, about 5 minutes), ``teacher_fusion`` (the teacher column on
SciFact, CACM and DL19, about 7 minutes), ``pipeline_corpora`` (DL19, CACM) and ``student_curve`` (SciFact, hours:
``--command student_curve="python benchmarks/student_curve.py ..."``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SKIP = re.compile(r"(^|\.)(env|environment|timings|runtime|versions|command|server_command|date|created|load_avg\w*|load_average\w*)(\.|\[|$)")
MARK = "<!-- sections, newest first -->"
SETTING = re.compile(r"(^|\.)config\.")  # a run's inputs (a trainer's config), not its results
TIMING = re.compile(r"(second|_s$|_s\.|per_s|pairs_s|rss|latency|_ms|p50|p95|p99|load_s|speedup|throughput|qps|hour)", re.I)


def leaves(tree, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree by its dotted path (lists by index, or by a 'config'/'kind'/'name' field)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            key = next((str(v[f]) for f in ("config", "name", "kind", "step", "level", "budget") if isinstance(v, dict) and f in v), str(i))
            out.update(leaves(v, f"{prefix}[{key}]"))
    elif isinstance(tree, bool) or tree is None:
        pass
    elif isinstance(tree, int | float):
        out[prefix] = float(tree)
    return out


#: results whose work counts depend on speed too (a load test counts what finished in a fixed time): only errors are judged
LOAD_DEPENDENT = {"server_load": re.compile(r"^(levels|offline|rss)\b(?!.*(errors|exceptions))")}


def compare(old: dict, new: dict, atol: float, name: str = "") -> tuple[list[dict], list[dict], list[dict]]:
    """(quality rows, timing rows, settings that differ): each ``{key, old, new, ok}``; a figure missing from the new
    run fails, one only the new run has is marked ``added`` and not judged; settings are shown, not judged."""
    a, b = leaves(old), leaves(new)
    quality, timing, settings = [], [], []
    load_dependent = LOAD_DEPENDENT.get(name)
    for key in sorted(set(a) | set(b)):
        if SKIP.search(key):
            continue
        x, y = a.get(key), b.get(key)
        if SETTING.search(key):
            if x != y:
                settings.append({"key": key, "old": x, "new": y})
            continue
        if TIMING.search(key) or (load_dependent is not None and load_dependent.search(key)):
            timing.append({"key": key, "old": x, "new": y})
            continue
        if x is None:  # a figure the committed result did not have (a newer script reports more): shown, not judged
            quality.append({"key": key, "old": x, "new": y, "ok": True, "added": True})
            continue
        ok = y is not None and (math.isclose(x, y, abs_tol=atol) or (math.isnan(x) and math.isnan(y)))
        quality.append({"key": key, "old": x, "new": y, "ok": ok})
    return quality, timing, settings


def committed(name: str, ref: str) -> dict:
    path = f"benchmarks/results/{name}.json"
    res = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{path}: not committed at {ref} ({res.stderr.strip()})")
    return json.loads(res.stdout)


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", help="result names (benchmarks/results/NAME.json)")
    ap.add_argument("--ref", default="HEAD", help="git revision holding the reference results")
    ap.add_argument("--run", action="store_true", help="run each benchmark's command first")
    ap.add_argument("--command", action="append", default=[], help="NAME=COMMAND to run instead of python benchmarks/NAME.py")
    ap.add_argument("--atol", type=float, default=0.005, help="largest difference allowed in a quality figure")
    args = ap.parse_args()
    commands = dict(c.split("=", 1) for c in args.command)
    sections, failed = [], []
    for name in args.names:
        old = committed(name, args.ref)
        command = commands.get(name, f"python benchmarks/{name}.py")
        seconds = None
        if args.run:
            print(f"$ {command}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            subprocess.run(shlex.split(command), cwd=ROOT, check=True)
            seconds = time.perf_counter() - start
        new = json.loads((RESULTS / f"{name}.json").read_text())
        quality, timing, settings = compare(old, new, args.atol, name)
        bad = [q for q in quality if not q["ok"]]
        added = [q for q in quality if q.get("added")]
        failed += [f"{name}: {q['key']}" for q in bad]
        lines = [f"## {name} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
                 f"Reference: `benchmarks/results/{name}.json` at {args.ref}; new run: `{command}`"
                 + (f" ({seconds:.0f} s)" if seconds is not None else "") + ".", "",
                 f"{len(quality) - len(bad) - len(added)} of {len(quality) - len(added)} quality figures within {args.atol}"
                 + (f"; **moved**: {', '.join(q['key'] for q in bad[:20])}" if bad else "")
                 + (f"; {len(added)} new figures not in the committed result (not judged)" if added else "") + ".", ""]
        if quality:
            lines += ["| figure | committed | new | |", "|---|---:|---:|---|"]
            lines += [f"| {q['key']} | {fmt(q['old'])} | {fmt(q['new'])} | {'new' if q.get('added') else 'ok' if q['ok'] else '**moved**'} |" for q in quality]
        if settings:
            lines += ["", "Settings that differ (a run's inputs, shown, not judged):", "", "| setting | committed | new |", "|---|---:|---:|"]
            lines += [f"| {r['key']} | {fmt(r['old'])} | {fmt(r['new'])} |" for r in settings]
        if timing:
            lines += ["", "Timings (machine- and load-dependent, not judged):", "", "| figure | committed | new | new / committed |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {r['key']} | {fmt(r['old'])} | {fmt(r['new'])} | "
                      f"{fmt(r['new'] / r['old']) if r['old'] and r['new'] is not None else '–'} |" for r in timing]
        sections.append("\n".join(lines))
    out = RESULTS / "reproduction.md"
    previous = out.read_text() if out.exists() else ""
    earlier = previous.split(MARK, 1)[1].strip() if MARK in previous else ""
    body = "\n\n".join(sections)
    out.write_text("# Reproduction of the committed benchmark results\n\nMade by `python benchmarks/reproduce.py NAME...`; "
                   f"newest first.\n{MARK}\n\n{body}" + (f"\n\n{earlier}" if earlier else "") + "\n")
    print(body)
    if failed:
        sys.exit(f"{len(failed)} quality figures moved beyond {args.atol}: {', '.join(failed[:10])}")


if __name__ == "__main__":
    main()
