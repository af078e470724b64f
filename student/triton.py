"""A Triton Inference Server model repository from an ONNX export folder.

Layout (Triton's): ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/model.onnx``, served by
the ``onnxruntime_onnx`` platform with dynamic batching. The graph takes token ids, so clients
tokenise as the export folder does (:func:`reranker.formatting.encode_pairs` with the folder's
tokenizer and ``student_config.json``; the files are copied beside the model as
``REPO/<name>/tokenizer/``, which Triton ignores).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from reranker.errors import RerankerError
from reranker.onnx_manifest import OnnxManifest

log = logging.getLogger(__name__)

CLIENT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model", "vocab.txt",
                "student_config.json", "onnx_manifest.json")


def config_pbtxt(manifest: OnnxManifest, name: str, max_batch_size: int = 64, queue_delay_us: int = 2000) -> str:
    """``config.pbtxt``: int64 ``[batch, -1]`` token inputs, the fp32 score ``[batch]``, dynamic batching."""
    inputs = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}' for n in manifest.inputs)
    preferred = sorted({b for b in (8, 16, 32, max_batch_size) if b <= max_batch_size})
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        "output [\n"
        f'  {{\n    name: "{manifest.output}"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}\n'
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}\n"
    )


def write_triton_repository(export_dir: str | Path, repo: str | Path, name: str = "reranker", precision: str | None = None,
                            max_batch_size: int = 64) -> Path:
    """Write the model ``name`` into the Triton repository ``repo`` from ``export_dir``; returns its folder.

    ``precision``: which exported graph (default fp16 when exported, since Triton is for GPUs; else fp32).
    """
    export_dir = Path(export_dir)
    manifest = OnnxManifest.load(export_dir)
    precision = precision or ("fp16" if "fp16" in manifest.models else "fp32")
    if precision not in manifest.models:
        raise RerankerError(f"{export_dir}: no {precision} model to put into the Triton repository (have {', '.join(manifest.models)})")
    if max_batch_size < 1:
        raise RerankerError(f"max_batch_size must be at least 1, got {max_batch_size}")
    folder = Path(repo) / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(export_dir / manifest.models[precision].file, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(config_pbtxt(manifest, name, max_batch_size), encoding="utf-8")
    (folder / "tokenizer").mkdir()
    for file in (*CLIENT_FILES, *([manifest.template] if manifest.template else [])):
        if (export_dir / file).is_file():
            shutil.copyfile(export_dir / file, folder / "tokenizer" / file)
    log.info("Triton model %r (%s) written to %s", name, precision, folder)
    return folder
