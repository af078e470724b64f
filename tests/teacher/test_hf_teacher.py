"""The `hf` teacher on a tiny causal LM built from a config, with a tokenizer made in the test."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TEXTS, build_tiny_lm

from teacher.base import Pair, TeacherError, make_teacher
from teacher.prompts import load_prompt


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny")


PAIRS = [
    Pair("q1", "d1", TEXTS[0], TEXTS[1]),
    Pair("q1", "d2", TEXTS[0], TEXTS[2]),
    Pair("q2", "d3", "wind", TEXTS[3] + " " + TEXTS[1] * 3),  # longer: the batch needs padding
]


def test_labels_are_the_softmax_of_the_answer_logits(tiny_lm):
    """Recompute P(yes) / (P(yes) + P(no)) by hand from an unpadded forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot")
    js = teacher.score_batch(PAIRS)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    template = load_prompt("relevance-fewshot")
    for pair, j in zip(PAIRS, js):
        ids = tok(template.render(query=pair.query, document=pair.document), return_tensors="pt")
        with torch.no_grad():
            lp = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
        p_yes = math.exp(lp[tok.convert_tokens_to_ids("yes")]) + math.exp(lp[tok.convert_tokens_to_ids("Yes")])
        p_no = math.exp(lp[tok.convert_tokens_to_ids("no")]) + math.exp(lp[tok.convert_tokens_to_ids("No")])
        assert j.label == pytest.approx(p_yes / (p_yes + p_no), abs=1e-5)
        assert j.score == pytest.approx(math.log(p_yes / p_no), abs=1e-4)


def test_batched_equals_one_by_one(tiny_lm):
    teacher = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot", batch_size=8)
    batched = teacher.score_batch(PAIRS)
    single = [teacher.score_batch([p])[0] for p in PAIRS]
    assert [b.score for b in batched] == pytest.approx([s.score for s in single], abs=1e-4)


def test_temperature_and_fingerprint(tiny_lm):
    a = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot")
    b = make_teacher("hf", model=str(tiny_lm), prompt="relevance-fewshot", temperature=2.0)
    assert [x.score / 2 for x in a.score_batch(PAIRS)] == pytest.approx([x.score for x in b.score_batch(PAIRS)], abs=1e-5)
    assert a.fingerprint != b.fingerprint and a.prompt_version == "relevance-fewshot@1"


def test_a_model_without_the_answer_tokens_is_a_clear_error(tmp_path):
    folder = build_tiny_lm(tmp_path / "noanswers", with_answers=False)
    teacher = make_teacher("hf", model=str(folder), prompt="relevance-fewshot")
    with pytest.raises(TeacherError, match="none of the answer strings"):
        teacher.score_batch(PAIRS)
