"""LoRA tuning of the `hf` teacher on seed pairs, on a tiny causal LM built from a config."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TEXTS, build_tiny_lm

from reranker.errors import RerankerError
from teacher.base import Pair, make_teacher
from teacher.tune import TuneConfig, tune_teacher

pytestmark = pytest.mark.slow

torch.set_num_threads(1)

SEEDS = [
    (Pair("q1", "d1", TEXTS[0], TEXTS[1]), 1.0),
    (Pair("q1", "d2", TEXTS[0], TEXTS[2]), 0.0),
    (Pair("q2", "d3", TEXTS[3], TEXTS[3]), 1.0),
    (Pair("q2", "d2", TEXTS[3], TEXTS[2]), 0.0),
    (Pair("q3", "d1", TEXTS[1], TEXTS[1]), 1.0),
    (Pair("q3", "d3", TEXTS[1], TEXTS[0]), 0.0),
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny")


def test_lora_loss_falls_and_the_adapter_moves_scores_toward_the_labels(tiny_lm, tmp_path):
    pairs, targets = [p for p, _ in SEEDS], [t for _, t in SEEDS]
    base = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot")
    before = [j.score for j in base.score_batch(pairs)]
    cfg = TuneConfig(steps=100, lr=2e-2, rank=4, alpha=8, dropout=0.0, batch_size=6, target_modules="all-linear", seed=0)
    report = tune_teacher(str(tiny_lm), pairs, targets, tmp_path / "adapter", prompt="relevance-fewshot", config=cfg)
    assert len(report.losses) == 100 and report.trainable_params > 0
    assert report.loss_after < 0.7 * report.loss_before
    assert sum(report.losses[-5:]) < sum(report.losses[:5])
    saved = json.loads((tmp_path / "adapter" / "tune.json").read_text())
    assert saved["prompt"] == "relevance-fewshot@1" and saved["pairs"] == 6
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    tuned = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot", adapter=str(tmp_path / "adapter"))
    after = [j.score for j in tuned.score_batch(pairs)]
    assert tuned.fingerprint != base.fingerprint
    for b, a, t in zip(before, after, targets):
        assert (a > b) if t == 1.0 else (a < b)  # P(yes) up for relevant seeds, down for the others
    assert min(a for a, t in zip(after, targets) if t == 1.0) > max(a for a, t in zip(after, targets) if t == 0.0)
    again = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot")  # the base model on disk is untouched
    assert [j.score for j in again.score_batch(pairs)] == pytest.approx(before, abs=1e-5)


def test_tuning_refuses_bad_input(tiny_lm, tmp_path):
    pair = SEEDS[0][0]
    with pytest.raises(RerankerError, match="one target per pair"):
        tune_teacher(str(tiny_lm), [pair], [1.0, 0.0], tmp_path / "a", prompt="relevance-fewshot")
    with pytest.raises(RerankerError, match="steps"):
        tune_teacher(str(tiny_lm), [pair], [1.0], tmp_path / "a", prompt="relevance-fewshot", config=TuneConfig(steps=0))
    assert not (tmp_path / "a").exists()


def test_teacher_tune_command(tiny_lm, tiny_beir, tmp_path):
    from helpers import ok, user_error

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"query_id": "q1", "doc_id": "d1", "label": 1}\n{"query_id": "q1", "doc_id": "d3", "label": 0}\n')
    res = ok("teacher-tune", "--model", tiny_lm, "--seeds", seeds, "--dataset", tiny_beir, "--out", tmp_path / "ad",
             "--prompt", "relevance-fewshot", "--steps", "3", "--lr", "1e-3", "--rank", "2", "--batch-size", "2")
    assert "saved the LoRA adapter" in res.stdout and (tmp_path / "ad" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "ad" / "tune.json").read_text())["config"]["steps"] == 3
    seeds.write_text('{"query_id": "q1", "doc_id": "d1", "label": 1}\n{"query_id": "q1", "doc_id": "d1", "label": 0}\n')
    user_error("teacher-tune", "--model", tiny_lm, "--seeds", seeds, "--dataset", tiny_beir, "--out", tmp_path / "ad2",
               match="seeds.jsonl, line 2: pair ('q1', 'd1') is judged twice")
    assert not (tmp_path / "ad2").exists()
