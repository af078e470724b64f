#!/usr/bin/env bash
# Side venv for the "sentence-transformers CrossEncoder (ONNX backend)" row of benchmarks/onnx_speed.py.
# sentence-transformers' ONNX backend needs optimum[onnxruntime] (optimum-onnx), which requires
# transformers < 4.58; the project venv has transformers 5.x, so that row runs under this interpreter:
#   python benchmarks/onnx_speed.py --st-python /tmp/venv-st/bin/python   (or env ST_ONNX_PYTHON)
# CPU only (onnxruntime, never onnxruntime-gpu); torch first, so the CPU wheel of that exact version is the one kept.
# transformers 4.57.6 reads the students' checkpoints saved by transformers 5.x.
# Usage: bash benchmarks/setup_st_onnx_venv.sh [CE_DIR]
#   CE_DIR (a cross-encoder student folder): also check that the ONNX backend scores it like the torch backend.
set -euo pipefail
VENV=${VENV:-/tmp/venv-st}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q torch==2.13.0 sentence-transformers==5.7.0 "optimum-onnx[onnxruntime]==0.1.0" optimum==2.1.0 \
    transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 onnxruntime==1.32.0 onnx==1.23.2 numpy==2.4.6
if "$VENV/bin/pip" show -q onnxruntime-gpu 2>/dev/null; then
    echo "onnxruntime-gpu is installed in $VENV: remove it (this venv is CPU only)" >&2
    exit 1
fi
"$VENV/bin/pip" check
"$VENV/bin/python" -c 'import importlib.metadata as m, platform; print("python", platform.python_version(), *(f"{p} {m.version(p)}" for p in ("torch", "sentence-transformers", "transformers", "optimum", "optimum-onnx", "onnxruntime")))'
if [ $# -ge 1 ]; then
    CHECK=$(mktemp -d)
    trap 'rm -rf "$CHECK"' EXIT
    cp -r "$1" "$CHECK/ce"  # the export lands in a copy, never in the student folder
    (cd "$CHECK" && "$VENV/bin/python" - "$CHECK/ce" <<'PY'
import sys

import numpy as np
from sentence_transformers import CrossEncoder

pairs = [("what causes fever", "Fever is caused by infection and the immune response."),
         ("what causes fever", "The stock market closed higher today."),
         ("protein folding", "Chaperones assist protein folding in the cell."),
         ("protein folding", "A recipe for chocolate cake.")]
torch_scores = CrossEncoder(sys.argv[1], device="cpu").predict(pairs, show_progress_bar=False)
onnx_scores = CrossEncoder(sys.argv[1], device="cpu", backend="onnx").predict(pairs, show_progress_bar=False)
diff = float(np.abs(np.asarray(torch_scores) - np.asarray(onnx_scores)).max())
print("torch backend:", np.round(torch_scores, 6).tolist())
print("onnx backend: ", np.round(onnx_scores, 6).tolist())
print(f"max |difference| {diff:.2e}")
sys.exit(0 if diff < 1e-4 else 1)
PY
    )
fi
