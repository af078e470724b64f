"""Benchmark pages say what they measured: a student_curve point is its kept weights', not the run's last step."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their common module by name
spec = importlib.util.spec_from_file_location("student_curve", REPO / "benchmarks" / "student_curve.py")
student_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(student_curve)

OLD_POINT = {"row": "recipe", "seed": 0, "step": 100, "pairs": 3200, "seconds": 3804.0, "best_step": 0, "ndcg@10": 0.7362}


def test_a_point_recorded_at_the_runs_last_step_becomes_its_kept_weights_point():
    got = student_curve.kept_point(OLD_POINT)
    assert (got["step"], got["pairs"], got["seconds"]) == (0, 0, 0.0)  # the fitted start: no pair, no training second
    assert (got["trained_steps"], got["trained_pairs"], got["trained_seconds"]) == (100, 3200, 3804.0)
    later = student_curve.kept_point({**OLD_POINT, "best_step": 40})
    assert (later["step"], later["pairs"], later["seconds"]) == (40, 1280, None)  # its seconds were never recorded
    assert student_curve.kept_point(got) == got  # a point recorded now is kept as it is


def test_the_committed_page_plots_kept_points(tmp_path):
    """The committed json's recipe rows that kept step 0 are drawn at 0 pairs, not at the 3,200 pairs they trained."""
    import json

    points = json.loads((REPO / "benchmarks" / "results" / "student_curve.json").read_text())["points"]
    for p in map(student_curve.kept_point, points.values()):
        assert p["pairs"] == p["step"] * (p["trained_pairs"] // p["trained_steps"])
        assert p["step"] <= p["trained_steps"]
