"""Parity of an exported model against the PyTorch student: a sample of real pairs and the figures.

The sample is grouped by query (each query with its BM25 candidates), so agreement is measured
as a re-ranker is used: the max and mean |score difference| over all pairs, and the mean overlap
of each query's top 10 under both models.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reranker.errors import DataFormatError, RerankerError
from reranker.onnx_manifest import Parity, Tolerance, batch_bound

log = logging.getLogger(__name__)

CANDIDATES_PER_QUERY = 16


@dataclass
class ParitySample:
    """``pairs`` and, for each, the index of its query group; ``source`` says where they came from.

    ``labels``: each pair's relevance grade from the data set's judgements (0 = not judged relevant),
    or ``None`` when the sample has no judgements (a pairs file, a data set without qrels).
    """

    pairs: list[tuple[str, str]]
    groups: list[int]
    source: str
    labels: list[int] | None = None

    @property
    def num_queries(self) -> int:
        return len(set(self.groups))


def load_parity_sample(spec: str | Path | None = None, size: int = 128, seed: int = 0) -> ParitySample:
    """About ``size`` real pairs: queries sampled from a data set, each with its bm25s top 16.

    ``spec``: ``None`` (the embedded demo corpus, without its judgements: pairs for numeric parity, not for choosing a
    precision, which :func:`student.export.export_student` refuses to do on them), a JSONL file of pairs
    (``{"query", "document"}`` per line, optional ``"qid"`` to group them, default: the query text, and
    optional ``"label"``, a relevance grade), a JSONL of labelled groups (``reranker label --export``: each
    query with its candidates' texts; no judgements), or any data-set spec (its qrels, if any, grade the pairs).
    """
    if size < 1:
        raise RerankerError(f"the parity sample needs at least 1 pair, got {size}")
    if spec is not None and _first_row_has(Path(spec), "query", "document"):
        return _pairs_file(Path(spec), size)
    if spec is not None and _first_row_has(Path(spec), "query", "candidates"):
        return _groups_file(Path(spec), size)
    from reranker.io.dataset import load_dataset
    from reranker.io.documents import ChunkConfig
    from reranker.retrieval import build_index

    if spec is None:
        from reranker.io.dataset import demo_data

        root = demo_data()
        # no qrels: the demo's judgements grade the demo's corpus, never another corpus's export
        ds = load_dataset(root / "docs", queries=root / "queries.jsonl", chunking=ChunkConfig())
        source = "embedded demo corpus (Northwind Analytics), bm25s top 16; numeric parity only"
    else:
        ds = load_dataset(str(spec))
        source = f"{spec}, bm25s top 16"
    queries = ds.require_queries()
    qids = sorted(queries)
    random.Random(seed).shuffle(qids)
    qids = qids[: max(1, -(-size // CANDIDATES_PER_QUERY))]
    run = build_index(ds.corpus, "bm25s").search({q: queries[q].text for q in qids}, k=CANDIDATES_PER_QUERY)
    from reranker.io.documents import document_of

    judged = ds.qrels if ds.qrels is not None and len(ds.qrels) else None
    pairs, groups, labels = [], [], []
    for g, qid in enumerate(qids):
        for hit in run.ranking(qid) if qid in run else []:
            pairs.append((queries[qid].text, ds.corpus[hit.doc_id].contents))
            groups.append(g)
            if judged is not None:
                grades = judged.get(qid, {})
                # a chunked corpus is judged per document: a passage takes its document's grade
                labels.append(int(grades.get(hit.doc_id, grades.get(document_of(hit.doc_id, ds.corpus) or "", 0))))
    if not pairs:
        raise RerankerError(f"parity sample: BM25 found no candidates for the sampled queries of {spec or 'the demo corpus'}")
    return ParitySample(pairs[:size], groups[:size], source, labels[:size] if judged is not None else None)


def _first_row_has(path: Path, *keys: str) -> bool:
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and all(k in row for k in keys)


def _rows(path: Path, expected: str, read):
    """``(line number, read(row))`` for each JSON line of ``path``; a malformed line is a DataFormatError naming it."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, read(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataFormatError(path, n, f"expected {expected} ({exc})") from None


def _pairs_file(path: Path, size: int) -> ParitySample:
    pairs, keys, labels = [], [], []

    def read(row: dict) -> tuple:
        return (str(row["query"]), str(row["document"])), str(row.get("qid", row["query"])), (
            None if row.get("label") is None else int(row["label"]))

    for _, (pair, key, label) in _rows(path, "a JSON object with 'query', 'document' and an optional integer 'label'", read):
        pairs.append(pair)
        keys.append(key)
        labels.append(label)
        if len(pairs) >= size:
            break
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    graded = all(label is not None for label in labels)
    return ParitySample(pairs, [ids[k] for k in keys], f"{path} (first {len(pairs)} pairs)", labels if graded else None)


def _groups_file(path: Path, size: int) -> ParitySample:
    """Pairs of labelled groups (``reranker label --export``), group by group, until ``size`` pairs."""
    pairs, groups = [], []
    read = lambda row: [(str(row["query"]), str(c["text"])) for c in row["candidates"]]
    for n, group in _rows(path, "a labelled group with 'query' and 'candidates' holding 'text'", read):
        pairs += group
        groups += [n] * len(group)
        if len(pairs) >= size:
            break
    return ParitySample(pairs[:size], groups[:size], f"{path} (labelled groups, first {min(size, len(pairs))} pairs)")


def compare(reference: np.ndarray, candidate: np.ndarray, sample: ParitySample, tolerance: Tolerance,
            alone: np.ndarray | None = None) -> Parity:
    """Figures of ``candidate`` scores against ``reference`` ones, and whether they are within ``tolerance``.

    ``alone``: the first ``len(alone)`` pairs scored one at a time by the same graph that scored ``candidate``
    in batches: their largest difference is the graph's batch dependence."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if not np.isfinite(candidate).all():
        diff = float("inf")
        mean = float("inf")
    else:
        diff = float(np.max(np.abs(reference - candidate)))
        mean = float(np.mean(np.abs(reference - candidate)))
    agreement = top_k_agreement(reference, candidate, sample.groups, 10)
    batch = None
    if alone is not None and len(alone):
        alone = np.asarray(alone, np.float64)
        batch = float(np.max(np.abs(alone - candidate[: len(alone)]))) if np.isfinite(alone).all() else float("inf")
    ok = (tolerance.max_abs_diff is None or diff <= tolerance.max_abs_diff) and agreement >= tolerance.min_top10_agreement
    ok = ok and np.isfinite(candidate).all()
    ok = ok and (batch is None or tolerance.max_batch_diff is None or batch <= tolerance.max_batch_diff)
    return Parity(pairs=len(sample.pairs), queries=sample.num_queries, sample=sample.source, max_abs_diff=diff,
                  mean_abs_diff=mean, top10_agreement=agreement, batch_max_abs_diff=batch,
                  batch_pairs=None if alone is None else len(alone), batch_bound=batch_bound(batch, tolerance),
                  tolerance=tolerance, passed=bool(ok))


def top_k_agreement(reference: np.ndarray, candidate: np.ndarray, groups: Sequence[int], k: int = 10) -> float:
    """Mean over groups of ``|top-k(reference) & top-k(candidate)| / min(k, group size)`` (ties by position)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    overlaps = []
    for idx in by_group.values():
        n = min(k, len(idx))
        top_ref = {idx[j] for j in np.argsort(-reference[idx], kind="stable")[:n]}
        top_cand = {idx[j] for j in np.argsort(-candidate[idx], kind="stable")[:n]}
        overlaps.append(len(top_ref & top_cand) / n)
    return float(np.mean(overlaps))
