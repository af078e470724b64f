"""`reranker generate-queries` and `reranker label` as a user runs them."""

from __future__ import annotations

import json

import pytest
from helpers import ok, user_error

from reranker.io.groups import read_groups
from teacher.generate import read_synthetic

pytestmark = pytest.mark.integration


def test_generate_then_label_then_export(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "vpn.md").write_text("# VPN\n\nInstall the GlobalProtect client. Sign in with your company SSO account. "
                                 "Choose the Frankfurt gateway when you work from Europe.\n")
    (docs / "leave.txt").write_text("Parental leave\nNew parents receive sixteen weeks of fully paid leave. "
                                    "Request it in Workday at least thirty days before the expected date.\n")
    (docs / "badge.html").write_text("<html><head><title>Badges</title></head><body><p>Lost badges are replaced "
                                     "at the front desk for a fee of twenty dollars. Temporary badges last one day.</p></body></html>")
    res = ok("generate-queries", docs, "--out", tmp_path / "q.jsonl", "--n", "2", "--stats", tmp_path / "stats.json")
    queries = read_synthetic(tmp_path / "q.jsonl")
    assert queries and all(q.generator == "extractive" and q.doc_id.split("#")[0] in {"vpn.md", "leave.txt", "badge.html"} for q in queries)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["candidates"] == 6 and [f["filter"] for f in stats["filters"]][:2] == ["length", "dedup"]
    assert f"wrote {len(queries)} queries" in res.stdout
    res = ok("label", docs, "--queries", tmp_path / "q.jsonl", "--store", tmp_path / "l.sqlite", "--teacher", "bm25",
             "-k", "3", "--export", tmp_path / "groups.jsonl", "--save-candidates", tmp_path / "cands.trec")
    groups = read_groups(tmp_path / "groups.jsonl")
    assert len(groups) == len(queries)
    by_id = {q.query_id: q for q in queries}
    for g in groups:
        assert g.positive == by_id[g.query_id].doc_id and g.positive in {c.doc_id for c in g.candidates}
    assert "labelled" in res.stdout and (tmp_path / "cands.trec").is_file()
    again = ok("label", docs, "--queries", tmp_path / "q.jsonl", "--store", tmp_path / "l.sqlite", "--teacher", "bm25", "-k", "3")
    assert "labelled 0 pairs" in again.stdout


def test_teacher_cli_errors(tmp_path, tiny_beir):
    empty = tmp_path / "empty"
    empty.mkdir()
    user_error("generate-queries", empty, "--out", tmp_path / "q.jsonl", match="corpus is empty")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"query": "solar", "document": "Solar panels."}\n{"query": "wind"\n')
    user_error("generate-queries", tiny_beir, "--out", tmp_path / "q.jsonl", "--generator", "extractive", "--seeds", seeds,
               match="seeds.jsonl, line 2")
    user_error("label", tiny_beir, "--store", tmp_path / "l.sqlite", "--teacher", "gpt9", match="unknown teacher 'gpt9'")
    user_error("label", tiny_beir, "--store", tmp_path / "l.sqlite", "--teacher", "bm25", "-p", "k3=1", match="unexpected keyword")
    user_error("generate-queries", tiny_beir, "--out", tmp_path / "q.jsonl", "--generator", "nope", match="unknown query generator")


def test_label_with_a_teacher_file_and_first_stage_scores(tmp_path, shared):
    """A pipeline's teacher.json labels as that teacher; with statistics=first-stage the BM25 member reads the run's scores."""
    dl = shared / "datasets" / "trec-dl-2019"
    run = tmp_path / "two.trec"  # two judged queries of the shared BM25 top 100, their first five passages
    lines = [line for line in (dl / "bm25-top100.trec").read_text().splitlines() if line.split()[0] in {"264014", "104861"}]
    run.write_text("\n".join(line for line in lines if int(line.split()[3]) <= 5) + "\n")
    spec = {"teacher": "bm25", "params": {"statistics": "first-stage"}}
    (tmp_path / "teacher.json").write_text(json.dumps(spec))
    ok("label", dl / "bm25-top100.json", "--candidates", run, "--store", tmp_path / "l.sqlite",
       "--teacher-file", tmp_path / "teacher.json", "--run-out", tmp_path / "teacher.trec")
    scores = {tuple(line.split()[::2][:2]): float(line.split()[4]) for line in run.read_text().splitlines()}
    labelled = {tuple(line.split()[::2][:2]): float(line.split()[4]) for line in (tmp_path / "teacher.trec").read_text().splitlines()}
    assert labelled.keys() == scores.keys() and len(labelled) == 10
    assert all(labelled[k] == pytest.approx(scores[k], abs=1e-4) for k in scores)  # the teacher's score is the run's
    (tmp_path / "bad.json").write_text('{"params": {}}')
    user_error("label", dl / "bm25-top100.json", "--candidates", run, "--store", tmp_path / "l2.sqlite",
               "--teacher-file", tmp_path / "bad.json", match="bad.json: expected")


def test_label_checks_the_ensembles_weights_on_held_out_synthetic_queries(tmp_path):
    """--fit-weights runs the pipeline's check; --teacher-out writes the teacher as it labelled, and --teacher-file with
    that file is the same teacher (its labels are found in the store)."""
    from reranker.io.dataset import demo_data

    docs = demo_data() / "docs"
    ok("generate-queries", docs, "--out", tmp_path / "q.jsonl")
    store = tmp_path / "l.sqlite"
    res = ok("label", docs, "--queries", tmp_path / "q.jsonl", "--store", store, "-k", "5", "--fit-weights", "--fit-share", "0.25",
             "--teacher-out", tmp_path / "teacher.json")
    spec = json.loads((tmp_path / "teacher.json").read_text())
    fit = spec["fit"]
    assert spec["teacher"] == "ensemble" and fit["groups"] >= 20 and fit["masked"] == fit["groups"]
    assert fit["weights"] == (fit["fitted"] if fit["adopted"] else fit["configured"])
    assert [m["weight"] for m in spec["params"]["members"]] == fit["weights"]
    assert f"ensemble weights {fit['weights']}" in res.stdout
    again = ok("label", docs, "--queries", tmp_path / "q.jsonl", "--store", store, "-k", "5", "--teacher-file", tmp_path / "teacher.json")
    assert "labelled 0 pairs" in again.stdout  # the same fingerprint: every pair is in the store already
    user_error("label", docs, "--queries", tmp_path / "q.jsonl", "--store", store, "--teacher", "bm25", "--fit-weights",
               match="weighs an ensemble's members; the bm25 teacher has none")
    (tmp_path / "topics.tsv").write_text("t1\tvpn setup\n")
    user_error("label", docs, "--queries", tmp_path / "topics.tsv", "--store", store, "--fit-weights", match="needs queries with their source passages")
