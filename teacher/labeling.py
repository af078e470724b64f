"""Labelling: run a teacher over candidate pairs and write every batch to the label store.

Batches hold whole query groups (a teacher may normalise within a query), each batch is
written in one transaction as soon as it is scored, and queries already in the store are
skipped, so an interrupted run resumes where it stopped with the same labels. A failing
batch is retried with backoff and then reported; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from reranker.errors import RerankerError
from reranker.records import Corpus, Query, Run

from .base import Pair, Teacher, TeacherError
from .store import LabelStore

log = logging.getLogger(__name__)


@dataclass
class LabelReport:
    queries: int = 0
    pairs: int = 0
    labelled: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0


def query_groups(queries: Mapping[str, Query], corpus: Corpus, candidates: Run) -> Iterator[list[Pair]]:
    """One list of pairs per query of ``candidates``, in the run's order, each with its run score as ``first_stage``;
    unknown ids are errors."""
    for qid in candidates:
        if qid not in queries:
            raise RerankerError(f"the candidates name query {qid!r}, which the queries do not have")
        group = []
        for hit in candidates.ranking(qid):
            doc = corpus.get(hit.doc_id)
            if doc is None:
                raise RerankerError(f"the candidates of query {qid!r} name document {hit.doc_id!r}, which the corpus does not have")
            group.append(Pair(qid, hit.doc_id, queries[qid].text, doc.contents, hit.score))
        yield group


def held_out_queries(query_ids: Iterable[str], share: float, seed: int = 0) -> set[str]:
    """A seeded ``share`` of the query ids (at least one when there are two or more): the pipeline's dev queries, on
    which an ensemble's weights are checked before labelling."""
    import random

    order = sorted(query_ids)
    random.Random(seed).shuffle(order)
    return set(order[: max(1, round(len(order) * share)) if len(order) > 1 else 0])


def batches_of_groups(groups: Iterator[list[Pair]], batch_pairs: int) -> Iterator[list[Pair]]:
    """Whole query groups packed into batches of up to ``batch_pairs`` pairs (a larger group is a batch of its own)."""
    batch: list[Pair] = []
    for group in groups:
        if batch and len(batch) + len(group) > batch_pairs:
            yield batch
            batch = []
        batch.extend(group)
    if batch:
        yield batch


def _score_with_retries(teacher: Teacher, batch: list[Pair], retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            judgements = teacher.score_batch(batch)
            if len(judgements) != len(batch):
                raise TeacherError(f"teacher {teacher.name} returned {len(judgements)} labels for {len(batch)} pairs")
            return judgements
        except RerankerError as exc:
            if attempt == retries:
                qids = sorted({p.query_id for p in batch})
                raise TeacherError(
                    f"teacher {teacher.name} failed on a batch of {len(batch)} pairs (queries {', '.join(qids[:5])}"
                    f"{' ...' if len(qids) > 5 else ''}) after {retries + 1} attempts: {exc}"
                ) from None
            wait = backoff * 2**attempt
            log.warning("teacher batch failed (%s); retrying in %.1f s", exc, wait)
            time.sleep(wait)


def label_pairs(
    teacher: Teacher, queries: Mapping[str, Query], corpus: Corpus, candidates: Run, store: LabelStore,
    batch_pairs: int = 64, retries: int = 2, backoff: float = 1.0, progress: bool = True,
) -> LabelReport:
    """Label every candidate pair not yet in ``store`` for this teacher and prompt."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    report = LabelReport(queries=len(candidates), pairs=candidates.num_entries())
    store.register_teacher(teacher.fingerprint, teacher.describe())
    fp, prompt = teacher.fingerprint, teacher.prompt_version

    def pending() -> Iterator[list[Pair]]:
        for group in query_groups(queries, corpus, candidates):
            if len(store.done(fp, prompt, [(p.query_id, p.doc_id) for p in group])) == len(group):
                report.skipped += len(group)
                bar.update(len(group))
                continue
            yield group

    prepared = False
    with tqdm(total=report.pairs, desc=f"labelling ({teacher.name})", unit="pair", disable=not progress) as bar:
        for batch in batches_of_groups(pending(), batch_pairs):
            if not prepared:
                teacher.prepare(corpus)
                teacher.warm_up()
                prepared = True
            judgements = _score_with_retries(teacher, batch, retries, backoff)
            rows = [(p.query_id, p.doc_id, j.score, j.label) for p, j in zip(batch, judgements)]
            report.labelled += store.add_batch(fp, prompt, rows)
            bar.update(len(batch))
    report.seconds = time.perf_counter() - start
    log.info(
        "labelled %d pairs (%d already done) with %s in %.1f s (%.1f pairs/s)",
        report.labelled, report.skipped, fp, report.seconds, report.pairs_per_second,
    )
    return report
