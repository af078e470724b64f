"""One interface for every model that scores (query, document) pairs, and one loader for model folders.

A :class:`Scorer` is what the batch re-ranker (``reranker rerank``), the HTTP server and the
benchmarks call, whatever runs underneath: an exported ONNX folder run by ONNX Runtime (the
core's own backend) or a PyTorch student, which the application registers at start-up.
:func:`load_model` tells the two apart by the files in the folder (an ONNX export carries ``onnx_manifest.json``; a student folder
``student_config.json``) unless a backend is named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import RerankerError
from .registry import BackendSpec, Registry

ONNX_MANIFEST = "onnx_manifest.json"
STUDENT_CONFIG = "student_config.json"


def sigmoid(x: Any) -> Any:
    """The logistic function, stable for any ``|x|`` (``0.5 * (1 + tanh(x / 2))`` in float64, clipped to [0, 1]): a
    float for a number, an array for an array. The one place raw scores become probabilities: the server's
    relevance scores, the teachers' labels, their calibration and the label store's exports."""
    y = np.clip(0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64))), 0.0, 1.0)
    return float(y) if np.ndim(y) == 0 else y


@runtime_checkable
class Scorer(Protocol):
    """Scores pairs; higher is more relevant. ``kind`` is ``"t5"`` or ``"cross-encoder"``."""

    kind: str

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """float32 scores in input order (raw: log-odds for T5, the logit for cross-encoders)."""
        ...

    def rank(self, query: str, documents: Sequence[str], top_n: int | None = None, batch_size: int = 32) -> list[tuple[int, float]]:
        """``(index into documents, score)``, best first (ties by index), at most ``top_n``."""
        ...

    def pair_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair takes after formatting and truncation (for token-budget batching)."""
        ...


class PairScoring:
    """What every scorer derives from its ``score`` and ``encode``: ranking and token counts (one copy for all backends)."""

    def rank(self, query: str, documents: Sequence[str], top_n: int | None = None, batch_size: int = 32) -> list[tuple[int, float]]:
        """``(index into documents, score)``, best first (ties by index), at most ``top_n``."""
        scores = self.score([(query, d) for d in documents], batch_size)  # type: ignore[attr-defined]
        ranked = sorted(enumerate(scores.tolist()), key=lambda p: (-p[1], p[0]))
        return ranked[:top_n] if top_n is not None else ranked

    def pair_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair takes after formatting and truncation (what token-budget batching counts)."""
        pairs = list(pairs)
        out: list[int] = []
        for start in range(0, len(pairs), 256):
            chunk = pairs[start : start + 256]
            mask = self.encode([q for q, _ in chunk], [d for _, d in chunk])["attention_mask"]  # type: ignore[attr-defined]
            out.extend(int(n) for n in mask.sum(-1).tolist())
        return out


#: the core's model backends; the application adds ``torch`` (the PyTorch student) at start-up
#: (:func:`reranker.app.register_backends`), so the core never reaches into ``student``
MODEL_BACKENDS = Registry(
    "model backend",
    {"onnx": BackendSpec("reranker.onnx_runtime", "load_onnx", "cpu", "an exported ONNX folder (onnx_manifest.json), ONNX Runtime")},
    unregistered={"torch": "a PyTorch student folder is loaded by the application (`reranker` CLI and server) or, "
                           "from Python, after reranker.app.register_backends() (or with student.models.load_student)"},
)


def detect_backend(folder: str | Path) -> str:
    """``"onnx"`` or ``"torch"`` from the files in ``folder``; a clear error when it is neither."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RerankerError(f"{folder}: no such model folder")
    if (folder / ONNX_MANIFEST).is_file():
        return "onnx"
    if (folder / STUDENT_CONFIG).is_file():
        return "torch"
    raise RerankerError(
        f"{folder}: not a model folder (expected {ONNX_MANIFEST} from `reranker export` or {STUDENT_CONFIG} from `reranker distill`)"
    )


def load_model(folder: str | Path, backend: str = "auto", **options: Any) -> Scorer:
    """The scorer in ``folder``: ``backend`` ``"auto"`` (by its files), ``"torch"`` or ``"onnx"``.

    ``options`` go to the backend's loader (e.g. ``device=`` for torch, ``providers=`` for ONNX).
    """
    name = detect_backend(folder) if backend == "auto" else backend
    loader = MODEL_BACKENDS.load(name)
    return loader(folder, **options)
