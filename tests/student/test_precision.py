"""`reranker export --precision auto`: the measured choice of the fastest graph within an nDCG budget.

The choice logic runs on constructed measurements (real ranx nDCG, no timing noise); the export runs
end to end on a tiny random cross-encoder with real ONNX Runtime sessions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import DOCS

from reranker.errors import DataFormatError, RerankerError
from reranker.onnx_manifest import OnnxManifest, Tolerance
from student.parity import ParitySample, load_parity_sample
from student.precision import Measured, choose, fidelity_ndcg, judged_ndcg

pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
from reranker.onnx_runtime import load_onnx
from student.export import AUTO, export_student, parse_precisions

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
EXE = str(Path(sys.executable).with_name("reranker"))

# two queries of five candidates; the reference (fp32) ranks each group 0 > 1 > 2 > 3 > 4
GROUPS = [0] * 5 + [1] * 5
REFERENCE = np.array([5.0, 4, 3, 2, 1, 5, 4, 3, 2, 1])
SWAPPED_TOP = np.array([4.0, 5, 3, 2, 1, 4, 5, 3, 2, 1])  # ranks 1 and 2 exchanged in both groups
SWAPPED_TAIL = np.array([5.0, 4, 3, 1, 2, 5, 4, 3, 1, 2])  # ranks 4 and 5 exchanged


def _sample(labels=None) -> ParitySample:
    return ParitySample([("q", f"d{i}") for i in range(10)], GROUPS, "constructed", labels)


def _measured(name, precision, scores, speed, size=100):
    return Measured(name, precision, None if precision == "fp32" else name.split("(")[1].rstrip(")"), scores, speed, size)


def test_fidelity_ndcg_is_agreement_with_fp32_weighted_to_the_top():
    sample = _sample()
    assert fidelity_ndcg(REFERENCE, sample, REFERENCE) == pytest.approx(1.0)
    top = fidelity_ndcg(SWAPPED_TOP, sample, REFERENCE)
    tail = fidelity_ndcg(SWAPPED_TAIL, sample, REFERENCE)
    assert top < tail < 1.0  # a swap at the top costs more than one at the tail


def test_judged_ndcg_uses_the_labels_and_ignores_unjudged_swaps():
    labels = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # only group 0 has a relevant pair (its first)
    sample = _sample(labels)
    assert judged_ndcg(SWAPPED_TAIL, sample) == (pytest.approx(1.0), 1)  # swapping two non-relevant pairs changes nothing
    assert judged_ndcg(SWAPPED_TOP, sample)[0] == pytest.approx(1 / np.log2(3))
    assert judged_ndcg(REFERENCE, _sample()) is None and judged_ndcg(REFERENCE, _sample([0] * 10)) is None


def test_choice_is_the_fastest_within_the_budget_and_says_why():
    sample = _sample()
    measured = [_measured("fp32", "fp32", REFERENCE, 10.0, 400),
                _measured("int8 (dynamic)", "int8", SWAPPED_TOP, 30.0),
                _measured("int8 (weight-only)", "int8", SWAPPED_TAIL, 15.0)]
    tail_drop = 1 - fidelity_ndcg(SWAPPED_TAIL, sample, REFERENCE)
    top_drop = 1 - fidelity_ndcg(SWAPPED_TOP, sample, REFERENCE)
    assert 0 < tail_drop < top_drop
    c = choose(measured, sample, max_ndcg_drop=(tail_drop + top_drop) / 2)
    assert (c.candidate, c.precision) == ("int8 (weight-only)", "int8") and "fp32's own ranking" in c.measured_against
    assert "faster but over the budget: int8 (dynamic)" in c.reason
    by_name = {r.name: r for r in c.candidates}
    assert by_name["int8 (dynamic)"].ndcg_drop == pytest.approx(top_drop, abs=1e-6) and not by_name["int8 (dynamic)"].within_budget
    assert by_name["fp32"].ndcg_drop == 0 and by_name["fp32"].top10_agreement == 1.0 and by_name["fp32"].judged_drop is None
    assert choose(measured, sample, max_ndcg_drop=1.0).candidate == "int8 (dynamic)"
    assert choose(measured, sample, max_ndcg_drop=0.0).candidate == "fp32"  # always a choice: fp32 is within any budget


def test_with_judgements_the_larger_drop_is_held_to_the_budget():
    """A judged gain on a few calibration queries does not hide a ranking that departs from fp32's, and a judged loss
    counts even where fidelity is high."""
    labels = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]  # group 0: its second pair is relevant; group 1: its fourth
    sample = _sample(labels)
    lucky = np.array([4.0, 5, 3, 2, 1, 5, 4, 3, 2, 1])  # the relevant pair moves up: judged gain, fidelity loss
    measured = [_measured("fp32", "fp32", REFERENCE, 10.0), _measured("int8 (dynamic)", "int8", lucky, 30.0)]
    c = choose(measured, sample, max_ndcg_drop=0.005)
    row = c.candidates[1]
    assert row.judged_drop < 0 < row.fidelity_drop == row.ndcg_drop and not row.within_budget
    assert c.candidate == "fp32" and "judged queries" in c.measured_against
    unlucky = np.array([5.0, 4, 3, 2, 1, 5, 4, 3, 1, 2])  # a tail swap that moves group 1's relevant pair down
    row = choose([measured[0], _measured("int8 (dynamic)", "int8", unlucky, 30.0)], sample).candidates[1]
    assert row.judged_drop > row.fidelity_drop > 0 and row.ndcg_drop == row.judged_drop


def test_parity_samples_carry_judgements_where_there_are_any(tmp_path, tiny_beir):
    demo = load_parity_sample(None, 64)  # the fallback: numeric parity only, the demo's qrels never grade an export
    assert demo.labels is None and len(demo.pairs) == 64 and "numeric parity only" in demo.source
    judged = load_parity_sample(tiny_beir, 64)  # a data set with qrels grades its pairs
    assert judged.labels is not None and len(judged.labels) == len(judged.pairs) and any(judged.labels)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"qid": "a", "query": "q", "document": f"d{i}", "label": int(i == 0)}) + "\n" for i in range(3)))
    assert load_parity_sample(pairs, 10).labels == [1, 0, 0]
    groups = tmp_path / "dev.jsonl"
    groups.write_text("".join(json.dumps({"query_id": f"g{g}", "query": f"q{g}", "candidates": [
        {"doc_id": str(i), "text": f"text {g} {i}", "score": 0.5, "label": 0.5} for i in range(4)]}) + "\n" for g in range(3)))
    s = load_parity_sample(groups, 10)
    assert len(s.pairs) == 10 and s.num_queries == 3 and s.labels is None and s.pairs[4] == ("q1", "text 1 0")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "candidates": [{"doc_id": "1"}]}) + "\n")
    with pytest.raises(DataFormatError, match="bad.jsonl.*line 1.*'text'"):
        load_parity_sample(bad, 10)


def test_parse_precisions_knows_auto():
    assert parse_precisions(["auto"]) == ["fp32", AUTO]
    assert parse_precisions(["auto,fp16"]) == ["fp32", "fp16", AUTO]
    with pytest.raises(RerankerError, match="choose from .*auto"):
        parse_precisions(["int4"])


def test_export_auto_keeps_the_chosen_graph_and_scorers_default_to_it(student_dir, tmp_path, tiny_beir):
    with pytest.raises(RerankerError, match="on your own pairs: give --parity-data"):
        export_student(student_dir, tmp_path / "no-sample", ["auto"])  # never chosen on the demo's judgements
    assert not (tmp_path / "no-sample").exists()
    sample = load_parity_sample(tiny_beir, 48)  # the user's own data, judged
    loose = {"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.0)}  # random tiny model: near-tied scores
    m = export_student(student_dir, tmp_path / "any", ["auto"], parity=sample, tolerances=loose, max_ndcg_drop=1.0, threads=1)
    c = m.choice
    assert {r.name for r in c.candidates} == {"fp32", "int8 (dynamic)", "int8 (weight-only)"}
    assert c.threads == 1 and c.pairs == len(sample.pairs) and "judged queries" in c.measured_against
    fastest = max(c.candidates, key=lambda r: r.pairs_per_second)
    assert c.candidate == fastest.name  # a budget of 1.0 lets every graph in
    assert OnnxManifest.load(tmp_path / "any").choice == c  # written to the manifest
    onnx_files = sorted(p.name for p in (tmp_path / "any").glob("*.onnx"))
    assert onnx_files == (["model.int8.onnx", "model.onnx"] if c.precision == "int8" else ["model.onnx"])
    assert load_onnx(tmp_path / "any").precision == c.precision
    if c.precision == "int8":
        assert c.candidate.split("(")[1].rstrip(")") in " ".join(m.models["int8"].notes)

    strict = export_student(student_dir, tmp_path / "strict", ["auto"], parity=sample, tolerances=loose, max_ndcg_drop=0.0)
    chosen = next(r for r in strict.choice.candidates if r.name == strict.choice.candidate)
    assert chosen.ndcg_drop <= 0.0 and all(not r.within_budget for r in strict.choice.candidates if r.ndcg_drop > 0)

    # graphs that miss the int8 parity tolerance are not candidates, and the reason says so
    none = export_student(student_dir, tmp_path / "none", ["auto"], parity=sample, max_ndcg_drop=1.0,
                          tolerances={"int8": Tolerance(max_abs_diff=None, min_top10_agreement=1.01)})
    assert none.choice.candidate == "fp32" and [r.name for r in none.choice.candidates] == ["fp32"]
    assert "not candidates: int8 (dynamic)" in none.choice.reason and "int8" not in none.models
    assert sorted(p.name for p in (tmp_path / "none").glob("*.onnx")) == ["model.onnx"]


def test_cli_export_auto_reports_the_candidates_and_the_choice(student_dir, tmp_path):
    import subprocess

    refused = subprocess.run([EXE, "export", str(student_dir), str(tmp_path / "nothing"), "--precision", "auto"],
                             capture_output=True, text=True, timeout=600, check=False)
    # no pairs of the user's: auto does not let another corpus's judgements (the demo's) choose the graph
    assert refused.returncode == 2 and "--parity-data" in refused.stderr and not (tmp_path / "nothing" / "onnx_manifest.json").exists()
    pairs = tmp_path / "pairs.jsonl"
    queries = ("solar panels", "wind power", "coal", "energy storage", "carbon dioxide", "turbines", "batteries", "sunlight")
    pairs.write_text("".join(json.dumps({"qid": q, "query": q, "document": d}) + "\n" for q in queries for d in DOCS))  # 48 pairs
    res = subprocess.run([EXE, "export", str(student_dir), str(tmp_path / "onnx"), "--precision", "auto", "--max-ndcg-drop", "0.01",
                          "--parity-data", str(pairs), "--parity-sample", "32", "--threads", "1"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    assert all(str(pairs) in m.parity.sample for m in OnnxManifest.load(tmp_path / "onnx").models.values())
    choice = OnnxManifest.load(tmp_path / "onnx").choice
    assert f"auto: {choice.candidate} is the CPU default" in res.stdout and "candidate fp32:" in res.stdout
    assert choice.max_ndcg_drop == 0.01 and choice.threads == 1 and choice.pairs == 32
    bad = subprocess.run([EXE, "export", str(student_dir), str(tmp_path / "bad"), "--max-ndcg-drop", "-1"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode != 0 and "max-ndcg-drop" in bad.stderr


def test_measure_times_the_candidates_in_turn_and_keeps_each_ones_best_round():
    from student.precision import measure

    calls = []
    now = [0.0]  # an injected clock: each call's cost is set by the test, never by a real sleep

    class Clocked:  # a scorer whose cost is set per call: the machine's load changing between rounds
        def __init__(self, name, costs):
            self.name, self.costs = name, iter(costs)

        def score(self, pairs, batch_size=32):
            calls.append(self.name)
            now[0] += next(self.costs)
            return np.zeros(len(pairs))

    sample = _sample()
    a, b = _measured("fp32", "fp32", REFERENCE, 0.0), _measured("int8 (dynamic)", "int8", REFERENCE, 0.0)
    out = measure([(a, Clocked("a", [0.05, 0.20])), (b, Clocked("b", [0.20, 0.02]))], sample, passes=2, clock=lambda: now[0])
    assert calls == ["a", "b", "a", "b"]  # rounds, not one candidate's passes after another's
    # each keeps its best round (a's first, b's second): b's 0.02 s beats a's 0.05 s although b ran in the slow round first
    assert out == [a, b]
    assert a.pairs_per_second == pytest.approx(len(sample.pairs) / 0.05) and b.pairs_per_second == pytest.approx(len(sample.pairs) / 0.02)
