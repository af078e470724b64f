"""The SQLite label store: round trips, idempotent reruns, validation, other processes, a real SIGKILL, export."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

from reranker.errors import DataFormatError, RerankerError
from reranker.io.groups import GroupCandidate, LabelGroup, read_groups
from reranker.io.jsonl import read_corpus_jsonl, read_queries_jsonl
from reranker.records import Run
from teacher.base import Judgement, Teacher
from teacher.store import LabelRow, LabelStore

pytestmark = pytest.mark.slow

ROOT = REPO
T1, T2 = "bm25:ab12cd34ef56", "hf:0123456789ab"
P1, P2 = "relevance-fewshot@1", "-"


def rows_for(qids, docs=("d1", "d2", "d3")):
    """Deterministic (query_id, doc_id, score, label) rows."""
    out = []
    for qi, q in enumerate(qids):
        for di, d in enumerate(docs):
            score = (qi * 7 + di * 3) % 11 - 5.25
            out.append((q, d, score, 1 / (1 + math.exp(-score))))
    return out


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as s:
        yield s


def test_round_trip_in_key_order(tmp_path):
    path = tmp_path / "nested" / "deeper" / "labels.sqlite"  # parent folders are created
    rows = rows_for(["q2", "q10", "q1"], docs=("d9", "d1"))
    with LabelStore(path) as store:
        assert store.add_batch(T1, P1, rows) == 6
        got = list(store.labels())
        assert store.count() == 6
    assert path.is_file()
    expected = sorted((LabelRow(T1, P1, q, d, s, lab) for q, d, s, lab in rows), key=lambda r: (r.query_id, r.doc_id))
    assert got == expected
    assert [(r.query_id, r.doc_id) for r in got][:3] == [("q1", "d1"), ("q1", "d9"), ("q10", "d1")]
    with pytest.raises(sqlite3.ProgrammingError):  # the with block closed the connection
        store.count()


def test_rerun_inserts_nothing_and_keeps_first_values(store):
    rows = rows_for(["q1", "q2"])
    assert store.add_batch(T1, P1, rows) == 6
    assert store.add_batch(T1, P1, rows) == 0
    assert store.count() == 6
    changed = [(q, d, s + 100.0, 0.0) for q, d, s, _ in rows]
    assert store.add_batch(T1, P1, changed + [("q3", "d1", 1.0, 0.5)]) == 1  # only q3 is new
    assert store.count() == 7
    first = {(r.query_id, r.doc_id): (r.score, r.label) for r in store.labels()}
    assert all(first[(q, d)] == (s, lab) for q, d, s, lab in rows)
    assert store.add_batch(T1, P1, []) == 0


def test_teachers_and_prompts_are_kept_apart(store):
    rows = rows_for(["q1", "q2"])
    assert store.add_batch(T1, P1, rows) == 6
    assert store.add_batch(T1, P2, rows[:2]) == 2
    assert store.add_batch(T2, P1, [(q, d, -s, 1 - lab) for q, d, s, lab in rows[:4]]) == 4
    assert (store.count(), store.count(T1), store.count(T1, P1), store.count(T1, P2), store.count(T2)) == (12, 8, 6, 2, 4)
    assert store.count(prompt=P1) == 10
    assert {(r.teacher, r.prompt) for r in store.labels(T2)} == {(T2, P1)}
    assert store.as_run(T2, P1)["q1"]["d1"] == -rows[0][2]
    assert store.done(T1, P2, [(q, d) for q, d, *_ in rows]) == {(q, d) for q, d, *_ in rows[:2]}
    assert store.keys() == [(T1, P2), (T1, P1), (T2, P1)]


def test_done_with_many_keys(store):
    stored = [(f"q{i // 20:04d}", f"d{i % 20:02d}", float(i), 0.5) for i in range(3000)]
    for start in range(0, len(stored), 500):
        assert store.add_batch(T1, P1, stored[start : start + 500]) == 500
    absent = [(f"q{i:04d}", "d99") for i in range(2000)] + [("q0000", "d20")]
    asked = [(q, d) for q, d, *_ in stored[::2]] + absent
    found = store.done(T1, P1, asked)
    assert found == {(q, d) for q, d, *_ in stored[::2]}
    assert len(found) == 1500
    assert store.done(T1, P2, asked) == set()
    assert store.done(T1, P1, []) == set()
    assert store.done(T1, P1, asked[:3]) == set(asked[:3])  # the temp table is emptied between calls


def test_as_run(store):
    rows = rows_for(["q1", "q2"])
    store.add_batch(T1, P1, rows)
    store.add_batch(T2, P1, [("q9", "d9", 1.0, 1.0)])
    run = store.as_run(T1, P1)
    assert isinstance(run, Run)
    assert run.to_dict() == {"q1": {d: s for q, d, s, _ in rows if q == "q1"}, "q2": {d: s for q, d, s, _ in rows if q == "q2"}}
    labels = store.as_run(T1, P1, field="label")
    assert labels["q2"]["d3"] == rows[5][3]
    assert [h.doc_id for h in run.ranking("q1")] == [d for _, d, _, _ in sorted(rows[:3], key=lambda r: -r[2])]
    with pytest.raises(RerankerError, match="field"):
        store.as_run(T1, P1, field="created")
    with pytest.raises(RerankerError, match="no labels.*stored: .*bm25:ab12cd34ef56"):
        store.as_run("bm25:000000000000", P1)


@pytest.mark.parametrize(
    "bad",
    [("qx", "dy", 0.3, 1.5), ("qx", "dy", 0.3, float("nan")), ("qx", "dy", 0.3, -0.01),
     ("qx", "dy", float("inf"), 0.5), ("qx", "dy", float("nan"), 0.5)],
)
def test_invalid_row_rejects_the_whole_batch(store, bad):
    store.add_batch(T1, P1, [("q0", "d0", 1.0, 0.5)])
    batch = rows_for(["q1", "q2"]) + [bad] + rows_for(["q3"])
    with pytest.raises(RerankerError, match=r"query 'qx', doc 'dy'"):
        store.add_batch(T1, P1, batch)
    assert store.count() == 1
    assert store.done(T1, P1, [(q, d) for q, d, *_ in batch]) == set()


def test_malformed_row_is_a_clear_error(store):
    with pytest.raises(RerankerError, match="expected \\(query_id, doc_id, score, label\\)"):
        store.add_batch(T1, P1, [("q1", "d1", "high", 0.5)])
    assert store.count() == 0


def test_garbage_file_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "labels.sqlite"
    garbage = b"this is not a database\x00\xff" * 200
    path.write_bytes(garbage)
    with pytest.raises(RerankerError, match=r"labels\.sqlite.*not a label store.*move this file away") as info:
        LabelStore(path)
    assert not isinstance(info.value, sqlite3.Error)
    assert path.read_bytes() == garbage


def test_other_schema_is_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    with pytest.raises(RerankerError, match=r"other\.sqlite.*schema version 0 \(tables: notes\)"):
        LabelStore(other)
    con = sqlite3.connect(other)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    con.close()

    newer = tmp_path / "newer.sqlite"
    LabelStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(RerankerError, match="schema version 99.*reads version 1"):
        LabelStore(newer)


def test_settings_for_several_processes(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path, timeout=12.5) as store:
        conn = store._conn
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 12500
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    raw.close()


def test_second_store_on_the_same_file_sees_commits(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as a, LabelStore(path) as b:
        assert b.count() == 0
        a.add_batch(T1, P1, rows_for(["q1"]))
        assert b.count() == 3
        assert list(b.labels()) == list(a.labels())
        assert b.add_batch(T1, P1, rows_for(["q1", "q2"])) == 3
        assert a.count(T1, P1) == 6
        a.register_teacher(T2, {"teacher": "hf"})
        assert b.teachers() == {T2: {"teacher": "hf"}}


class _Fixed(Teacher):
    name = "fixed"
    prompt_version = "relevance-fewshot@1"

    def score_batch(self, pairs):
        return [Judgement(0.0, 0.5) for _ in pairs]


def test_register_teacher(store):
    t = _Fixed(model="tiny", temperature=0.0, stop=("\n",))
    store.register_teacher(t.fingerprint, t.describe())
    got = store.teachers()
    assert list(got) == [t.fingerprint]
    assert got[t.fingerprint] == json.loads(json.dumps(t.describe()))
    assert got[t.fingerprint]["params"]["stop"] == ["\n"]
    store.register_teacher(t.fingerprint, {"teacher": "fixed", "note": "re-described"})
    assert store.teachers()[t.fingerprint]["note"] == "re-described"


# --- a real crash: SIGKILL in the middle of a labelling run ----------------------------

CHILD = textwrap.dedent(
    """
    import math, sys
    from teacher.store import LabelStore
    path, n_batches = sys.argv[1], int(sys.argv[2])
    with LabelStore(path) as store:
        for b in range(n_batches):
            rows = []
            for i in range(50):
                x = math.sin(b * 50 + i) * 4
                rows.append((f"q{b:05d}", f"d{i:02d}", x, 1 / (1 + math.exp(-x))))
            print(b, store.add_batch("bm25:crash", "-", rows), flush=True)
    """
)
N_BATCHES = 1500


def _child(path, n=N_BATCHES):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(n)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return [tuple(map(int, line.split())) for line in out.splitlines()]


def test_sigkill_mid_run_leaves_whole_batches_and_a_rerun_completes(tmp_path):
    path = tmp_path / "labels.sqlite"
    proc = _child(path)
    seen = []
    while len(seen) < 5:
        line = proc.stdout.readline()
        assert line, f"the child stopped early: {proc.communicate()[1]}"
        seen.append(line)
    # no pause: the child keeps writing batches, so the kill lands wherever it is (inside a batch or between two);
    # the verdicts below hold for any landing point
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    raw = sqlite3.connect(path)  # a plain connection: recovers the WAL like any reader would
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    n = raw.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    sizes = raw.execute("SELECT query_id, COUNT(*) FROM labels GROUP BY query_id ORDER BY query_id").fetchall()
    dupes = raw.execute("SELECT COUNT(*) FROM (SELECT 1 FROM labels GROUP BY teacher, prompt, query_id, doc_id HAVING COUNT(*) > 1)")
    assert dupes.fetchone()[0] == 0
    raw.close()
    assert n % 50 == 0 and all(size == 50 for _, size in sizes)  # no half batch
    assert 5 * 50 <= n < N_BATCHES * 50, "every printed batch survives, and the kill came before the end"
    assert [q for q, _ in sizes] == [f"q{b:05d}" for b in range(n // 50)]

    rerun = _finish(_child(path))
    assert sum(inserted for _, inserted in rerun) == N_BATCHES * 50 - n  # only the missing rows
    assert all(inserted == (0 if b < n // 50 else 50) for b, inserted in rerun)
    reference = tmp_path / "reference.sqlite"
    assert sum(inserted for _, inserted in _finish(_child(reference))) == N_BATCHES * 50
    with LabelStore(path) as resumed, LabelStore(reference) as fresh:
        assert resumed.count() == N_BATCHES * 50
        assert list(resumed.labels()) == list(fresh.labels())


def test_two_processes_writing_the_same_new_file(tmp_path):
    """Both create the file and write every batch at once: no "database is locked", no duplicate."""
    path = tmp_path / "labels.sqlite"
    a, b = _child(path, 300), _child(path, 300)
    inserted = sum(n for _, n in _finish(a)) + sum(n for _, n in _finish(b))
    assert inserted == 300 * 50
    with LabelStore(path) as store:
        assert store.count() == 300 * 50
        assert store.done("bm25:crash", "-", [(f"q{b:05d}", "d49") for b in range(301)]) == {(f"q{b:05d}", "d49") for b in range(300)}


# --- export for the student ---------------------------------------------------------------


def test_export_and_read_groups(tiny_beir, tmp_path):
    corpus = read_corpus_jsonl(tiny_beir / "corpus.jsonl")
    queries = read_queries_jsonl(tiny_beir / "queries.jsonl")
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.add_batch(T1, P1, [("q3", "d2", 4.0, 0.9), ("q3", "d5", 4.0, 0.7), ("q1", "d3", -1.0, 0.1),
                                 ("q1", "d1", 3.5, 0.95), ("q1", "d4", 0.5, 0.4)])
        store.add_batch(T2, P1, [("q2", "d4", 1.0, 0.5)])  # another teacher: not exported
        n = store.export_groups(tmp_path / "out" / "groups.jsonl", T1, P1, queries, corpus, positives={"q1": "d1", "q9": "d6"})
        n_plain = store.export_groups(tmp_path / "plain.jsonl", T1, P1, queries, corpus, include_text=False)
    assert n == n_plain == 2
    lines = (tmp_path / "out" / "groups.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["query_id", "query", "positive", "candidates"]
    assert list(first["candidates"][0]) == ["doc_id", "text", "score", "label"]
    groups = read_groups(tmp_path / "out" / "groups.jsonl")
    assert groups == [
        LabelGroup("q1", "how do solar panels work", "d1", [
            GroupCandidate("d1", 3.5, 0.95, corpus["d1"].contents),
            GroupCandidate("d4", 0.5, 0.4, corpus["d4"].contents),
            GroupCandidate("d3", -1.0, 0.1, corpus["d3"].contents),
        ]),
        LabelGroup("q3", "renewable energy from wind", None, [
            GroupCandidate("d5", 4.0, 0.7, corpus["d5"].contents),  # tie on score: doc id descending, as Run.ranking
            GroupCandidate("d2", 4.0, 0.9, corpus["d2"].contents),
        ]),
    ]
    assert corpus["d1"].contents == "Solar power Photovoltaic panels turn sunlight into electricity."
    plain = read_groups(tmp_path / "plain.jsonl")
    assert "text" not in json.loads((tmp_path / "plain.jsonl").read_text().splitlines()[0])["candidates"][0]
    assert [c.text for g in plain for c in g.candidates] == [None] * 5
    assert plain[0].positive is None and [c.doc_id for c in plain[0].candidates] == ["d1", "d4", "d3"]


def test_export_refuses_missing_docs_and_queries(tiny_beir, tmp_path):
    corpus = read_corpus_jsonl(tiny_beir / "corpus.jsonl")
    queries = read_queries_jsonl(tiny_beir / "queries.jsonl")
    out = tmp_path / "groups.jsonl"
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.add_batch(T1, P1, [("q1", "d1", 1.0, 0.5), ("q1", "d99", 0.0, 0.5)])
        with pytest.raises(RerankerError, match="1 doc ids missing from the corpus \\('d99'\\)"):
            store.export_groups(out, T1, P1, queries, corpus)
        store.add_batch(T2, P1, [("qX", "d1", 1.0, 0.5)])
        with pytest.raises(RerankerError, match="1 queries missing from the queries \\('qX'\\)"):
            store.export_groups(out, T2, P1, queries, corpus)
        store.add_batch(P2, P1, [("q2", "d1", 1.0, 0.5)])
        with pytest.raises(RerankerError, match="'d77'"):
            store.export_groups(out, P2, P1, queries, corpus, positives={"q2": "d77"})
    assert not out.exists() and not (tmp_path / "groups.jsonl.tmp").exists()


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"query_id": "q2", "query": "x", "positive": null, "candidates": [', "not valid JSON"),
        ('{"query_id": "q2", "query": "x", "positive": null}', "'candidates'"),
        ('{"query_id": "q2", "query": "x", "positive": null, "candidates": [{"doc_id": "d1", "score": 1, "label": 2}]}',
         "in \\[0, 1\\]"),
        ('{"query_id": "q2", "query": "x", "positive": null, "candidates": [{"doc_id": "d1", "score": "1", "label": 1}]}',
         "'score' must be a finite number"),
        ('{"query_id": "q1", "query": "x", "positive": null, "candidates": []}', "appears twice"),
    ],
)
def test_read_groups_names_the_bad_line(tmp_path, bad_line, message):
    good = json.dumps({"query_id": "q1", "query": "x", "positive": "d1", "candidates": [{"doc_id": "d1", "score": 1, "label": 1}]})
    path = tmp_path / "groups.jsonl"
    path.write_text(f"{good}\n\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message) as info:
        read_groups(path)
    assert info.value.line == 3
    assert str(path) in str(info.value)
    path.write_text(f"{good}\n\n", encoding="utf-8")
    assert read_groups(path)[0].candidates == [GroupCandidate("d1", 1.0, 1.0)]
