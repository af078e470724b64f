"""TREC DL candidate files: a JSON list of ``{"query": str, "hits": [{qid, docid, rank, score, content}]}``.

This is the layout of the BM25 top-100 files that rank_llm and RankGPT publish; one file
gives the queries, the passages they need and the first-stage run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataFormatError
from ..records import Corpus, Document, Query, Run
from .jsonl import open_text


def load_trec_dl_candidates(path: str | Path, qrels_path: str | Path | None = None):
    from ..records import Dataset
    from .trec import read_qrels

    path = Path(path)
    with open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataFormatError(path, None, 'expected a JSON list of {"query": ..., "hits": [...]}')
    corpus, queries, run = Corpus(), {}, Run(name=path.stem)
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict) or "query" not in entry or not isinstance(entry.get("hits"), list):
            raise DataFormatError(path, None, f'{where}: expected {{"query": str, "hits": [...]}}')
        for j, hit in enumerate(entry["hits"]):
            if not isinstance(hit, dict):
                raise DataFormatError(path, None, f"{where}, hit {j}: expected an object, got {type(hit).__name__}")
            missing = [k for k in ("qid", "docid", "score", "content") if k not in hit]
            if missing:
                raise DataFormatError(path, None, f"{where}, hit {j}: missing {', '.join(missing)}")
            qid, docid = str(hit["qid"]), str(hit["docid"])
            queries.setdefault(qid, Query(qid, str(entry["query"])))
            if docid not in corpus:
                corpus.add(Document(docid, str(hit["content"])))
            try:
                score = float(hit["score"])
            except (TypeError, ValueError):
                raise DataFormatError(path, None, f"{where}, hit {j}: score must be a number, got {hit['score']!r}") from None
            run.add(qid, docid, score)
    qrels = read_qrels(qrels_path) if qrels_path else None
    return Dataset(name=path.stem, corpus=corpus, queries=queries, qrels=qrels, run=run)
