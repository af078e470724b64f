"""Soft-label arithmetic, prompt templates, and the non-LLM teachers (BM25, bi-encoder, cross-encoder, ensemble)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reranker.errors import DataFormatError, MissingDependencyError, RerankerError
from reranker.records import Corpus, Document
from reranker.registry import BackendSpec
from reranker.retrieval import build_index
from teacher.backends.normalize import zscores
from teacher.base import TEACHERS, Pair, TeacherError, make_teacher
from teacher.llm import graded_judgement, yes_no_judgement
from teacher.prompts import load_prompt, parse_template

DOCS = {
    "solar": "Photovoltaic solar panels turn sunlight into electricity.",
    "wind": "Wind turbines convert the kinetic energy of moving air into electricity.",
    "coal": "Burning coal releases carbon dioxide and soot.",
    "battery": "Lithium-ion batteries store electrical energy for later use.",
}
CORPUS = Corpus(Document(k, v) for k, v in DOCS.items())


def pairs_for(qid: str, query: str, doc_ids=tuple(DOCS)) -> list[Pair]:
    return [Pair(qid, d, query, DOCS[d]) for d in doc_ids]


# --- soft labels from answer log-probabilities ----------------------------------------


def test_yes_no_is_the_two_way_softmax_with_temperature():
    j = yes_no_judgement([math.log(0.6)], [math.log(0.2)])
    assert j.label == pytest.approx(0.6 / 0.8)
    assert j.score == pytest.approx(math.log(3))
    hot = yes_no_judgement([math.log(0.6)], [math.log(0.2)], temperature=2.0)
    assert hot.score == pytest.approx(math.log(3) / 2) and 0.5 < hot.label < j.label


def test_answer_variants_are_pooled_and_missing_tokens_handled():
    j = yes_no_judgement([math.log(0.3), math.log(0.3)], [math.log(0.2)])
    assert j.label == pytest.approx(0.6 / 0.8)
    assert yes_no_judgement([math.log(0.1)], [-math.inf]).label > 0.999
    assert yes_no_judgement([-math.inf], [math.log(0.1)]).label < 0.001
    with pytest.raises(TeacherError, match="neither answer token"):
        yes_no_judgement([-math.inf], [-math.inf])
    with pytest.raises(TeacherError, match="temperature"):
        yes_no_judgement([0.0], [0.0], temperature=0)


def test_graded_label_is_the_expected_grade():
    probs = [0.1, 0.2, 0.3, 0.4]
    j = graded_judgement([[math.log(p)] for p in probs])
    assert j.label == pytest.approx((0 * 0.1 + 1 * 0.2 + 2 * 0.3 + 3 * 0.4) / 3)
    assert j.score == pytest.approx(math.log(j.label / (1 - j.label)))


# --- prompt templates are data -----------------------------------------------------------


def test_packaged_templates_load_and_render():
    t = load_prompt("relevance-fewshot")
    assert t.key == "relevance-fewshot@1" and t.kind == "relevance" and t.fields == {"query", "document"}
    text = t.render(query="what is BM25", document="A ranking function.")
    assert text.endswith("Query: what is BM25\nDocument: A ranking function.\nRelevant:")  # no trailing newline
    assert t.meta["yes"] == [" yes", " Yes"]
    with pytest.raises(RerankerError, match="needs document"):
        t.render(query="q")


def test_template_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DataFormatError, match="'---'"):
        parse_template("name: x\nversion: 1\nkind: relevance\nno separator", "t.txt")
    with pytest.raises(DataFormatError, match="lacks 'version'"):
        parse_template("name: x\nkind: relevance\n---\nbody {query}", "t.txt")
    with pytest.raises(DataFormatError, match=r"t.txt, line 2: expected 'key: value'"):
        parse_template("name: x\nversion 1\nkind: relevance\n---\nbody", "t.txt")
    with pytest.raises(DataFormatError, match="bad placeholder"):
        parse_template("name: x\nversion: 1\nkind: relevance\n---\nbody {query", "t.txt")
    with pytest.raises(RerankerError, match="no prompt template 'nope'.*relevance-fewshot"):
        load_prompt("nope")
    own = tmp_path / "mine.txt"
    own.write_text("name: mine\nversion: 7\nkind: relevance\nyes: [\" ok\"]\nno: [\" bad\"]\n---\n{query} / {document} ->")
    assert load_prompt(own).key == "mine@7"


# --- non-LLM teachers --------------------------------------------------------------------


def test_zscores_within_each_query():
    pairs = pairs_for("a", "x", ("solar", "wind", "coal")) + pairs_for("b", "y", ("solar",))
    z = zscores(pairs, [1.0, 2.0, 3.0, 5.0])
    assert z[:3] == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert z[3] == 0.0  # a group of one carries no information


def test_bm25_teacher_gives_the_full_corpus_bm25_score():
    teacher = make_teacher("bm25")
    teacher.prepare(CORPUS)
    query = "solar electricity"
    js = teacher.score_batch(pairs_for("q", query))
    run = build_index(CORPUS, "bm25s").search({"q": query}, k=4)
    for d, j in zip(DOCS, js):
        assert j.score == pytest.approx(run["q"].get(d, 0.0), abs=1e-5)
    assert max(zip(js, DOCS), key=lambda x: x[0].label)[1] == "solar"
    assert all(0 < j.label < 1 for j in js)


def test_bm25_teacher_scores_any_text_with_the_corpus_statistics():
    teacher = make_teacher("bm25")
    teacher.prepare(CORPUS)
    same = teacher.bm25("solar electricity", [DOCS["solar"], "Photovoltaic   SOLAR panels turn sunlight into electricity!"])
    assert same[0] == pytest.approx(same[1]) and same[0] > 0  # analysed as the index analyses: case, spacing, punctuation
    # a text outside the corpus: only the corpus's terms count, with the corpus's IDF (stemmed "electr": in 3 of the 4)
    n, df, avgdl = 4, 3, teacher._stats.avgdl
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    assert teacher.bm25("electricity zeppelin", ["zeppelin electricity"])[0] == pytest.approx(idf * 1 / (1 + 1.5 * (1 - 0.75 + 0.75 * 2 / avgdl)))
    assert teacher.bm25("zeppelin", ["zeppelin"]) == [0.0]
    unknown = teacher.score_batch([Pair("q", "not-in-corpus", "solar", DOCS["solar"]), Pair("q", "coal", "solar", DOCS["coal"])])
    assert unknown[0].score > unknown[1].score == 0.0


def test_bm25_teacher_reads_the_first_stage_score_when_told():
    teacher = make_teacher("bm25", statistics="first-stage")
    pairs = [Pair("q", d, "solar", DOCS[d], s) for d, s in (("solar", 12.0), ("wind", 3.0), ("coal", 0.0))]
    js = teacher.score_batch(pairs)  # no corpus needed: the run's scores carry the collection's statistics
    assert [j.score for j in js] == [12.0, 3.0, 0.0] and js[0].label > js[1].label > js[2].label
    with pytest.raises(TeacherError, match="first-stage score; pair \\('q', 'wind'\\) has none"):
        teacher.score_batch([pairs[0], Pair("q", "wind", "solar", DOCS["wind"])])
    with pytest.raises(RerankerError, match="statistics must be one of corpus, first-stage"):
        make_teacher("bm25", statistics="pool")


def test_bm25_teacher_errors():
    teacher = make_teacher("bm25")
    with pytest.raises(TeacherError, match="needs its corpus"):
        teacher.score_batch(pairs_for("q", "solar"))
    with pytest.raises(TeacherError, match="empty corpus"):
        teacher.prepare(Corpus())


@pytest.fixture(scope="module")
def bi_encoder():
    return make_teacher("bi-encoder")


def test_bi_encoder_teacher_prefers_the_relevant_passage(bi_encoder):
    js = bi_encoder.score_batch(pairs_for("q", "energy from moving air"))
    best = max(zip(js, DOCS), key=lambda x: x[0].score)[1]
    assert best == "wind"
    # raw scores do not depend on the batch around a pair
    alone = bi_encoder.score_batch([Pair("q", "wind", "energy from moving air", DOCS["wind"])])
    assert alone[0].score == pytest.approx(js[1].score, abs=1e-5)
    # the document cache is keyed by the text too: another text under the same id is encoded, not looked up
    other = bi_encoder.score_batch([Pair("q", "wind", "energy from moving air", DOCS["coal"])])
    assert other[0].score == pytest.approx(js[2].score, abs=1e-5) and other[0].score < alone[0].score


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A cross-encoder built from the packaged MiniLM backbone with a new one-logit head."""
    from sentence_transformers import CrossEncoder

    from reranker.retrieval.dense import resolve_model_path

    path = tmp_path_factory.mktemp("ce") / "model"
    model = CrossEncoder(resolve_model_path("all-MiniLM-L6-v2"), num_labels=1)
    model.save(str(path))
    return path


def test_cross_encoder_teacher_logits_and_labels(tiny_cross_encoder):
    teacher = make_teacher("cross-encoder", model=str(tiny_cross_encoder), temperature=2.0)
    pairs = pairs_for("q", "solar power")
    js = teacher.score_batch(pairs)
    again = teacher.score_batch(pairs[::-1])[::-1]
    assert [j.score for j in js] == pytest.approx([j.score for j in again], abs=1e-5)
    for j in js:
        assert j.label == pytest.approx(1 / (1 + math.exp(-j.score)))
    assert len({round(j.score, 4) for j in js}) > 1
    cold = make_teacher("cross-encoder", model=str(tiny_cross_encoder), temperature=1.0).score_batch(pairs)
    assert [c.score for c in cold] == pytest.approx([2 * j.score for j in js], abs=1e-4)


def test_ensemble_is_the_weighted_sum_of_member_zscores(bi_encoder):
    pairs = pairs_for("q", "solar electricity") + pairs_for("r", "burning fossil fuel")
    bm25 = make_teacher("bm25")
    bm25.prepare(CORPUS)
    ens = make_teacher("ensemble", members=[{"name": "bm25", "weight": 0.25}, {"name": "bi-encoder", "weight": 0.75}])
    ens.prepare(CORPUS)
    expected = 0.25 * np.array(zscores(pairs, [j.score for j in bm25.score_batch(pairs)])) + 0.75 * np.array(
        zscores(pairs, [j.score for j in bi_encoder.score_batch(pairs)])
    )
    got = ens.score_batch(pairs)
    assert [j.score for j in got] == pytest.approx(list(expected), abs=1e-5)
    assert ens.fingerprint != make_teacher("ensemble").fingerprint  # weights are part of the identity


def test_ensemble_and_registry_errors(monkeypatch):
    with pytest.raises(RerankerError, match="unknown teacher 'gpt9'"):
        make_teacher("gpt9")
    with pytest.raises(RerankerError, match="cannot contain an ensemble"):
        make_teacher("ensemble", members=[{"name": "ensemble"}])
    with pytest.raises(RerankerError, match="unknown keys wieght"):
        make_teacher("ensemble", members=[{"name": "bm25", "wieght": 2}])
    with pytest.raises(RerankerError, match="teacher 'bm25'.*unexpected keyword"):
        make_teacher("bm25", k3=1)
    monkeypatch.setitem(TEACHERS.entries, "fancy", BackendSpec("no_such_module_abc", "X", "fancy", "test"))
    with pytest.raises(MissingDependencyError, match=r"enterprise-reranker\[fancy\]"):
        make_teacher("fancy")


def test_bm25_teacher_computes_a_corpus_statistics_once():
    teacher = make_teacher("bm25")
    teacher.prepare(CORPUS)
    first = teacher._stats
    teacher.prepare(CORPUS)  # the pipeline's weight check and its labelling prepare the same corpus
    assert teacher._stats is first
    other = Corpus([Document("x", "solar solar")])
    teacher.prepare(other)
    assert teacher._stats is not first and teacher._stats.n_docs == 1
