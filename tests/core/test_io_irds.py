"""ir_datasets ids offline: SciFact placed by hand under IR_DATASETS_HOME (../shared/README.md).

ir_datasets fixes its data folders when it is imported (``base_path = util.home_path()/NAME`` at
module level in ``ir_datasets/datasets/beir.py``), so setting IR_DATASETS_HOME in this process
after another test imported it would have no effect. The load therefore runs in a fresh
interpreter with the variable set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

SCRIPT = r"""
import json, sys
from reranker.io.dataset import load_dataset

ds = load_dataset("irds:beir/scifact/test")
doc = ds.corpus.get("4983")
out = {
    "name": ds.name,
    "queries": len(ds.queries),
    "qrels_queries": len(ds.qrels),
    "judgements": ds.qrels.num_entries(),
    "queries_judged": set(ds.queries) == set(ds.qrels),
    "docs": len(ds.corpus),
    "title_4983": doc.title if doc else None,
    "text_4983": doc.text if doc else None,
    "contains_4983": "4983" in ds.corpus,
    "missing_doc": ds.corpus.get("no-such-doc") is None,
    "first_ids": [d.id for _, d in zip(range(3), ds.corpus)],
}
json.dump(out, sys.stdout)
"""


def _scifact_doc(scifact_zip, doc_id):
    with zipfile.ZipFile(scifact_zip) as zf, zf.open("scifact/corpus.jsonl") as f:
        for line in f:
            obj = json.loads(line)
            if obj["_id"] == doc_id:
                return obj
    raise AssertionError(f"{doc_id} not in {scifact_zip}")


@pytest.mark.slow
def test_irds_scifact_offline(scifact_zip, tmp_path, monkeypatch):
    home = tmp_path / "irds_home"
    target = home / "beir" / "scifact" / "source.zip"
    target.parent.mkdir(parents=True)
    shutil.copyfile(scifact_zip, target)
    monkeypatch.setenv("IR_DATASETS_HOME", str(home))
    monkeypatch.setenv("IR_DATASETS_TMP", str(tmp_path / "irds_tmp"))
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)

    expected = _scifact_doc(scifact_zip, "4983")
    assert got["name"] == "beir/scifact/test"
    assert got["queries"] == 300
    assert got["qrels_queries"] == 300
    assert got["judgements"] == 339
    assert got["queries_judged"] is True
    assert got["docs"] == 5183
    assert got["title_4983"] == expected["title"]
    assert got["text_4983"] == expected["text"]
    assert got["contains_4983"] is True
    assert got["missing_doc"] is True
    assert len(got["first_ids"]) == 3
    # ir_datasets used the hand-placed zip, and wrote its caches under our home, nowhere else
    assert (home / "beir" / "scifact").is_dir()
    assert any(p.name != "source.zip" for p in (home / "beir" / "scifact").rglob("*"))
