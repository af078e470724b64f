"""Soak of `reranker serve` on loopback: does the server's memory stay flat under a long, steady load?

1. `reranker serve MODEL` in a subprocess (``RERANKER_CACHE_ENTRIES`` set to ``--cache-entries``, so that an ONNX
   export's in-memory passage cache reaches its bound during the run).
2. ``--clients`` threads, each with one request in flight at a time, send ``POST /v2/rerank`` until ``--seconds`` have
   passed; each request holds ``--docs`` passages of about ``--words`` words, taken in turn from a pool of
   ``--pool`` distinct passages (default three times the cache's bound): the cache fills, then evicts, all run long.
   Passages are windows of BEIR SciFact's corpus (``../shared``), or of the embedded demo corpus without it.
3. The server's resident memory (psutil, else ``/proc/PID/status`` VmRSS) every ``--every`` seconds.

Growth after warm-up: the median RSS of the last 10% of the run against the median of the 10% that follows the
warm-up (the first 20%), in percent. Target: at most 5%.

Writes ``benchmarks/results/server_soak.{json,md}``. The server benchmarks share the helpers here (passages, RSS,
launching a server, one pass of requests, a results page's section).
Usage: ``python benchmarks/server_soak.py --model EXPORT_OR_STUDENT [--seconds 600] [--clients 4] [--docs 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EXE, RESULTS, ROOT, SHARED, environment, machine_independent, write_json, write_markdown

TARGET_GROWTH_PCT = 5.0
DEMO = ROOT / "reranker" / "data" / "demo"

# --- text: many distinct passages of real prose --------------------------------------------------------------------


def _scifact_texts(shared: Path) -> tuple[list[str], list[str]] | None:
    path = shared / "datasets" / "beir" / "scifact.zip"
    if not path.is_file():
        return None
    with zipfile.ZipFile(path) as z:
        docs = [json.loads(line) for line in z.read("scifact/corpus.jsonl").decode().splitlines() if line.strip()]
        queries = [json.loads(line)["text"] for line in z.read("scifact/queries.jsonl").decode().splitlines() if line.strip()]
    return [f"{d.get('title', '')} {d['text']}" for d in docs], queries


def _demo_texts() -> tuple[list[str], list[str]]:
    docs = [re.sub(r"<[^>]+>", " ", p.read_text(errors="replace")) for p in sorted((DEMO / "docs").rglob("*")) if p.is_file()]
    queries = [json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines() if line.strip()]
    return docs, queries


def corpus(shared: Path = SHARED) -> tuple[str, list[str], list[str]]:
    """(name, documents, queries): SciFact from ``shared`` when there, else the embedded demo corpus."""
    found = _scifact_texts(shared)
    return ("BEIR SciFact", *found) if found else ("the embedded demo corpus", *_demo_texts())


def passages(n: int, words: int, shared: Path = SHARED) -> tuple[str, list[str]]:
    """(source, ``n`` distinct passages of ``words`` words): windows over the corpus's running text, spread evenly."""
    name, docs, _ = corpus(shared)
    stream = " ".join(docs).split()
    room = len(stream) - words
    if room < n:
        raise SystemExit(f"{name} has {len(stream)} words: not enough for {n} distinct {words}-word passages")
    stride = max(1, room // n)
    out = list(dict.fromkeys(" ".join(stream[i * stride : i * stride + words]) for i in range(n)))
    if len(out) < n:
        raise SystemExit(f"{name}: only {len(out)} distinct {words}-word passages of {n} asked for")
    return name, out


# --- the server and its memory ---------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (psutil when installed, else /proc); None once the process is gone."""
    try:
        import psutil
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


class RssSampler(threading.Thread):
    """Resident memory of one process every ``every`` seconds, as (seconds since start, bytes, phase)."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every, self.phase, self.samples = pid, every, "start", []
        self._halt = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._halt.is_set():
            rss = rss_bytes(self.pid)
            if rss is None:  # the process ended
                return
            self.samples.append((round(time.perf_counter() - t0, 2), rss, self.phase))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@contextmanager
def launched(cmd: list, log_path: Path, env: dict | None = None):
    """``cmd`` (a `reranker serve`) in a subprocess, its output in ``log_path``; stopped with SIGTERM (it drains) at the end."""
    out = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        out.close()


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server was not ready after {timeout:g} s")
        time.sleep(0.25)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_value(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def cache_figures(url: str) -> dict[str, float | None]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return {k: metric_value(text, f"reranker_passage_cache_{k}") for k in ("hits_total", "misses_total", "entries", "capacity")}


# --- a pass of requests, a results page's section ----------------------------------------------------------------


async def one_pass(url: str, requests: list[tuple[str, list[str]]], concurrency: int, top_n: int) -> dict:
    """Every (query, passages) request once as ``POST /v1/rerank``, ``concurrency`` in flight; latency percentiles of the 200s."""
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    todo = iter(requests)  # shared by the clients: each request is sent once
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        start = time.perf_counter()

        async def client() -> None:
            for query, docs in todo:
                t = time.perf_counter()
                try:
                    status = str((await http.post("/v1/rerank", json={"query": query, "documents": docs, "top_n": top_n})).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    return {"requests": len(requests), "errors": len(requests) - len(lat), "statuses": statuses, "wall_s": round(wall, 2),
            "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99),
            "mean_s": round(sum(lat) / len(lat), 3) if lat else None}


def section(lines: list[str], heading: str) -> list[str]:
    """The lines of the section under ``heading`` (to the next ``## ``), empty when there is none."""
    if heading not in lines:
        return []
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def with_section(lines: list[str], new: list[str], heading: str) -> list[str]:
    """``lines`` with the section under ``heading`` replaced by ``new``, or ``new`` put before "## Commands" (else the end)."""
    old = section(lines, heading)
    if old:
        start = lines.index(heading)
        return lines[:start] + new + lines[start + len(old):]
    at = next((i for i, line in enumerate(lines) if line.startswith(("## Commands", "## Reading"))), len(lines))
    return lines[:at] + new + lines[at:]



# --- the soak --------------------------------------------------------------------------------------------------------


def growth(samples: list[tuple[float, int]], seconds: float, warmup_share: float = 0.2) -> dict:
    """RSS growth after warm-up: median of the last 10% of the run vs the median of the 10% after the warm-up."""
    warm = warmup_share * seconds
    after = [(t, r) for t, r in samples if t >= warm]
    if len(after) < 2:
        raise SystemExit(f"too few RSS samples after the warm-up ({len(after)}): sample more often or run longer")
    base = [r for t, r in after if t < warm + 0.1 * seconds] or [after[0][1]]
    end = [r for t, r in after if t >= 0.9 * seconds] or [after[-1][1]]
    baseline, final, peak = statistics.median(base), statistics.median(end), max(r for _, r in after)
    mib = 2**20
    return {"warmup_s": round(warm, 1), "baseline_mib": round(baseline / mib, 1), "end_mib": round(final / mib, 1),
            "peak_after_warmup_mib": round(peak / mib, 1), "growth_pct": round(100 * (final - baseline) / baseline, 2),
            "peak_growth_pct": round(100 * (peak - baseline) / baseline, 2)}


def soak(model: Path, seconds: float, *, clients: int = 4, docs: int = 20, words: int = 200, pool: int | None = None,
         cache_entries: int = 2000, every: float = 2.0, threads: int = 1, shared: Path = SHARED, work: Path) -> dict:
    """Serve ``model``, load it for ``seconds`` with ``clients`` bounded clients, sample RSS; the result (see module doc)."""
    import httpx

    pool = pool or 3 * cache_entries
    source, texts = passages(pool, words, shared)
    queries = corpus(shared)[2]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [EXE, "serve", model, "--port", port, "--threads", threads, "--max-documents", max(docs, 1000), "--log-level", "warning"]
    env = {**os.environ, "RERANKER_CACHE_ENTRIES": str(cache_entries)}
    work.mkdir(parents=True, exist_ok=True)
    counter, lock = itertools.count(), threading.Lock()
    statuses: dict[str, int] = {}
    with launched(cmd, work / "soak-server.log", env) as proc:
        wait_ready(url, proc, work / "soak-server.log")
        sampler = RssSampler(proc.pid, every)
        deadline = time.monotonic() + seconds
        sampler.start()

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < deadline:
                    with lock:
                        k = next(counter)
                    batch = [texts[(k * docs + i) % len(texts)] for i in range(docs)]
                    try:
                        status = str(http.post(f"{url}/v2/rerank", json={"query": queries[k % len(queries)], "documents": batch,
                                                                          "top_n": 10}).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1

        workers = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        sampler.stop()
        cache = cache_figures(url)
    samples = [(t, r) for t, r, _ in sampler.samples]
    requests = sum(statuses.values())
    shown = " ".join(str(c) for c in cmd).replace(EXE, "reranker").replace(str(port), "PORT")
    return {"model": machine_independent(str(model), work), "source": source, "seconds": seconds, "clients": clients,
            "docs_per_request": docs, "words_per_passage": words, "distinct_passages": len(texts), "cache_entries_env": cache_entries,
            "server_command": f"RERANKER_CACHE_ENTRIES={cache_entries} {shown}", "requests": requests,
            "errors": requests - statuses.get("200", 0), "statuses": statuses, "passage_cache": cache,
            "rss": growth(samples, seconds), "rss_samples": [[t, round(r / 2**20, 1)] for t, r in samples]}


def write_results(result: dict, command: str, out: Path = RESULTS) -> None:
    rss, cache = result["rss"], result["passage_cache"]
    result = {"command": command, **result, "target_growth_pct": TARGET_GROWTH_PCT,
              "target_met": rss["growth_pct"] <= TARGET_GROWTH_PCT and result["errors"] == 0,
              "env": environment("fastapi", "uvicorn")}
    write_json("server_soak", result, out)
    step = max(1, len(result["rss_samples"]) // 10)
    cache_line = ("The scorer has no passage cache (not a separated ONNX export)." if cache["capacity"] is None else
                  f"Passage cache at the end: {cache['entries']:.0f} of {cache['capacity']:.0f} entries, "
                  f"{cache['hits_total']:.0f} hits, {cache['misses_total']:.0f} misses.")
    md = [
        "# Re-rank server soak (loopback)", "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({result['env']['cores']} cores).",
        f"Server: `{result['server_command']}`; model `{result['model']}`.",
        (f"{result['clients']} clients, one request in flight each, for {result['seconds']:g} s: {result['requests']} requests of "
         f"{result['docs_per_request']} passages ({result['words_per_passage']} words, from {result['source']}; "
         f"{result['distinct_passages']} distinct, taken in turn), {result['errors']} errors ({result['statuses']})."),
        cache_line, "",
        "## Resident memory", "",
        (f"Warm-up: the first {rss['warmup_s']:g} s. RSS after it {rss['baseline_mib']} MiB, at the end {rss['end_mib']} MiB, "
         f"peak {rss['peak_after_warmup_mib']} MiB: growth **{rss['growth_pct']:+.2f}%** (peak {rss['peak_growth_pct']:+.2f}%); "
         f"target at most {TARGET_GROWTH_PCT:g}%: **{'met' if result['target_met'] else 'not met'}**."), "",
        "| seconds | RSS MiB |", "|---:|---:|",
        *[f"| {t:g} | {m} |" for t, m in result["rss_samples"][::step]],
    ]
    write_markdown("server_soak", md, out)
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="A model folder `reranker serve` takes (an ONNX export, or a student).")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--docs", type=int, default=20, help="Passages per request.")
    ap.add_argument("--words", type=int, default=200, help="Words per passage.")
    ap.add_argument("--pool", type=int, default=None, help="Distinct passages (default: 3 x --cache-entries).")
    ap.add_argument("--cache-entries", type=int, default=2000, help="The server's passage-cache bound (RERANKER_CACHE_ENTRIES).")
    ap.add_argument("--every", type=float, default=2.0, help="Seconds between RSS samples.")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/server-soak"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = soak(args.model, args.seconds, clients=args.clients, docs=args.docs, words=args.words, pool=args.pool,
                  cache_entries=args.cache_entries, every=args.every, threads=args.threads, shared=args.shared, work=args.work)
    command = (f"python benchmarks/server_soak.py --model {machine_independent(str(args.model), args.work)} --seconds {args.seconds:g} "
               f"--clients {args.clients} --docs {args.docs} --words {args.words} --cache-entries {args.cache_entries} "
               f"--every {args.every:g} --threads {args.threads}" + (f" --pool {args.pool}" if args.pool else ""))
    write_results(result, command)


if __name__ == "__main__":
    main()
