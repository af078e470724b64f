"""Does bf16 autocast pay on this CPU? MiniLM-L6 cross-encoder, 32 SciFact pairs at 256 tokens, fp32 against bf16.

Training (forward + backward + AdamW) and inference pairs/s, the median of ``--repeats`` timed batches after one
warm-up, and whether the CPU has native bf16 (AVX512-BF16 / AMX), which `reranker distill`'s ``bf16`` default reads.
Writes ``benchmarks/results/bf16_cpu.{md,json}``. Usage: ``python benchmarks/bf16_cpu.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, environment, write_json, write_markdown


def main() -> None:
    import torch

    from reranker.io.dataset import load_dataset
    from student.distill_config import bf16_supported
    from student.models import CrossEncoderStudent

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ds = load_dataset(args.shared / "datasets" / "beir" / "scifact.zip")
    docs = [d.contents for d in list(ds.corpus)[:32]]
    queries = [q.text for q in list(ds.queries.values())[:32]]
    torch.manual_seed(0)
    student = CrossEncoderStudent.from_pretrained("all-MiniLM-L6-v2", max_length=256, head="classifier")
    enc = student.encode(queries, docs)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    rows = {}
    for precision in ("fp32", "bf16"):
        for mode in ("train", "inference"):
            times = []
            for i in range(args.repeats + 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    if mode == "train":
                        student.train()
                        loss = student(**enc).float().pow(2).mean()
                        loss.backward()
                        opt.step()
                        opt.zero_grad()
                    else:
                        student.eval()
                        with torch.inference_mode():
                            student(**enc)
                if i:  # the first batch warms up
                    times.append(time.perf_counter() - start)
            rows[f"{mode} {precision}"] = round(len(docs) / statistics.median(times), 2)
    native, where = bf16_supported()
    env = environment("torch")
    write_json("bf16_cpu", {"pairs_per_s": rows, "native_bf16": native, "cpu": where, "env": env})
    md = ["# bf16 autocast on this CPU (MiniLM-L6 cross-encoder, 32 pairs x 256 tokens)", "",
          f"Made by `python benchmarks/bf16_cpu.py --repeats {args.repeats}` on {time.strftime('%Y-%m-%d')}; {where}, torch {env['torch']}.", "",
          "| what | pairs/s |", "|---|---:|", *[f"| {k} | {v} |" for k, v in rows.items()]]
    write_markdown("bf16_cpu", md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
