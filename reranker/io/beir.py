"""BEIR data sets as a folder or a zip: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

A zip may hold the files at its top level or inside one folder (``scifact/corpus.jsonl``),
as the BEIR downloads do. Queries are limited to those judged in the split, as BEIR's own
loader does.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import RerankerError
from .jsonl import read_corpus_stream, read_queries_stream
from .trec import read_qrels_stream


def is_beir_folder(path: Path) -> bool:
    return path.is_dir() and (path / "corpus.jsonl").is_file()


class _Source:
    """Opens files of a BEIR set, in a folder or a zip, by their path relative to its root."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.root = ""
        if not path.exists():
            raise RerankerError(f"{path}: no such file or folder")
        if path.is_dir():
            return
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise RerankerError(f"{path}: not a valid zip file") from None
        names = [n for n in self.zip.namelist() if PurePosixPath(n).name == "corpus.jsonl"]
        if not names:
            raise RerankerError(f"{path}: no corpus.jsonl inside; expected the BEIR layout (corpus.jsonl, queries.jsonl, qrels/)")
        self.root = str(PurePosixPath(min(names, key=len)).parent)

    def member(self, rel: str) -> str:
        return rel if self.root in ("", ".") else f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        if self.zip is None:
            return (self.path / rel).is_file()
        return self.member(rel) in self.zip.namelist()

    def open(self, rel: str) -> IO[str]:
        if self.zip is None:
            return (self.path / rel).open(encoding="utf-8")
        return io.TextIOWrapper(self.zip.open(self.member(rel)), encoding="utf-8")

    def display(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.zip is None else f"{self.path}:{self.member(rel)}"

    def splits(self) -> list[str]:
        if self.zip is None:
            return sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))
        prefix = self.member("qrels/")
        return sorted(PurePosixPath(n).stem for n in self.zip.namelist() if n.startswith(prefix) and n.endswith(".tsv"))


def load_beir(path: str | Path, split: str | None = "test"):
    """Load a BEIR folder or zip as a :class:`~reranker.io.dataset.Dataset`.

    ``split`` picks ``qrels/<split>.tsv``; ``None`` loads no qrels and keeps every query.
    """
    from ..records import Dataset

    path = Path(path)
    src = _Source(path)
    for rel in ("corpus.jsonl", "queries.jsonl"):
        if not src.exists(rel):
            raise RerankerError(f"{src.display(rel)}: missing; a BEIR data set needs corpus.jsonl and queries.jsonl")
    with src.open("corpus.jsonl") as f:
        corpus = read_corpus_stream(f, src.display("corpus.jsonl"))
    with src.open("queries.jsonl") as f:
        queries = read_queries_stream(f, src.display("queries.jsonl"))
    qrels = None
    name = path.stem if src.zip else path.name
    if split is not None:
        rel = f"qrels/{split}.tsv"
        if not src.exists(rel):
            have = ", ".join(src.splits()) or "none"
            raise RerankerError(f"{src.display(rel)}: no qrels for split {split!r} (splits here: {have})")
        with src.open(rel) as f:
            qrels = read_qrels_stream(f, src.display(rel))
        qrels.name = f"{name}/{split}"
        queries = {qid: q for qid, q in queries.items() if qid in qrels}
        name = f"{name}/{split}"
    return Dataset(name=name, corpus=corpus, queries=queries, qrels=qrels)
