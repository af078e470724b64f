"""Seed judgements: the few hundred (query, passage, grade) examples a user has judged.

Read from JSONL (``{"query_id" | "query", "doc_id", "label"}`` a line; ``grade`` or ``score``
also name the label) or from qrels (TREC ``qid 0 docid grade`` or BEIR TSV
``query-id<TAB>corpus-id<TAB>score`` with its header). Every line is checked against the
data set: an unknown query or doc id, a pair judged twice, or a label outside ``0..grade_max``
(binary 0/1 by default) is a :class:`~reranker.errors.DataFormatError` naming the file and line.

A JSONL line may give the query's text instead of its id (``"query": "..."``); a text the data
set does not have becomes a new query with a stable id, ``seed-<hash>``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reranker.errors import DataFormatError, RerankerError
from reranker.io.jsonl import iter_jsonl, open_text
from reranker.records import Corpus, Query

LABEL_KEYS = ("label", "grade", "score", "relevance")


@dataclass(frozen=True, slots=True)
class SeedJudgement:
    query_id: str
    doc_id: str
    grade: int
    line: int

    def target(self, grade_max: int) -> float:
        """The grade scaled to [0, 1]: the probability target of calibration and tuning."""
        return self.grade / grade_max


@dataclass
class SeedSet:
    """Validated seed judgements and the queries they use (the data set's, plus new ones from text)."""

    path: str
    judgements: list[SeedJudgement]
    queries: dict[str, Query]
    grade_max: int

    def targets(self) -> dict[tuple[str, str], float]:
        return {(j.query_id, j.doc_id): j.target(self.grade_max) for j in self.judgements}

    def __len__(self) -> int:
        return len(self.judgements)


def _grade(value, name: str, lineno: int, grade_max: int) -> int:
    allowed = "0 or 1" if grade_max == 1 else f"an integer grade 0..{grade_max}"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataFormatError(name, lineno, f"label {value!r} is not a number; expected {allowed}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(name, lineno, f"label {value!r} is not a number; expected {allowed}")
    if value != int(value) or not 0 <= value <= grade_max:
        hint = "" if grade_max > 1 else " (graded judgements: pass --grade-max G)"
        raise DataFormatError(name, lineno, f"label {value!r} is outside the allowed range: expected {allowed}{hint}")
    return int(value)


def _seed_query_id(text: str) -> str:
    return "seed-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _rows_jsonl(path: Path, queries: dict[str, Query]):
    name = str(path)
    by_text = {q.text: qid for qid, q in queries.items()}
    with open_text(path) as f:
        for lineno, obj in iter_jsonl(f, name):
            qid = obj.get("query_id", obj.get("qid"))
            text = obj.get("query")
            if qid is None and not isinstance(text, str):
                raise DataFormatError(name, lineno, "expected a 'query_id' or a 'query' text")
            if qid is None:
                qid = by_text.get(text)
                if qid is None:
                    qid = _seed_query_id(text)
                    queries[qid] = Query(qid, text)
                    by_text[text] = qid
            doc = obj.get("doc_id", obj.get("docid"))
            if doc is None:
                raise DataFormatError(name, lineno, "expected a 'doc_id'")
            label = next((obj[k] for k in LABEL_KEYS if k in obj), None)
            if label is None:
                raise DataFormatError(name, lineno, f"expected a label field ({', '.join(LABEL_KEYS)})")
            yield lineno, str(qid), str(doc), label


def _rows_qrels(path: Path):
    from reranker.io.trec import iter_judgement_lines

    with open_text(path) as f:
        yield from iter_judgement_lines(f, str(path))


def read_seeds(path: str | Path, queries: Mapping[str, Query], corpus: Corpus, grade_max: int = 1) -> SeedSet:
    """Read and validate a seed file against ``queries`` and ``corpus``; errors name the line."""
    if grade_max < 1:
        raise RerankerError(f"grade_max must be at least 1, got {grade_max}")
    path = Path(path)
    name = str(path)
    known = dict(queries)
    rows = _rows_jsonl(path, known) if path.suffix.lower() in (".jsonl", ".json") else _rows_qrels(path)
    seen: dict[tuple[str, str], int] = {}
    out: list[SeedJudgement] = []
    for lineno, qid, doc, label in rows:
        if qid not in known:
            raise DataFormatError(name, lineno, f"unknown query id {qid!r} (not among the data set's {len(queries)} queries)")
        if doc not in corpus:
            raise DataFormatError(name, lineno, f"unknown doc id {doc!r} (not in the corpus)")
        if (qid, doc) in seen:
            raise DataFormatError(name, lineno, f"pair ({qid!r}, {doc!r}) is judged twice (first on line {seen[qid, doc]})")
        seen[qid, doc] = lineno
        out.append(SeedJudgement(qid, doc, _grade(label, name, lineno, grade_max), lineno))
    if not out:
        raise DataFormatError(name, None, "the seed file has no judgements")
    used = {j.query_id for j in out}
    return SeedSet(name, out, {q: known[q] for q in sorted(used)}, grade_max)


def split_by_query(seeds: SeedSet, holdout: float, seed: int = 0) -> tuple[list[SeedJudgement], list[SeedJudgement]]:
    """(fit, held-out) judgements; whole queries go to one side (``holdout`` is the held-out share of queries)."""
    import random

    if not 0.0 <= holdout < 1.0:
        raise RerankerError(f"holdout must be in [0, 1), got {holdout}")
    qids = sorted({j.query_id for j in seeds.judgements})
    random.Random(seed).shuffle(qids)
    n_out = round(len(qids) * holdout)
    if holdout > 0 and (n_out == 0 or n_out == len(qids)):
        raise RerankerError(f"a hold-out share of {holdout} of {len(qids)} seed queries leaves one side empty")
    held = set(qids[:n_out])
    return [j for j in seeds.judgements if j.query_id not in held], [j for j in seeds.judgements if j.query_id in held]
