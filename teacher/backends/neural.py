"""sentence-transformers teachers: a bi-encoder (cosine) and a cross-encoder (logit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reranker.errors import MissingDependencyError, RerankerError
from reranker.retrieval.dense import DEFAULT_MODEL, load_bi_encoder, resolve_model_path
from reranker.scoring import sigmoid

from ..base import Judgement, Pair, Teacher
from .normalize import zscore_judgements


class BiEncoderTeacher(Teacher):
    """Cosine similarity of query and passage embeddings (default: the packaged all-MiniLM-L6-v2).

    The label is the logistic of the per-query z-score (cosines are no probabilities).
    """

    name = "bi-encoder"

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 32, device: str | None = None):
        super().__init__(model=model)
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._doc_cache: dict[tuple[str, str], np.ndarray] = {}  # candidates recur across queries: encode each once
        self.cache_size = 200_000

    def warm_up(self) -> None:
        if self._model is None:
            self._model = load_bi_encoder(self.params["model"], self.device)

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        self.warm_up()
        queries = sorted({p.query_id: p.query for p in pairs}.items())
        q_index = {qid: i for i, (qid, _) in enumerate(queries)}
        enc = dict(batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        q_emb = np.asarray(self._model.encode([q for _, q in queries], **enc), dtype=np.float32)
        # keyed by id and text: a pair may carry another text under a corpus id (a passage without its query sentence)
        new = list(dict.fromkeys((p.doc_id, p.document) for p in pairs if (p.doc_id, p.document) not in self._doc_cache))
        if new:
            if len(self._doc_cache) + len(new) > self.cache_size:
                self._doc_cache.clear()
            emb = np.asarray(self._model.encode([text for _, text in new], **enc), dtype=np.float32)
            self._doc_cache.update(zip(new, emb))
        raw = [float(q_emb[q_index[p.query_id]] @ self._doc_cache[p.doc_id, p.document]) for p in pairs]
        return zscore_judgements(pairs, raw)


class CrossEncoderTeacher(Teacher):
    """A sentence-transformers CrossEncoder with one output: label = sigmoid(logit / T).

    ``model`` is a hub id (e.g. ``cross-encoder/ms-marco-MiniLM-L6-v2``) or a local folder.
    """

    name = "cross-encoder"

    def __init__(self, model: str, temperature: float = 1.0, max_length: int = 512, batch_size: int = 32, device: str | None = None):
        super().__init__(model=model, temperature=temperature, max_length=max_length)
        if temperature <= 0:
            raise RerankerError(f"temperature must be > 0, got {temperature}")
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def warm_up(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise MissingDependencyError("the cross-encoder teacher", "dense", exc) from exc
        try:
            self._model = CrossEncoder(
                resolve_model_path(self.params["model"]), max_length=self.params["max_length"],
                device=self.device, activation_fn=torch.nn.Identity(),
            )
        except OSError as exc:
            raise RerankerError(f"could not load the cross-encoder {self.params['model']!r}: {exc}") from None
        if self._model.num_labels != 1:
            raise RerankerError(f"cross-encoder {self.params['model']!r} has {self._model.num_labels} outputs; a relevance model has one")

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        self.warm_up()
        logits = self._model.predict(
            [(p.query, p.document) for p in pairs], batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        t = self.params["temperature"]
        return [Judgement(score=float(x) / t, label=sigmoid(float(x) / t)) for x in np.asarray(logits, dtype=np.float64).reshape(-1)]
