"""Scale-out labelling on Ray Data: a pool of actors, each holding one teacher (one per GPU).

The driver reads the candidate groups, skips those already in the label store, and streams
batches (whole query groups) through ``map_batches`` on an actor pool; it writes each
scored batch to the store as it arrives, so the single-process guarantees hold: one
transaction per batch, a rerun resumes, the labels are the same as
:func:`teacher.labeling.label_pairs` computes.

On a cluster: start Ray there (``ray start --head`` / ``--address``), pass
``address="auto"`` (or the head's address), ``num_workers`` = the number of GPUs and
``num_gpus=1``. For a teacher behind a serving cluster (vLLM or TGI with an
OpenAI-compatible API), the ``openai`` teacher with ``max_concurrency`` is usually simpler.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from reranker.errors import MissingDependencyError
from reranker.records import Corpus, Query, Run

from .base import Teacher, TeacherError, make_teacher
from .labeling import LabelReport, batches_of_groups, query_groups
from .store import LabelStore

log = logging.getLogger(__name__)


class _TeacherActor:
    """Runs in a Ray worker: builds the teacher once, then scores one batch per call."""

    def __init__(self, name: str, params: dict[str, Any], corpus_ref):
        import ray

        self.teacher = make_teacher(name, **params)
        self.teacher.prepare(ray.get(corpus_ref) if isinstance(corpus_ref, ray.ObjectRef) else corpus_ref)
        self.teacher.warm_up()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from .base import Pair

        out: dict[str, list] = {"batch_id": [], "query_id": [], "doc_id": [], "score": [], "label": []}
        for i, bid in enumerate(batch["batch_id"]):
            pairs = [Pair(str(q), str(d), str(qt), str(dt), None if math.isnan(f) else float(f)) for q, d, qt, dt, f in zip(
                batch["query_id"][i], batch["doc_id"][i], batch["query"][i], batch["document"][i], batch["first_stage"][i])]
            js = self.teacher.score_batch(pairs)
            out["batch_id"].append(bid)
            out["query_id"].append([p.query_id for p in pairs])
            out["doc_id"].append([p.doc_id for p in pairs])
            out["score"].append(np.array([j.score for j in js], dtype=np.float64))
            out["label"].append(np.array([j.label for j in js], dtype=np.float64))
        return out


def label_pairs_ray(
    teacher: Teacher, queries: Mapping[str, Query], corpus: Corpus, candidates: Run, store: LabelStore,
    num_workers: int = 2, num_gpus: float = 0.0, batch_pairs: int = 64, address: str | None = None,
) -> LabelReport:
    """Label what ``store`` lacks with ``num_workers`` Ray actors (see the module docstring)."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("Ray scale-out", "ray", exc) from exc
    start = time.perf_counter()
    report = LabelReport(queries=len(candidates), pairs=candidates.num_entries())
    fp, prompt = teacher.fingerprint, teacher.prompt_version
    store.register_teacher(fp, teacher.describe())
    todo = []
    for group in query_groups(queries, corpus, candidates):
        if len(store.done(fp, prompt, [(p.query_id, p.doc_id) for p in group])) == len(group):
            report.skipped += len(group)
        else:
            todo.append(group)
    rows = [
        {"batch_id": i, "query_id": [p.query_id for p in b], "doc_id": [p.doc_id for p in b],
         "query": [p.query for p in b], "document": [p.document for p in b],
         "first_stage": [math.nan if p.first_stage is None else p.first_stage for p in b]}
        for i, b in enumerate(batches_of_groups(iter(todo), batch_pairs))
    ]
    if rows:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        corpus_ref = ray.put(corpus)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * num_workers)))
        scored = ds.map_batches(
            _TeacherActor, batch_size=1, concurrency=num_workers, num_gpus=num_gpus,
            fn_constructor_kwargs={"name": teacher.name, "params": teacher.params, "corpus_ref": corpus_ref},
        )
        seen = 0
        for row in scored.iter_rows():
            triples = list(zip(row["query_id"], row["doc_id"], row["score"], row["label"]))
            report.labelled += store.add_batch(fp, prompt, [(str(q), str(d), float(s), float(lab)) for q, d, s, lab in triples])
            seen += 1
        if seen != len(rows):
            raise TeacherError(f"Ray returned {seen} of {len(rows)} batches")
    report.seconds = time.perf_counter() - start
    log.info("Ray: labelled %d pairs (%d already done) with %d workers in %.1f s", report.labelled, report.skipped, num_workers, report.seconds)
    return report
