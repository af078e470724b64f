"""Load benchmark of `reranker serve` on loopback, beside the offline scorer on the same pairs.

1. BM25 (bm25s) top 100 for SciFact's test queries (`reranker retrieve`); each request is one
   query with its 100 retrieved passages (title + text), the real re-ranking workload.
2. The offline scorer's pairs/s: a separate Python process loads the same model folder with
   ``load_model`` and calls ``scorer.score`` on the pairs of the first ``--offline-requests``
   requests (``--batch-size``), once before and once after the server levels.
3. `reranker serve MODEL` in a subprocess; for each level of concurrent clients, a load
   generator in another process (asyncio + httpx, ``POST /v2/rerank``) keeps that many requests
   in flight for ``--duration`` seconds, then waits for the ones in flight. Pairs/s counts the
   pairs of successful requests over the level's wall time; latencies are per request.
4. The server's resident memory (psutil) sampled every 0.25 s through the run.

``--cache-latency EXPORT`` measures instead the latency of ``POST /v1/rerank`` with ``--docs`` passages of about
``--words`` words (windows of SciFact's corpus, ``../shared``; else the embedded demo corpus) at each of
``--cache-levels`` concurrent clients, cold and warm: a cold pass sends passages the server has never seen (every
request's are new), then a warm pass sends the same passages again, each request with another query (so only the
passages repeat: the scorer's passage cache, not a response cache, makes the difference). p50/p95/p99 per pass, and
the cache's hits and misses from /metrics. ``EXPORT`` is an exported ONNX folder, served as it is.

Writes ``benchmarks/results/server_load.{md,json}``; each mode keeps the other's part of them.
Usage: ``python benchmarks/server_load.py [--model FOLDER] [--backend onnx|torch] [--levels 1,8,32,64] [--duration 20]``
(``--model`` is a student folder; with ``--backend onnx`` it is exported to ONNX int8 first), or
``python benchmarks/server_load.py --cache-latency EXPORT [--cache-levels 1,8,32] [--docs 100] [--words 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_soak as serving  # the helpers shared with the soak: passages, RSS, launching a server, a pass of requests
from common import EXE, RESULTS, ROOT, SHARED, environment, sh, timings_section, write_json, write_markdown

CACHE_HEADING = "## Passage cache: cold and warm latency"


def pct(sorted_values: list[float], q: float) -> float | None:
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3) if sorted_values else None


# --- the load generator (a second process) -------------------------------------------------------


async def _generate(url: str, requests: list[dict], concurrency: int, duration: float, top_n: int) -> dict:
    import httpx

    records: list[tuple[int, float, int]] = []  # (status, seconds, pairs)
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        start = time.perf_counter()

        async def client(i: int) -> None:
            k = i
            while time.perf_counter() - start < duration:
                req = requests[k % len(requests)]
                k += concurrency
                t = time.perf_counter()
                try:
                    r = await http.post("/v2/rerank", json={"query": req["query"], "documents": req["documents"], "top_n": top_n})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = -1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                records.append((status, time.perf_counter() - t, len(req["documents"])))

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [(s, sec, p) for s, sec, p in records if s == 200]
    statuses: dict[str, int] = {}
    for s, _, _ in records:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    lat = sorted(sec for _, sec, _ in ok)
    return {"concurrency": concurrency, "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok),
            "statuses": statuses, "exceptions": errors, "wall_s": round(wall, 2),
            "pairs": sum(p for _, _, p in ok), "pairs_per_s": round(sum(p for _, _, p in ok) / wall, 2),
            "p50_s": pct(lat, 0.50), "p95_s": pct(lat, 0.95), "p99_s": pct(lat, 0.99), "max_s": round(lat[-1], 3) if lat else None}


def generate_main(args: argparse.Namespace) -> None:
    requests = json.loads(Path(args.requests).read_text())
    result = asyncio.run(_generate(args.generate, requests, args.concurrency, args.duration, args.top_n))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


# --- the offline scorer (a separate process, like the server's) ----------------------------------


def offline_main(args: argparse.Namespace) -> None:
    from reranker.app import register_backends
    from reranker.scoring import load_model

    register_backends()  # --backend torch: the application's start-up, as the server's

    options: dict = {}
    backend = args.backend_of_folder
    if args.threads and backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    elif args.threads:
        options["intra_op_threads"] = args.threads
    scorer = load_model(args.offline, backend, **options)
    requests = json.loads(Path(args.requests).read_text())[: args.offline_requests]
    pairs = [(r["query"], d) for r in requests for d in r["documents"]]
    scorer.score(pairs[:64], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    scorer.score(pairs, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({"pairs": len(pairs), "seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
                                          "batch_size": args.batch_size}) + "\n")


# --- the benchmark ------------------------------------------------------------------------------


def build_requests(scifact: str, run_path: Path, out: Path, n_queries: int, docs: int) -> int:
    from reranker import load_dataset
    from reranker.io.trec import read_run

    ds = load_dataset(scifact, split="test")
    run = read_run(run_path)
    queries = ds.require_queries()
    requests = []
    for qid in sorted(run, key=str)[:n_queries]:
        hits = run.ranking(qid)[:docs]
        if len(hits) == docs:
            requests.append({"qid": qid, "query": queries[qid].text, "documents": [ds.corpus.get(h.doc_id).contents for h in hits]})
    out.write_text(json.dumps(requests))
    return len(requests)


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/server-load"))
    ap.add_argument("--model", type=Path, default=Path("/tmp/ce-try/model"), help="A student folder (cross-encoder or T5).")
    ap.add_argument("--backend", choices=["onnx", "torch"], default="onnx", help="onnx: export the student to ONNX (int8) and serve that.")
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds each level issues requests (then in-flight ones finish).")
    ap.add_argument("--queries", type=int, default=64, help="SciFact test queries to draw requests from.")
    ap.add_argument("--docs", type=int, default=100, help="Passages per request (BM25's top; --cache-latency: corpus windows).")
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="Model threads, server and offline alike.")
    ap.add_argument("--batch-size", type=int, default=32, help="Offline scorer's batch size.")
    ap.add_argument("--offline-requests", type=int, default=4)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--cache-latency", type=Path, metavar="EXPORT", help="Measure cold vs warm passage-cache latency on this ONNX export.")
    ap.add_argument("--cache-levels", default="1,8,32", help="--cache-latency: concurrent clients.")
    ap.add_argument("--cache-requests", type=int, default=None, help="--cache-latency: requests per pass (default max(16, 2 x clients)).")
    ap.add_argument("--cache-entries", type=int, default=None, help="--cache-latency: the server's passage-cache bound (default its own).")
    ap.add_argument("--words", type=int, default=200, help="--cache-latency: words per passage.")
    ap.add_argument("--results", type=Path, default=RESULTS, help="Folder of server_load.{json,md} (each mode keeps the other's part).")
    # internal: the second processes
    ap.add_argument("--generate", help=argparse.SUPPRESS)
    ap.add_argument("--offline", help=argparse.SUPPRESS)
    ap.add_argument("--backend-of-folder", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--requests", help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        return generate_main(args)
    if args.offline:
        return offline_main(args)
    if args.cache_latency:
        return cache_latency(args)
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> None:
    import httpx
    import psutil

    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    scifact = str(args.shared / "datasets" / "beir" / "scifact.zip")
    t: list[dict] = []
    model = args.model
    if args.backend == "onnx":
        model = w / "onnx"
        if not (model / "onnx_manifest.json").is_file():
            sh([EXE, "-q", "export", args.model, model, "--precision", "int8"], t, "export the student to ONNX (fp32 + int8)")
    if not (w / "bm25.trec").is_file():
        sh([EXE, "-q", "retrieve", scifact, "-k", args.docs, "--out", w / "bm25.trec"], t, f"BM25 (bm25s) top {args.docs}, SciFact test")
    n = build_requests(scifact, w / "bm25.trec", w / "requests.json", args.queries, args.docs)
    config = json.loads((model / ("onnx_manifest.json" if args.backend == "onnx" else "student_config.json")).read_text())
    args.model_info = f"{config['kind']}, max length {config['max_length']} tokens"
    me = [sys.executable, __file__]
    common = ["--requests", w / "requests.json"]

    def offline(tag: str) -> dict:
        out = w / f"offline-{tag}.json"
        sh([*me, "--offline", model, "--backend-of-folder", args.backend, "--threads", args.threads, "--batch-size", args.batch_size,
            "--offline-requests", args.offline_requests, *common, "--out", out], t, f"offline scorer ({tag})")
        return json.loads(out.read_text())

    load = {"before": os.getloadavg()}
    offline_before = offline("before")
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    serve = [EXE, "serve", model, "--port", port, "--threads", args.threads, "--max-wait-ms", args.max_wait_ms,
             "--max-batch-tokens", args.max_batch_tokens, "--log-level", "warning"]
    shown = " ".join(str(c) for c in serve).replace(EXE, "reranker").replace(str(w), "$WORK")
    levels = []
    with serving.launched(serve, w / "server.log") as server:
        sampler = serving.RssSampler(server.pid)
        sampler.start()
        try:
            serving.wait_ready(url, server, w / "server.log")
            sampler.phase = "ready"
            for c in (int(x) for x in args.levels.split(",")):
                sampler.phase = f"{c} clients"
                before = httpx.get(url + "/metrics").text
                out = w / f"level-{c}.json"
                sh([*me, "--generate", url, "--concurrency", c, "--duration", args.duration, "--top-n", args.top_n, *common,
                    "--out", out], t, f"{c} concurrent clients")
                after = httpx.get(url + "/metrics").text
                level = json.loads(out.read_text())
                batches = metric_sum(after, "reranker_batch_size_count") - metric_sum(before, "reranker_batch_size_count")
                pairs = metric_sum(after, "reranker_batch_size_sum") - metric_sum(before, "reranker_batch_size_sum")
                level["mean_batch_pairs"] = round(pairs / batches, 1) if batches else None
                level["load_avg_1m"] = round(os.getloadavg()[0], 2)
                levels.append(level)
                print(json.dumps(level), file=sys.stderr, flush=True)
            sampler.phase = "idle"
            time.sleep(2)
        finally:
            sampler.stop()
    offline_after = offline("after")
    load["after"] = os.getloadavg()
    here = f"{sys.executable} {Path(__file__).resolve()}".replace(f"{ROOT.parent}/", "../")
    for step in t:
        step["command"] = step["command"].replace(here, "python benchmarks/server_load.py")
    write_results(args, t, levels, offline_before, offline_after, sampler.samples, shown, n, load, psutil.cpu_count())


def write_results(args, t, levels, off_before, off_after, samples, serve_cmd, n_requests, load, cores) -> None:
    offline_rate = (off_before["pairs_per_s"] + off_after["pairs_per_s"]) / 2
    for level in levels:
        level["vs_offline"] = round(level["pairs_per_s"] / offline_rate, 3)
    mib = [s[1] / 2**20 for s in samples]
    ready = [s[1] / 2**20 for s in samples if s[2] != "start"]
    rss = {"start_mib": round(ready[0] if ready else mib[0], 1), "peak_mib": round(max(mib), 1), "end_mib": round(mib[-1], 1),
           "samples": len(samples), "by_phase": {}}
    for _, value, phase in samples:
        rss["by_phase"].setdefault(phase, []).append(value / 2**20)
    rss["by_phase"] = {k: {"min": round(min(v), 1), "max": round(max(v), 1)} for k, v in rss["by_phase"].items()}
    at32 = next((lv for lv in levels if lv["concurrency"] == 32), None)
    target = bool(at32 and at32["vs_offline"] >= 0.8 and at32["errors"] == 0)
    env = environment("torch", "onnxruntime", "fastapi", "uvicorn")
    command = (f"python benchmarks/server_load.py --backend {args.backend} --levels {args.levels} --duration {args.duration:g} "
               f"--queries {args.queries} --docs {args.docs} --threads {args.threads}")
    kept = {k: v for k, v in previous_json(args.results).items() if k == "cache_latency"}  # the other mode's figures stay
    write_json("server_load", {"command": command, "server_command": serve_cmd, "offline": {"before": off_before, "after": off_after, "mean_pairs_per_s": offline_rate},
         "levels": levels, "rss": rss, "target_met_at_32": target, "load_avg": load, "timings": t, "env": env, **kept}, args.results)
    rows = ["| clients | requests | errors | pairs/s | vs offline | p50 s | p95 s | p99 s | mean batch (pairs) | load avg |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in levels:
        err = f"{lv['errors']}" + (f" ({', '.join(f'{k}: {v}' for k, v in lv['statuses'].items() if k != '200')})" if lv["errors"] else "")
        rows.append(f"| {lv['concurrency']} | {lv['requests']} | {err} | {lv['pairs_per_s']:.1f} | {lv['vs_offline']:.0%} | {lv['p50_s']} | "
                    f"{lv['p95_s']} | {lv['p99_s']} | {lv['mean_batch_pairs']} | {lv['load_avg_1m']} |")
    md = [
        "# Re-rank server under load (loopback)",
        "",
        (f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on a {cores}-core CPU machine "
        f"(onnxruntime {env['onnxruntime']}, torch {env['torch']}, fastapi {env['fastapi']}, uvicorn {env['uvicorn']})."),
        (f"Model: `{args.model.name}` ({args.model_info}), {'its ONNX int8 export' if args.backend == 'onnx' else 'PyTorch fp32'}. "
        "Server: `" + serve_cmd + "`."),
        (f"Each request: one SciFact test query with its BM25 (bm25s) top {args.docs} passages ({n_requests} distinct queries, round-robin), "
        f"`POST /v2/rerank` with top_n={args.top_n}. Each level keeps N requests in flight for {args.duration:g} s, then lets them finish."),
        "",
        "## Throughput and latency",
        "",
        (f"Offline scorer (`scorer.score`, batch {args.batch_size}, same model, same threads, a separate process): "
        f"{off_before['pairs_per_s']:.1f} pairs/s before the server levels, {off_after['pairs_per_s']:.1f} after; "
        f"their mean, {offline_rate:.1f}, is the reference."),
        "",
        *rows,
        "",
        (f"**Target** (at 32 clients, at least 80% of the offline scorer's pairs/s with zero errors): "
        f"**{'met' if target else 'not met'}**" + (f" ({at32['vs_offline']:.0%}, {at32['errors']} errors)." if at32 else ".")),
        "",
        "## Server memory (RSS, sampled every 0.25 s)",
        "",
        (f"After loading and warm-up {rss['start_mib']} MiB, peak {rss['peak_mib']} MiB, end {rss['end_mib']} MiB "
        f"({rss['samples']} samples)."),
        "",
        "| phase | min MiB | max MiB |",
        "|---|---:|---:|",
        *[f"| {k} | {v['min']} | {v['max']} |" for k, v in rss["by_phase"].items()],
        "",
        "## CPU",
        "",
        (f"1-minute load average: {load['before'][0]:.1f} before, {load['after'][0]:.1f} after (per level in the table). "
        "A load average above the core count means other processes shared the CPU during the run."),
        "",
        *timings_section(t, args.work),
    ]
    old = serving.section(previous_markdown(args.results), CACHE_HEADING)
    write_markdown("server_load", serving.with_section(md, old, CACHE_HEADING) if old else md, args.results)
    print("\n".join(md))


# --- cold and warm passage cache (--cache-latency EXPORT) ----------------------------------------------------------------


def cache_latency(args: argparse.Namespace) -> None:
    export, w = args.cache_latency, args.work
    if not (export / "onnx_manifest.json").is_file():
        sys.exit(f"{export}: not an exported ONNX folder (no onnx_manifest.json); export one with `reranker export`")
    w.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.cache_levels.split(",")]
    counts = {c: args.cache_requests or max(16, 2 * c) for c in levels}
    source, texts = serving.passages(sum(counts.values()) * args.docs, args.words, args.shared)
    queries, q = serving.corpus(args.shared)[2], itertools.count()
    url = f"http://127.0.0.1:{(port := serving.free_port())}"
    serve = [EXE, "serve", export, "--port", port, "--threads", args.threads, "--max-wait-ms", args.max_wait_ms,
             "--max-batch-tokens", args.max_batch_tokens, "--log-level", "warning"]
    env = {**os.environ, **({"RERANKER_CACHE_ENTRIES": str(args.cache_entries)} if args.cache_entries else {})}
    rows, used = [], 0
    with serving.launched(serve, w / "cache-server.log", env) as proc:
        serving.wait_ready(url, proc, w / "cache-server.log")
        for c in levels:
            docs = [texts[(used + i) * args.docs : (used + i + 1) * args.docs] for i in range(counts[c])]  # never sent before
            used += counts[c]
            row: dict = {"concurrency": c}
            for mode in ("cold", "warm"):  # warm: the same passages again, each request with another query
                before = serving.cache_figures(url)
                row[mode] = asyncio.run(serving.one_pass(url, [(queries[next(q) % len(queries)], d) for d in docs], c, args.top_n))
                after = serving.cache_figures(url)
                for key in ("hits", "misses"):
                    got = (after[f"{key}_total"] or 0) - (before[f"{key}_total"] or 0) if after["capacity"] is not None else None
                    row[mode][f"cache_{key}"] = None if got is None else int(got)
                print(json.dumps({"concurrency": c, mode: row[mode]}), file=sys.stderr, flush=True)
            rows.append(row)
        cache = serving.cache_figures(url)
    manifest = json.loads((export / "onnx_manifest.json").read_text())
    shown = " ".join(str(c) for c in serve).replace(EXE, "reranker").replace(str(port), "PORT").replace(str(export), export.name)
    command = (f"python benchmarks/server_load.py --cache-latency {export.name} --cache-levels {args.cache_levels} --docs {args.docs} "
               f"--words {args.words} --threads {args.threads}" + (f" --cache-requests {args.cache_requests}" if args.cache_requests else "")
               + (f" --cache-entries {args.cache_entries}" if args.cache_entries else ""))
    result = {"command": command, "server_command": shown, "export": export.name, "layout": manifest.get("layout", "pair"),
              "max_length": manifest.get("max_length"), "source": source, "docs": args.docs, "words": args.words,
              "levels": rows, "cache_at_end": cache, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "env": environment("onnxruntime", "fastapi", "uvicorn")}
    write_json("server_load", {**previous_json(args.results), "cache_latency": result}, args.results)
    lines = cache_section(result)
    write_markdown("server_load", serving.with_section(previous_markdown(args.results), lines, CACHE_HEADING), args.results)
    print("\n".join(lines))


def cache_section(r: dict) -> list[str]:
    rows = ["| clients | requests | pass | p50 s | p95 s | p99 s | mean s | errors | cache hits | cache misses |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in r["levels"]:
        for mode in ("cold", "warm"):
            x = lv[mode]
            rows.append(f"| {lv['concurrency']} | {x['requests']} | {mode} | {x['p50_s']} | {x['p95_s']} | {x['p99_s']} | {x['mean_s']} | "
                        f"{x['errors']} | {x['cache_hits']} | {x['cache_misses']} |")
    end = r["cache_at_end"]
    return [
        CACHE_HEADING, "",
        (f"Made by `{r['command']}` on {r['date']} ({r['env']['cores']} cores, onnxruntime {r['env']['onnxruntime']}). "
         f"Server: `{r['server_command']}` ({r['layout']} layout, max length {r['max_length']} tokens)."),
        (f"Each request: {r['docs']} passages of {r['words']} words (windows of {r['source']}), `POST /v1/rerank`, N clients in flight. "
         "Cold: passages the server has never seen; warm: the same passages again right after, each request with another query."),
        "", *rows, "",
        ("No passage cache (a pair-layout export scores every pair in full)." if end["capacity"] is None else
         f"Passage cache at the end: {end['entries']:.0f} of {end['capacity']:.0f} entries."), "",
    ]


def previous_json(out: Path = RESULTS) -> dict:
    path = out / "server_load.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def previous_markdown(out: Path = RESULTS) -> list[str]:
    path = out / "server_load.md"
    return path.read_text().splitlines() if path.is_file() else ["# Re-rank server under load (loopback)", ""]


if __name__ == "__main__":
    main()
