"""benchmarks/reproduce.py: committed results against a rerun, quality judged, timings only reported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.integration

ROOT = REPO
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

OLD = {"results": [{"config": "student", "ndcg10": 0.7001, "pairs_per_s": 40.0}, {"config": "bm25", "ndcg10": 0.68}],
       "env": {"cores": 2}, "timings": [{"step": "x", "seconds": 3.0}], "nll": 0.17}


def test_leaves_name_list_items_by_their_config():
    got = reproduce.leaves(OLD)
    assert got["results[student].ndcg10"] == 0.7001 and got["results[bm25].ndcg10"] == 0.68
    assert got["env.cores"] == 2.0 and "results[student].config" not in got


def test_quality_within_tolerance_passes_and_timings_are_not_judged():
    new = json.loads(json.dumps(OLD))
    new["results"][0].update(ndcg10=0.7031, pairs_per_s=10.0)  # slower machine: reported, not a failure
    new["env"]["cores"] = 16
    quality, timing, _ = reproduce.compare(OLD, new, atol=0.005)
    assert all(q["ok"] for q in quality) and {q["key"] for q in quality} == {"results[student].ndcg10", "results[bm25].ndcg10", "nll"}
    assert [t["key"] for t in timing] == ["results[student].pairs_per_s"]


def test_a_moved_or_missing_quality_figure_fails():
    new = json.loads(json.dumps(OLD))
    new["results"][0]["ndcg10"] = 0.69
    del new["nll"]
    quality, _, _ = reproduce.compare(OLD, new, atol=0.005)
    bad = {q["key"] for q in quality if not q["ok"]}
    assert bad == {"results[student].ndcg10", "nll"}


def test_a_figure_only_the_new_run_has_is_shown_not_judged():
    new = json.loads(json.dumps(OLD))
    new["results"][0]["total_steps"] = 180  # a newer script reports more
    quality, _, _ = reproduce.compare(OLD, new, atol=0.005)
    added = [q for q in quality if q.get("added")]
    assert [(q["key"], q["old"], q["new"], q["ok"]) for q in added] == [("results[student].total_steps", None, 180.0, True)]
    assert all(q["ok"] for q in quality)


def test_settings_are_shown_when_they_differ_not_judged():
    old = {"student": {"config": {"max_steps": 100, "lr": 1e-4}, "best": 0.958}}
    new = {"student": {"config": {"stop_after": 100, "lr": 1e-4}, "best": 0.958}}
    quality, timing, settings = reproduce.compare(old, new, atol=0.005)
    assert [q["key"] for q in quality] == ["student.best"] and all(q["ok"] for q in quality) and not timing
    assert settings == [{"key": "student.config.max_steps", "old": 100.0, "new": None},
                        {"key": "student.config.stop_after", "old": None, "new": 100.0}]


def test_cli_compares_the_committed_file_with_the_working_tree(tmp_path):
    """On a throwaway git repository: an unchanged result passes, a moved one exits 1 and is named in the report."""
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "reproduce.py").write_text((ROOT / "benchmarks" / "reproduce.py").read_text())
    result = repo / "benchmarks" / "results" / "demo.json"
    result.write_text(json.dumps(OLD))
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)
    git("init", "-q"), git("add", "."), git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    run = lambda: subprocess.run([sys.executable, "benchmarks/reproduce.py", "demo"], cwd=repo, capture_output=True, text=True)
    ok = run()
    assert ok.returncode == 0, ok.stderr
    moved = json.loads(json.dumps(OLD))
    moved["nll"] = 0.3
    result.write_text(json.dumps(moved))
    bad = run()
    assert bad.returncode == 1 and "nll" in bad.stderr
    report = (repo / "benchmarks" / "results" / "reproduction.md").read_text()
    assert report.count("## demo") == 2 and "**moved**" in report


def test_a_pages_hand_written_reading_survives_a_rerun(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    common.write_markdown("page", ["# Page", "", "| a | 0.70 |"], out=tmp_path)
    assert (tmp_path / "page.md").read_text() == "# Page\n\n| a | 0.70 |\n"
    with (tmp_path / "page.md").open("a") as f:
        f.write("\n## Reading (written after the runs)\n\n- a beats b.\n")
    common.write_markdown("page", ["# Page", "", "| a | 0.71 |"], out=tmp_path)
    assert (tmp_path / "page.md").read_text() == "# Page\n\n| a | 0.71 |\n\n## Reading (written after the runs)\n\n- a beats b.\n"
    common.write_markdown("page", ["# Page", "", "## Reading", "", "- made by the script"], out=tmp_path)
    assert (tmp_path / "page.md").read_text() == "# Page\n\n## Reading\n\n- made by the script\n"
