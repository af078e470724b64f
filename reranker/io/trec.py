"""TREC run, qrels and topics files, and BEIR's qrels TSV.

- run: ``qid Q0 docid rank score tag`` (whitespace separated);
- qrels: ``qid iteration docid grade`` (TREC) or ``query-id<TAB>corpus-id<TAB>score`` with a
  header line (BEIR);
- topics: ``qid<TAB>query text`` (MS MARCO / TREC DL style).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from ..errors import DataFormatError
from ..records import Qrels, Query, Run
from .jsonl import open_text


def _number(value: str, name: str, lineno: int, what: str, kind: type = float) -> float | int:
    try:
        return kind(value)
    except ValueError:
        raise DataFormatError(name, lineno, f"{what} must be a number, got {value!r}") from None


def read_run_stream(stream: IO[str], name: str, run_name: str | None = None) -> Run:
    run = Run(name=run_name)
    for lineno, line in enumerate(stream, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataFormatError(name, lineno, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}")
        qid, _, docid, rank, score, _tag = parts
        _number(rank, name, lineno, "rank (field 4)", int)
        run.add(qid, docid, _number(score, name, lineno, "score (field 5)"))
    return run


def read_run(path: str | Path, name: str | None = None) -> Run:
    """A TREC run file; the run is named after the file unless ``name`` is given."""
    path = Path(path)
    with open_text(path) as f:
        run = read_run_stream(f, str(path), name or path.stem)
    if not len(run):
        raise DataFormatError(path, None, "the run file has no lines")
    return run


def write_run(path: str | Path, run: Run, tag: str | None = None) -> None:
    """Write a TREC run, each query's candidates best first (trec_eval's tie order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = (tag or run.name or "reranker").replace(" ", "_")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for qid in run:
            for hit in run.ranking(qid):
                f.write(f"{qid} Q0 {hit.doc_id} {hit.rank} {hit.score!r} {tag}\n")  # repr: exact round trip, no false ties
    tmp.replace(path)


def iter_judgement_lines(stream: IO[str], name: str) -> Iterator[tuple[int, str, str, str]]:
    """``(line number, query id, doc id, grade text)`` of each judgement line: TREC qrels (``qid 0 docid grade``) or
    BEIR TSV (``query-id corpus-id score``, whose header line is skipped); blank lines are skipped."""
    for lineno, line in enumerate(stream, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 3:  # BEIR TSV, with a header line
            if lineno == 1 and (parts[0].lower() in HEADER_IDS or parts[2].lower() in HEADER_GRADES):
                continue
            qid, docid, grade = parts
        elif len(parts) == 4:
            qid, _, docid, grade = parts
        else:
            raise DataFormatError(
                name, lineno, f"expected 'qid 0 docid grade' (TREC) or 'query-id corpus-id score' (BEIR), got {len(parts)} fields"
            )
        yield lineno, qid, docid, grade


def read_qrels_stream(stream: IO[str], name: str) -> Qrels:
    qrels = Qrels(name=Path(name).stem)
    for lineno, qid, docid, grade in iter_judgement_lines(stream, name):
        qrels.add(qid, docid, _number(grade, name, lineno, "relevance grade", int))
    return qrels


#: the first and last column names a BEIR TSV header line may have ("query-id corpus-id score")
HEADER_IDS = ("query-id", "query_id", "qid", "query")
HEADER_GRADES = ("score", "relevance", "label", "grade")


def read_qrels(path: str | Path) -> Qrels:
    path = Path(path)
    with open_text(path) as f:
        qrels = read_qrels_stream(f, str(path))
    if not len(qrels):
        raise DataFormatError(path, None, "the qrels file has no judgements")
    return qrels


def write_qrels(path: str | Path, qrels: Qrels) -> None:
    """TREC qrels format (``qid 0 docid grade``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for qid, docs in qrels.items():
            for docid, grade in docs.items():
                f.write(f"{qid} 0 {docid} {grade}\n")


def read_topics_stream(stream: IO[str], name: str) -> dict[str, Query]:
    queries: dict[str, Query] = {}
    for lineno, line in enumerate(stream, start=1):
        line = line.rstrip("\n\r")
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataFormatError(name, lineno, "expected 'qid<TAB>query text'")
        qid, text = line.split("\t", 1)
        qid = qid.strip()
        if qid in queries:
            raise DataFormatError(name, lineno, f"query id {qid!r} appears twice")
        queries[qid] = Query(qid, text.strip())
    return queries


def read_topics(path: str | Path) -> dict[str, Query]:
    with open_text(path) as f:
        return read_topics_stream(f, str(path))


def write_topics(path: str | Path, queries: Iterable[Query]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in queries:
            f.write(f"{q.id}\t{' '.join(q.text.split())}\n")
