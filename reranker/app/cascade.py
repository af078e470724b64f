"""The cascade: first stage (BM25) -> student on its top ``student_top_k`` -> teacher on the student's top ``teacher_top_k``.

One implementation for the pipeline's evaluation (:func:`reranker.app.pipeline.evaluate.cascade_run`)
and the server's ``POST /search`` (:mod:`reranker.app.server.cascade`): the pool is the first
stage's top ``student_top_k`` ranked by the student (:func:`student_ranking`), the teacher
judges the student's top ``teacher_top_k`` of one query in one call (:func:`teacher_judgements`;
teachers such as the ensemble normalise within a query's group), and :func:`cascade_order`
puts the teacher's picks, in the teacher's order, above the rest in the student's order.
For a corpus split into passages (a folder of documents), :func:`per_document` folds that
order into documents, each at its best passage's place, as the evaluation folds its runs.

A cascade config (YAML or JSON, :func:`load_cascade_config`) names the corpus, the first
stage (built over the corpus at start-up, or a saved ``index`` folder), the teacher and the
two depths. ``reranker pipeline run`` writes one (``<run>/cascade.yaml``) for ``reranker
serve MODEL --cascade <run>/cascade.yaml``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reranker.config import (
    DataSpec,
    check_paths,
    data_paths,
    load_config_file,
    looks_like_path,
    resolve_path,
    validation_problems,
)
from reranker.errors import RerankerError
from reranker.io.documents import document_of
from reranker.records import Corpus, Run

log = logging.getLogger(__name__)

CascadeStage = Literal["teacher", "student"]


class CascadeConfig(BaseModel):
    """What ``reranker serve --cascade`` loads: corpus, first stage, teacher and the two depths."""

    model_config = ConfigDict(extra="forbid")

    corpus: DataSpec = Field(description="The corpus to search: a data-set spec (a string, or {spec, passage_words, ...}).")
    index: str | None = Field(None, description="A saved index folder of `reranker index` over that corpus (default: index it at start-up).")
    first_stage: str = Field("bm25s", description="The first-stage retriever (a retrieval backend).")
    student_top_k: int = Field(100, ge=1, description="First-stage candidates the student re-ranks.")
    teacher: str = Field("ensemble", description="The teacher that re-ranks the student's best (a teacher backend).")
    teacher_params: dict[str, Any] = Field(default_factory=dict, description="The teacher's parameters.")
    teacher_top_k: int = Field(10, ge=1, description="The student's best the teacher re-ranks.")

    @field_validator("corpus", mode="before")
    @classmethod
    def _spec_string(cls, value: Any) -> Any:
        return {"spec": value} if isinstance(value, str) else value

    @field_validator("first_stage")
    @classmethod
    def _known_retriever(cls, value: str) -> str:
        from reranker.retrieval import BACKENDS

        return _registered(value, BACKENDS, "retrieval backend")

    @field_validator("teacher")
    @classmethod
    def _known_teacher(cls, value: str) -> str:
        from teacher.base import TEACHERS

        return _registered(value, TEACHERS, "teacher")


def _registered(value: str, names: Collection[str], what: str) -> str:
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(names)}")
    return value


def load_cascade_config(path: str | Path) -> CascadeConfig:
    """The cascade config in ``path`` (YAML or JSON), its paths resolved against the file's folder.

    An unknown key, a wrong type or a missing path is a :class:`RerankerError` naming the key and the file.
    """
    path = Path(path)
    data = load_config_file(path)
    try:
        cfg = CascadeConfig(**data)
    except ValidationError as exc:
        raise RerankerError(f"{path}: {validation_problems(exc)}") from None
    base = path.resolve().parent
    check_paths(str(path), [*data_paths("corpus", cfg.corpus), ("index", cfg.index)], base)

    def absolute(value: str | None) -> str | None:
        return str(resolve_path(value, base).resolve()) if value is not None and looks_like_path(value) else value

    corpus = cfg.corpus.model_copy(update={k: absolute(getattr(cfg.corpus, k)) for k in ("spec", "queries", "qrels")})
    return cfg.model_copy(update={"corpus": corpus, "index": absolute(cfg.index)})


# --- the ordering (shared by evaluation and the server) ----------------------------------------


def student_ranking(pool: Sequence[str], scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """The pool's documents that the student scored, best first (equal scores by doc id, as :meth:`Run.ranking`)."""
    wanted = set(pool)
    ranked = Run({"q": {d: s for d, s in scores.items() if d in wanted}}).ranking("q")
    return [(h.doc_id, h.score) for h in ranked]


def teacher_judgements(teacher, query_id: str, query: str, docs: Sequence[tuple[str, str]]) -> dict:
    """The teacher's :class:`~teacher.base.Judgement` of each ``(doc id, text)`` of one query, in one call."""
    from teacher.base import Pair

    if not docs:
        return {}
    pairs = [Pair(query_id, doc_id, query, text) for doc_id, text in docs]
    return {p.doc_id: j for p, j in zip(pairs, teacher.score_batch(pairs))}


def cascade_order(student_ranked: Sequence[tuple[str, float]], teacher_scores: Mapping[str, float],
                  teacher_top_k: int) -> list[tuple[str, CascadeStage, float]]:
    """``(doc id, stage, score)`` best first: the student's top ``teacher_top_k`` re-ordered by the teacher's
    score (ties, and picks the teacher did not score, keep the student's order) above the rest in the student's order.

    ``score`` is the stage's own: the teacher's score for its picks (``-inf`` where it gave none), else the student's.
    """
    top, rest = list(student_ranked[:teacher_top_k]), student_ranked[teacher_top_k:]
    judged = [(doc, teacher_scores.get(doc, -math.inf)) for doc, _ in top]
    order = sorted(range(len(judged)), key=lambda i: (-judged[i][1], i))
    return [(judged[i][0], "teacher", judged[i][1]) for i in order] + [(doc, "student", score) for doc, score in rest]


def per_document(order: Sequence[tuple[str, CascadeStage, float]], corpus: Corpus) -> list[tuple[str, str | None, CascadeStage, float]]:
    """``(document id, passage id, stage, score)``: each document once, at the place of its best-ranked passage.

    A passage knows its document from its metadata (``doc_id``, set when a folder of documents is
    split into passages); for a corpus of whole documents the passage id is ``None``. The result is
    the order of :func:`reranker.io.documents.document_run` over the cascade's run (best passage wins). The fold
    goes by rank, not by score as :func:`reranker.io.documents.best_per_key` does: the teacher's picks and the
    student's rest carry scores on two scales, and only their places compare.
    """
    seen: set[str] = set()
    out = []
    for pid, stage, score in order:
        doc = document_of(pid, corpus)
        key = doc if doc is not None else pid
        if key not in seen:
            seen.add(key)
            out.append((key, pid if doc is not None else None, stage, score))
    return out


# --- loading ------------------------------------------------------------------------------------


@dataclass
class LoadedCascade:
    """The corpus, the first stage and the prepared teacher of a :class:`CascadeConfig`."""

    config: CascadeConfig
    corpus: Corpus
    retriever: Any
    teacher: Any

    def first_stage(self, query: str) -> list[str]:
        """The first stage's top ``student_top_k`` doc ids for ``query``, best first."""
        run = self.retriever.search({"q": query}, k=self.config.student_top_k)
        return [h.doc_id for h in run.ranking("q")[: self.config.student_top_k]] if "q" in run else []


def load_cascade(config: CascadeConfig) -> LoadedCascade:
    """Load the corpus, build (or open) the first-stage index, make the teacher, prepare and warm it up."""
    from reranker.config import read_data
    from reranker.retrieval import build_index, open_index
    from teacher.base import make_teacher

    start = time.perf_counter()
    corpus = read_data(config.corpus, Path.cwd()).corpus  # its paths are absolute (load_cascade_config)
    if config.index is not None:
        retriever = open_index(config.index)
        if retriever.name != config.first_stage:
            raise RerankerError(f"index {config.index} is a {retriever.name} index, but first_stage is {config.first_stage!r}")
        unknown = [d for d in getattr(retriever, "doc_ids", []) if d not in corpus]
        if unknown or retriever.num_docs != len(corpus):
            raise RerankerError(f"index {config.index} ({retriever.num_docs} documents) is not over the corpus "
                                f"{config.corpus.spec} ({len(corpus)} documents)" + (f"; e.g. {unknown[0]!r} is not in it" if unknown else ""))
    else:
        retriever = build_index(corpus, config.first_stage)
    teacher = make_teacher(config.teacher, **config.teacher_params)
    teacher.prepare(corpus)
    teacher.warm_up()
    doc = next(iter(corpus))
    teacher_judgements(teacher, "warm-up", "warm up the teacher", [(doc.id, doc.contents)])
    retriever.search({"q": "warm up"}, k=1)
    log.info("cascade ready in %.1f s: %d documents, %s top %d -> student -> %s top %d", time.perf_counter() - start, len(corpus),
             config.first_stage, config.student_top_k, config.teacher, config.teacher_top_k)
    return LoadedCascade(config, corpus, retriever, teacher)
