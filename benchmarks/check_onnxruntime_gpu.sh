#!/usr/bin/env bash
# Does the ONNX scorer work with onnxruntime-gpu installed instead of onnxruntime (and no torch)?
# Makes a separate venv with onnxruntime-gpu, scores an exported folder there and in the project's
# .venv (CPU onnxruntime), and compares. On a machine without a GPU, onnxruntime-gpu lists the CUDA
# provider but cannot load it; the scorer must fall back to the CPU provider with the same scores.
# Usage: bash benchmarks/check_onnxruntime_gpu.sh EXPORT_DIR   (e.g. runs/demo/onnx after `make demo`)
set -euo pipefail
EXPORT=$(realpath "${1:?usage: $0 EXPORT_DIR}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/tmp/venv-onnxruntime-gpu}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q onnxruntime-gpu numpy "pydantic>=2.6" "transformers>=4.44" tokenizers typer rich tqdm
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
SCRIPT='
import json, sys
from reranker.scoring import load_model
pairs = [("parental leave weeks", "New parents get 16 weeks of paid leave."),
         ("sick days", "Employees get 10 sick days per year."), ("parental leave", "Expense claims are filed monthly.")]
out = {}
for precision in ("fp32", "int8"):
    scorer = load_model(sys.argv[1], precision=precision)
    out[precision] = {"providers": scorer.providers, "scores": scorer.score(pairs).tolist()}
out["torch_imported"] = "torch" in sys.modules
print(json.dumps(out))
'
GPU=$(cd /tmp && "$VENV/bin/python" -c "$SCRIPT" "$EXPORT" 2>/dev/null | tail -1)
CPU=$(cd /tmp && "$ROOT/.venv/bin/python" -c "$SCRIPT" "$EXPORT" 2>/dev/null | tail -1)
echo "onnxruntime-gpu: $GPU"
echo "onnxruntime:     $CPU"
python3 - "$GPU" "$CPU" <<'PY'
import json, sys
gpu, cpu = (json.loads(a) for a in sys.argv[1:])
for p in ("fp32", "int8"):
    diff = max(abs(a - b) for a, b in zip(gpu[p]["scores"], cpu[p]["scores"]))
    print(f"{p}: providers {gpu[p]['providers']} vs {cpu[p]['providers']}, max |score difference| {diff:.2e}")
    assert diff < 1e-5, "the two onnxruntime packages disagree"
assert not gpu["torch_imported"], "the ONNX scorer imported torch"
print("OK: the scorer runs with onnxruntime-gpu installed (torch-free) and scores as with onnxruntime")
PY
