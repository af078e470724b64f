"""The model-folder loader: a student folder loads as torch, anything else is a clear error."""

from __future__ import annotations

import pytest
from helpers import BERT_CONFIG, tiny_bert_tokenizer

from reranker.errors import RerankerError
from reranker.scoring import Scorer, detect_backend, load_model
from student.models import CrossEncoderStudent


def test_a_student_folder_loads_as_a_torch_scorer(tmp_path):
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=32, query_max_length=8)
    student.save_pretrained(tmp_path / "m")
    assert detect_backend(tmp_path / "m") == "torch"
    scorer = load_model(tmp_path / "m")
    assert isinstance(scorer, Scorer)
    pairs = [("solar panels", "panels convert light"), ("wind", "turbines turn " * 40)]
    assert scorer.score(pairs).tolist() == pytest.approx(student.score(pairs).tolist(), abs=1e-6)
    lengths = scorer.pair_lengths(pairs)
    assert lengths[0] < lengths[1] == 32  # the long document is cut at max_length


def test_folders_that_hold_no_model_are_named(tmp_path):
    with pytest.raises(RerankerError, match="no such model folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RerankerError, match="not a model folder.*onnx_manifest.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(RerankerError, match="unknown model backend 'tensorflow'"):
        load_model(tmp_path / "empty", backend="tensorflow")
