"""JSON Lines with line numbers in every error."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import DataFormatError, RerankerError
from ..records import Corpus, Document, Query


def iter_jsonl(stream: IO[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of ``stream``.

    A line that is not a JSON object raises :class:`DataFormatError` naming ``name`` and
    the line.
    """
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(name, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(name, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.exists():
        raise RerankerError(f"{path}: no such file")
    if path.is_dir():
        raise RerankerError(f"{path}: is a folder, expected a file")
    return path.open(encoding="utf-8")


def pick(obj: dict[str, Any], keys: Sequence[str], name: str, lineno: int, what: str, required: bool = True) -> str:
    """The first of ``keys`` present in ``obj`` as a string; a clear error if none is."""
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if isinstance(value, (dict, list)):
                raise DataFormatError(name, lineno, f"field '{key}' ({what}) must be a string, got {type(value).__name__}")
            return str(value)
    if required:
        raise DataFormatError(name, lineno, f"missing {what}: expected one of the fields {', '.join(repr(k) for k in keys)}")
    return ""


DOC_ID_KEYS = ("_id", "id", "docid", "doc_id")
DOC_TEXT_KEYS = ("text", "contents", "body", "content")
QUERY_ID_KEYS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_KEYS = ("text", "query", "title")


def read_corpus_stream(stream: IO[str], name: str) -> Corpus:
    """Documents from JSONL: BEIR (``_id``, ``title``, ``text``), Pyserini (``id``, ``contents``) or similar."""
    corpus = Corpus()
    for lineno, obj in iter_jsonl(stream, name):
        doc_id = pick(obj, DOC_ID_KEYS, name, lineno, "document id")
        if doc_id in corpus:
            raise DataFormatError(name, lineno, f"document id {doc_id!r} appears twice")
        text = pick(obj, DOC_TEXT_KEYS, name, lineno, "document text")
        title = pick(obj, ("title",), name, lineno, "title", required=False)
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        corpus.add(Document(doc_id, text, title, meta))
    return corpus


def read_queries_stream(stream: IO[str], name: str, positives: dict[str, str] | None = None) -> dict[str, Query]:
    """Queries from JSONL (BEIR ``_id`` + ``text``, or ``qid`` + ``query``); with ``positives``, the ``doc_id`` of
    lines that carry one (a synthetic query's source passage) is added to it under the query id."""
    queries: dict[str, Query] = {}
    for lineno, obj in iter_jsonl(stream, name):
        qid = pick(obj, QUERY_ID_KEYS, name, lineno, "query id")
        if qid in queries:
            raise DataFormatError(name, lineno, f"query id {qid!r} appears twice")
        queries[qid] = Query(qid, pick(obj, QUERY_TEXT_KEYS, name, lineno, "query text"))
        if positives is not None and obj.get("doc_id") is not None:
            positives[qid] = str(obj["doc_id"])
    return queries


def read_corpus_jsonl(path: str | Path) -> Corpus:
    with open_text(path) as f:
        return read_corpus_stream(f, str(path))


def read_queries_jsonl(path: str | Path) -> dict[str, Query]:
    with open_text(path) as f:
        return read_queries_stream(f, str(path))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` atomically (to a temporary file, then renamed); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def write_corpus_jsonl(path: str | Path, corpus: Iterable[Document]) -> int:
    """BEIR-style corpus JSONL (``_id``, ``title``, ``text``, ``metadata``)."""
    return write_jsonl(
        path, ({"_id": d.id, "title": d.title, "text": d.text, "metadata": dict(d.metadata)} for d in corpus)
    )


def write_queries_jsonl(path: str | Path, queries: Iterable[Query]) -> int:
    return write_jsonl(path, ({"_id": q.id, "text": q.text} for q in queries))
