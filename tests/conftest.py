"""Shared fixtures: the real data sets in ../shared (skipped when absent), a tiny BEIR folder, a tiny student.

Tests are laid out like the layers: ``core/`` (records, io, retrieval, evaluation, scoring), ``teacher/``,
``student/`` and ``app/`` (CLI, server, pipeline, cascade, demo). Markers are set by each module
(``pytestmark``): every module in ``app/`` is ``integration`` (checked at collection); modules that train or export
models or read a whole real data set (a minute or more on 2 cores) are ``slow``. ``tests/core`` runs with neither
torch nor ``student`` importable (``tests/without_torch.py``, a step of ``make test``). ``pytest -m "not slow and not integration"``
(``make test-fast``) is the quick loop; ``make test`` and CI run everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_DOCS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """Each module sets its own markers (``pytestmark``); an ``app/`` test that forgot ``integration`` fails here."""
    unmarked = sorted({item.module.__name__ for item in items
                       if TESTS / "app" in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("integration") is None})
    if unmarked:
        raise pytest.UsageError(f"tests/app modules must set pytestmark = pytest.mark.integration: {', '.join(unmarked)}")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"../shared not present: {what} expected at {path} "
            "(the shared data sets live beside the checkout; see ../shared/README.md)"
        )
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ``../shared`` folder beside the checkout; skips the test when it is missing."""
    return _require(SHARED, "the shared folder")


@pytest.fixture(scope="session")
def scifact_zip(shared: Path) -> Path:
    """BEIR SciFact as a zip (``scifact/corpus.jsonl``, ``scifact/queries.jsonl``, ``scifact/qrels/*.tsv``)."""
    return _require(shared / "datasets" / "beir" / "scifact.zip", "BEIR SciFact zip")


@pytest.fixture(scope="session")
def trec_dl(shared: Path) -> Path:
    """The TREC DL 2019 folder (bm25-top100.json / .trec, qrels.txt, topics.tsv)."""
    folder = _require(shared / "datasets" / "trec-dl-2019", "the TREC DL 2019 folder")
    for name in ("bm25-top100.json", "bm25-top100.trec", "qrels.txt", "topics.tsv"):
        _require(folder / name, f"TREC DL 2019 file {name}")
    return folder


TINY_QUERIES = [
    {"_id": "q1", "text": "how do solar panels work"},
    {"_id": "q2", "text": "energy storage"},
    {"_id": "q3", "text": "renewable energy from wind"},
    {"_id": "q4", "text": "carbon emissions of fossil fuels"},
    {"_id": "q5", "text": "a query nobody judged"},
]
# test: q1, q2 judged; train: q3, q4 judged; q5 judged nowhere.
TINY_TEST_QRELS = [("q1", "d1", 2), ("q1", "d4", 0), ("q2", "d4", 1)]
TINY_TRAIN_QRELS = [("q3", "d2", 1), ("q4", "d3", 1), ("q4", "d1", 0)]


def write_tiny_beir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in TINY_QUERIES), encoding="utf-8")
    for split, rows in (("test", TINY_TEST_QRELS), ("train", TINY_TRAIN_QRELS)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in rows]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """A tiny BEIR folder: 6 titled docs, 5 queries, qrels/test.tsv (q1, q2) and qrels/train.tsv (q3, q4)."""
    return write_tiny_beir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread. On a busy shared CPU, two threads make each 32-wide matmul
    wait on the other thread (ms instead of µs); restored after the module. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A tiny random BERT cross-encoder (seeded), saved as a student folder."""
    import torch
    from helpers import BERT_CONFIG, tiny_bert_tokenizer

    from student.models import CrossEncoderStudent

    torch.manual_seed(0)
    bert = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8).eval()
    return bert.save_pretrained(tmp_path_factory.mktemp("auto") / "student")
