"""Static int8 (QDQ, per-channel weights, calibrated activation scales) against dynamic int8, on one student.

Issue #15 asks whether static quantisation with per-channel weights and entropy or percentile calibration on
length-bucketed batches keeps quality better than dynamic int8. This probe builds, from the student's own checkpoint:

- the graph the weight-only method quantises (ONNX Runtime's optimiser with multi-head attention fusion, so the
  Q/K/V projections stay MatMuls the quantiser can reach);
- static QDQ int8 of its MatMuls (``quantize_static``: uint8 activations with scales fixed by ``--calibration`` over
  ``--calib-pairs`` calibration pairs sorted by length into batches of 16, int8 weights per channel), then int8
  embeddings (weight-only Gather, as the weight-only method);

and scores held-out pairs (disjoint from the calibration pairs) with it and with the export's dynamic int8 graph:
mean |score change| against the fp32 graph, nDCG@10 with fp32's ranking as truth (``student.precision``), pairs/s,
and the largest score change of a pair scored alone vs in its batch. Pairs: a labelled-groups JSONL (the run's
``dev.jsonl``: held-out synthetic groups, the user's corpus).

Writes ``benchmarks/results/int8_static_probe.{md,json}``.
Usage: ``python benchmarks/int8_static_probe.py --model DIR --onnx EXPORT_DIR --pairs dev.jsonl [--calibration Percentile]``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json, write_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="student checkpoint folder")
    ap.add_argument("--onnx", type=Path, required=True, help="its `reranker export` folder (fp32 + dynamic int8)")
    ap.add_argument("--pairs", required=True, help="labelled-groups JSONL (e.g. a pipeline run's dev.jsonl)")
    ap.add_argument("--calibration", default="Percentile", choices=["MinMax", "Entropy", "Percentile"])
    ap.add_argument("--calib-pairs", type=int, default=128)
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", type=Path, default=Path("/tmp/int8-static-probe"))
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from reranker.onnx_runtime import load_onnx
    from student import export as ex
    from student.models import load_student
    from student.parity import ParitySample, load_parity_sample
    from student.precision import fidelity_ndcg

    logging.getLogger("root").setLevel(logging.ERROR)
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    sample = load_parity_sample(args.pairs, args.calib_pairs + args.eval_pairs)
    held = ParitySample(sample.pairs[args.calib_pairs:], sample.groups[args.calib_pairs:], sample.source, None)
    scorer = load_onnx(args.onnx, providers=["cpu"], precision="fp32", intra_op_threads=args.threads)
    reference = np.asarray(scorer.score(held.pairs), np.float64)

    start = time.perf_counter()
    mha = w / "mha.onnx"
    student = load_student(args.model).eval()
    inputs, _ = ex._save_folder(student, w / "folder")
    ex._torch_export(student, w / "raw.onnx", inputs, ex.DEFAULT_OPSET)
    ex._optimize(student, w / "raw.onnx", mha, weight_only=True)
    names = {i.name for i in ort.InferenceSession(str(mha), providers=["CPUExecutionProvider"]).get_inputs()}
    calib = sorted(sample.pairs[: args.calib_pairs], key=lambda p: len(p[0]) + len(p[1]))  # length-bucketed batches of 16
    batches = [{k: v for k, v in scorer.encode([q for q, _ in calib[i:i + 16]], [d for _, d in calib[i:i + 16]]).items() if k in names}
               for i in range(0, len(calib), 16)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    static = w / f"static-{args.calibration}.onnx"
    extra = {"CalibPercentile": 99.99} if args.calibration == "Percentile" else {}
    quantize_static(str(mha), str(w / "matmuls.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    calibrate_method=getattr(CalibrationMethod, args.calibration), extra_options=extra)
    quantize_dynamic(str(w / "matmuls.onnx"), str(static), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    build_s = time.perf_counter() - start

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    for name, path in ((f"static QDQ int8 ({args.calibration})", static), ("dynamic int8 (the export's)", args.onnx / "model.int8.onnx")):
        scorer.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        scorer.score(held.pairs[:32])  # warm-up
        t = time.perf_counter()
        scores = np.asarray(scorer.score(held.pairs), np.float64)
        seconds = time.perf_counter() - t
        alone = np.array([scorer.score([p])[0] for p in held.pairs[:32]])
        rows.append({"graph": name, "mean_abs_diff": float(np.abs(scores - reference).mean()), "fp32_score_sd": float(reference.std()),
                     "fidelity_ndcg10": fidelity_ndcg(scores, held, reference), "pairs_per_s": len(held.pairs) / seconds,
                     "batch_max_abs_diff": float(np.abs(alone - scores[:32]).max()), "mb": path.stat().st_size / 1e6})
    command = (f"python benchmarks/int8_static_probe.py --model {args.model} --onnx {args.onnx} --pairs {args.pairs} "
               f"--calibration {args.calibration} --calib-pairs {args.calib_pairs} --eval-pairs {args.eval_pairs} --threads {args.threads}")
    env = environment("onnxruntime", "onnx", "torch")
    load = os.getloadavg()
    write_json("int8_static_probe", {"command": command, "rows": rows, "build_s": build_s, "env": env,
                                                               "load_average_at_end": load})
    md = ["# Static (calibrated) vs dynamic int8 on one student", "",
          (f"Made by `{command}` on {time.strftime('%Y-%m-%d')} ({env['cores']} cores, onnxruntime {env['onnxruntime']}); "
           f"{len(held.pairs)} held-out pairs of {held.num_queries} groups, calibration on {args.calib_pairs} other pairs. "
           f"Building the static graph took {build_s:.0f} s. Load average at the end: {', '.join(f'{x:.2f}' for x in load)}."), "",
          "| graph | mean score change vs fp32 (fp32 score sd) | nDCG@10 vs fp32's ranking | pairs/s | max score change, alone vs batched | MB |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['graph']} | {r['mean_abs_diff']:.4f} ({r['fp32_score_sd']:.3f}) | {r['fidelity_ndcg10']:.4f} | {r['pairs_per_s']:.1f} "
           f"| {r['batch_max_abs_diff']:.2e} | {r['mb']:.1f} |" for r in rows]
    write_markdown("int8_static_probe", md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
