"""The application's start-up registers the PyTorch student on the core's model registry."""

from __future__ import annotations

import pytest
from helpers import BERT_CONFIG, tiny_bert_tokenizer

from reranker.app import STUDENT_BACKEND, register_backends
from reranker.scoring import MODEL_BACKENDS, Scorer, detect_backend, load_model

pytestmark = pytest.mark.integration


def test_a_student_folder_loads_as_a_torch_scorer_once_the_application_registered_it(tmp_path, monkeypatch):
    from student.models import CrossEncoderStudent

    monkeypatch.delitem(MODEL_BACKENDS.entries, "torch", raising=False)
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=32, query_max_length=8)
    student.save_pretrained(tmp_path / "m")
    assert detect_backend(tmp_path / "m") == "torch"
    register_backends()
    register_backends()  # idempotent
    assert MODEL_BACKENDS["torch"] == STUDENT_BACKEND
    scorer = load_model(tmp_path / "m")
    assert isinstance(scorer, Scorer)
    pairs = [("solar panels", "panels convert light"), ("wind", "turbines turn " * 40)]
    assert scorer.score(pairs).tolist() == pytest.approx(student.score(pairs).tolist(), abs=1e-6)
    lengths = scorer.pair_lengths(pairs)
    assert lengths[0] < lengths[1] == 32  # the long document is cut at max_length


def test_the_cli_loads_a_torch_student_folder(tmp_path, tiny_beir):
    """`reranker rerank` on a student folder works in a fresh process: the CLI's start-up registered torch."""
    from helpers import ok, save_tiny_ce

    from reranker.io.trec import read_run

    model = save_tiny_ce(tmp_path)
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 1.0 bm25\nq1 Q0 d2 2 0.5 bm25\nq1 Q0 d4 3 0.2 bm25\n")
    ok("rerank", str(tiny_beir), "--model", str(model), "--run", str(run), "--out", str(tmp_path / "out.trec"))
    reranked = read_run(tmp_path / "out.trec")
    assert sorted(h.doc_id for h in reranked.ranking("q1")) == ["d1", "d2", "d4"]
