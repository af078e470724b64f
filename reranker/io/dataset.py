"""One data-set spec for every command.

A spec is one string, resolved in this order:

=============================  ================================================
``irds:<id>``                  an ``ir_datasets`` id (the prefix forces it)
a folder with ``corpus.jsonl``  a BEIR folder (``--split`` picks the qrels)
any other folder               enterprise documents (.txt/.md/.html) as passages
``*.zip``                      a BEIR zip
``*.jsonl``                    a corpus JSONL (queries and qrels from options)
``*.json``                     TREC DL candidates (queries + passages + run)
anything else                  an ``ir_datasets`` id, e.g. ``beir/scifact/test``
=============================  ================================================

``queries`` (JSONL or ``qid<TAB>text``) and ``qrels`` (TREC or BEIR TSV) files given
beside a spec replace or add to what it has.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RerankerError
from ..records import Dataset, Query
from .documents import ChunkConfig, read_documents

DATA_SUFFIXES = (".zip", ".jsonl", ".json", ".tsv", ".trec", ".txt")


def read_queries_file(path: str | Path) -> tuple[dict[str, Query], dict[str, str]]:
    """Queries from JSONL (``_id``/``text`` or ``qid``/``query``) or ``qid<TAB>text`` topics, and the source passage
    (``doc_id``) of each JSONL query that names one (synthetic queries), ``{}`` for topics."""
    from .jsonl import open_text, read_queries_stream
    from .trec import read_topics

    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return read_topics(path), {}
    positives: dict[str, str] = {}
    with open_text(path) as f:
        return read_queries_stream(f, str(path), positives), positives


def demo_data() -> Path:
    """The embedded demo collection's folder (``docs/``, ``queries.jsonl``, ``qrels.tsv``)."""
    from importlib import resources

    return Path(str(resources.files("reranker") / "data" / "demo"))


def load_dataset(
    spec: str | Path,
    split: str | None = "test",
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    chunking: ChunkConfig | None = None,
) -> Dataset:
    """Resolve ``spec`` (see the module docstring) into a :class:`Dataset`."""
    spec_str = str(spec)
    if spec_str.startswith("irds:"):
        from .irds import load_irds

        ds = load_irds(spec_str[len("irds:") :])
    else:
        path = Path(spec_str).expanduser()
        if path.is_dir():
            from .beir import is_beir_folder, load_beir

            if is_beir_folder(path):
                ds = load_beir(path, split if qrels is None else None)
            else:
                corpus = read_documents(path, chunking or ChunkConfig())
                ds = Dataset(name=path.resolve().name, corpus=corpus, queries={})
        elif path.is_file():
            ds = _load_file(path, split if qrels is None else None)
        elif path.suffix.lower() in DATA_SUFFIXES or spec_str.startswith((".", "/", "~")):
            raise RerankerError(f"{spec_str}: no such file or folder")
        else:
            from .irds import load_irds

            ds = load_irds(spec_str)
    if queries is not None:
        ds.queries = read_queries_file(queries)[0]
    if qrels is not None:
        from .trec import read_qrels

        ds.qrels = read_qrels(qrels)
        if ds.queries:
            judged = {qid: q for qid, q in ds.queries.items() if qid in ds.qrels}
            ds.queries = judged or ds.queries
    if len(ds.corpus) == 0:
        raise RerankerError(f"{spec_str}: the corpus is empty (no documents found)")
    return ds


def _load_file(path: Path, split: str | None) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        from .beir import load_beir

        return load_beir(path, split)
    if suffix == ".jsonl":
        from .jsonl import read_corpus_jsonl

        return Dataset(name=path.stem, corpus=read_corpus_jsonl(path), queries={})
    if suffix == ".json":
        from .trecdl import load_trec_dl_candidates

        return load_trec_dl_candidates(path)
    raise RerankerError(
        f"{path}: unknown data-set format {suffix or '(no suffix)'!r}; expected a BEIR folder or .zip, "
        "a corpus .jsonl, a TREC DL candidates .json, a folder of documents, or an ir_datasets id"
    )
