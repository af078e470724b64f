"""The cascade's config file and its ordering (reranker/app/cascade.py), shared by the evaluation and ``/search``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from reranker.app.cascade import CascadeConfig, cascade_order, load_cascade_config, student_ranking
from reranker.errors import RerankerError

pytestmark = pytest.mark.integration


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data))
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "corpus.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"_id": "d1", "text": "solar panels"}) + "\n")
    return path


# --- the config file -------------------------------------------------------------------------------


def test_a_config_reads_yaml_or_json_with_paths_against_its_folder(tmp_path, corpus_file, monkeypatch):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = write(cfg_dir / "cascade.yaml", {"corpus": "../data/corpus.jsonl", "student_top_k": 50, "teacher": "bm25",
                                            "teacher_params": {"k1": 0.9}, "teacher_top_k": 5})
    monkeypatch.chdir(tmp_path / "data")  # relative paths are the config's, not the current folder's
    cfg = load_cascade_config(path)
    assert Path(cfg.corpus.spec) == corpus_file.resolve() and Path(cfg.corpus.spec).is_absolute()
    assert (cfg.first_stage, cfg.student_top_k, cfg.teacher, cfg.teacher_params, cfg.teacher_top_k) == ("bm25s", 50, "bm25", {"k1": 0.9}, 5)
    assert cfg.corpus.passage_words == 120 and cfg.index is None  # the pipeline's DataSpec defaults
    as_json = write(cfg_dir / "cascade.json", {"corpus": {"spec": str(corpus_file), "passage_words": 40, "passage_overlap": 5}})
    cfg = load_cascade_config(as_json)
    assert (cfg.corpus.passage_words, cfg.corpus.passage_overlap, cfg.teacher, cfg.student_top_k, cfg.teacher_top_k) == (40, 5, "ensemble", 100, 10)
    packaged = load_cascade_config(write(cfg_dir / "demo.yaml", {"corpus": "package:demo/docs"}))
    assert Path(packaged.corpus.spec).is_dir() and os.path.isabs(packaged.corpus.spec)


BROKEN = [
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ({"corpus": {"spec": "CORPUS", "passage_size": 3}}, "corpus.passage_size: Extra inputs are not permitted"),
    ({"student_top_k": "many"}, "student_top_k: Input should be a valid integer"),
    ({"teacher_top_k": 0}, "teacher_top_k: Input should be greater than or equal to 1"),
    ({"teacher_params": [1, 2]}, "teacher_params: Input should be a valid dictionary"),
    ({"teacher": "oracle"}, "teacher: Value error, unknown teacher 'oracle'"),
    ({"first_stage": "grep"}, "first_stage: Value error, unknown retrieval backend 'grep'"),
    ({"corpus": "./missing.jsonl"}, "missing path: corpus.spec: ./missing.jsonl"),
    ({"index": "./no-index"}, "missing path: index: ./no-index"),
]


@pytest.mark.parametrize(("change", "message"), BROKEN, ids=[m.split(":")[0] for _, m in BROKEN])
def test_a_broken_config_names_the_key_and_the_file(tmp_path, corpus_file, change, message):
    data = {"corpus": str(corpus_file), "teacher": "bm25", **change}
    if isinstance(data["corpus"], dict) and data["corpus"].get("spec") == "CORPUS":
        data["corpus"]["spec"] = str(corpus_file)
    path = write(tmp_path / "cascade.yaml", data)
    with pytest.raises(RerankerError) as err:
        load_cascade_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_a_config_without_a_corpus_or_file_is_an_error(tmp_path):
    with pytest.raises(RerankerError, match="corpus: Field required"):
        load_cascade_config(write(tmp_path / "c.yaml", {"teacher": "bm25"}))
    with pytest.raises(RerankerError, match="no such config file"):
        load_cascade_config(tmp_path / "nope.yaml")
    with pytest.raises(RerankerError, match="not valid YAML"):
        (tmp_path / "bad.yaml").write_text("corpus: [unclosed")
        load_cascade_config(tmp_path / "bad.yaml")


def test_the_config_is_a_pydantic_model_with_the_documented_defaults():
    cfg = CascadeConfig(corpus="x.jsonl")
    assert (cfg.first_stage, cfg.student_top_k, cfg.teacher, cfg.teacher_top_k) == ("bm25s", 100, "ensemble", 10)


# --- the ordering ------------------------------------------------------------------------------------


def test_the_teachers_picks_come_first_in_the_teachers_order():
    student = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)]
    out = cascade_order(student, {"a": 0.1, "b": 0.3, "c": 0.2, "d": 9.0}, teacher_top_k=3)
    # d is outside the student's top 3: the teacher's score of it does not count
    assert out == [("b", "teacher", 0.3), ("c", "teacher", 0.2), ("a", "teacher", 0.1), ("d", "student", 0.6), ("e", "student", 0.5)]


def test_ties_and_unscored_picks_keep_the_students_order():
    student = [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 0.0)]
    out = cascade_order(student, {"b": 0.5, "c": 0.5, "d": 0.5}, teacher_top_k=4)
    assert [d for d, _, _ in out] == ["b", "c", "d", "a"]  # ties by student rank; a, not scored, last of the picks
    assert out[-1] == ("a", "teacher", -math.inf)
    assert cascade_order(student, {}, teacher_top_k=0) == [(d, "student", s) for d, s in student]
    assert [d for d, _, _ in cascade_order(student[:2], {"a": 0.0, "b": 1.0}, teacher_top_k=10)] == ["b", "a"]
    assert cascade_order([], {}, teacher_top_k=3) == []


def test_student_ranking_keeps_the_pool_and_orders_ties_as_runs_do():
    scores = {"a": 1.0, "b": 2.0, "c": 2.0, "x": 9.0}
    assert student_ranking(["a", "b", "c"], scores) == [("c", 2.0), ("b", 2.0), ("a", 1.0)]  # x is not in the pool
