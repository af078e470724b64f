"""The label store: the teacher's soft labels in one SQLite file, resumable and shared by processes.

Labels are keyed by ``(teacher fingerprint, prompt key, query id, doc id)``, so labels of
another teacher configuration or prompt template never mix. Each :meth:`LabelStore.add_batch`
is one transaction: a run killed at any point leaves whole batches only, and a rerun skips
what is stored (:meth:`LabelStore.done`) or re-inserts it harmlessly (``INSERT OR IGNORE``).

:meth:`LabelStore.export_groups` writes the student's input, one JSON line per query::

    {"query_id": "q1", "query": "...", "positive": "d1" | null,
     "candidates": [{"doc_id": "d1", "text": "...", "score": 3.2, "label": 0.96}, ...]}

with candidates best first; :func:`reranker.io.groups.read_groups` reads it back.

A teacher's calibration (:mod:`teacher.calibration`: temperature ``T`` and bias ``b`` fitted on
seed judgements) is kept in a ``calibrations`` table, keyed like the labels; when one is stored,
:meth:`LabelStore.export_groups` exports ``label = sigmoid(score / T + b)`` instead of the
stored label. Without one, the exported labels are the stored ones. The table is created on
the first :meth:`LabelStore.set_calibration`, so older stores open unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from reranker.errors import RerankerError
from reranker.io.jsonl import write_jsonl
from reranker.records import Corpus, Query, Run
from reranker.scoring import sigmoid

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction before giving up

_SCHEMA = """
CREATE TABLE labels (
    teacher TEXT NOT NULL, prompt TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    score REAL NOT NULL, label REAL NOT NULL CHECK (label BETWEEN 0 AND 1), created REAL,
    PRIMARY KEY (teacher, prompt, query_id, doc_id)
);
CREATE TABLE teachers (teacher TEXT PRIMARY KEY, description TEXT);
"""


@dataclass(frozen=True, slots=True)
class LabelRow:
    teacher: str
    prompt: str
    query_id: str
    doc_id: str
    score: float
    label: float


class LabelStore:
    """Soft labels in a SQLite file; ``with LabelStore(path) as store: ...`` closes it.

    Several processes (Ray workers, a rerun beside a running job) may open the same file:
    WAL lets readers run beside the one writer, and writers wait up to ``timeout`` seconds
    for each other instead of failing with "database is locked". WAL needs all processes on
    one machine (not a network file system), and a store object belongs to one thread.
    """

    def __init__(self, path: str | Path, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own.
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._timeout = timeout
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise RerankerError(
                    f"{self.path}: not a label store SQLite file ({exc}); "
                    "pass another path, or move this file away to start a new store"
                ) from None
            raise RerankerError(f"{self.path}: cannot open the label store ({exc}; the busy timeout is {timeout:g} s)") from exc
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        conn = self._conn
        # NORMAL, not FULL: in WAL mode a killed process never loses a committed batch nor
        # corrupts the file; only a power cut / OS crash may drop the last few commits, which
        # a rerun labels again. FULL would fsync on every batch, for labels that are recomputable.
        conn.execute("PRAGMA synchronous=NORMAL")
        version, tables = self._schema()  # reads the header first: garbage fails here, before any write
        if version == 0 and not tables:
            with self._transaction():  # two processes creating the same new file: one creates, one waits
                version, tables = self._schema()
                if version == 0 and not tables:
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    version, tables = self._schema()
                    log.info("created label store %s", self.path)
        if version != SCHEMA_VERSION or not {"labels", "teachers"} <= tables:
            raise RerankerError(
                f"{self.path}: label store schema version {version} (tables: {', '.join(sorted(tables)) or 'none'}), "
                f"this version of the toolkit reads version {SCHEMA_VERSION}; "
                "use a matching toolkit version or pass a new store path"
            )
        self._wal()

    def _wal(self) -> None:
        """WAL mode (persistent; only after the file proved to be ours). Switching needs the file to itself; when two
        processes open the same new file and escalate their locks at once, SQLite refuses one of them at once instead
        of calling its busy handler (deadlock avoidance), so "database is locked" is retried here until the busy
        timeout (a clean-clone run of test_two_processes_writing_the_same_new_file failed on it)."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _schema(self) -> tuple[int, set[str]]:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        return version, {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back on any exception."""
        self._conn.execute(begin)  # IMMEDIATE takes the write lock now (waiting up to the timeout)
        try:
            yield self._conn
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LabelStore {str(self.path)!r}>"

    # --- teachers ---------------------------------------------------------------------

    def register_teacher(self, fingerprint: str, description: Mapping[str, Any]) -> None:
        """Record ``Teacher.describe()`` under its fingerprint (replaces an earlier description)."""
        blob = json.dumps(dict(description), sort_keys=True, default=str)
        self._conn.execute(
            "INSERT INTO teachers VALUES (?, ?) ON CONFLICT(teacher) DO UPDATE SET description=excluded.description",
            (fingerprint, blob),
        )

    def teachers(self) -> dict[str, dict[str, Any]]:
        return {t: json.loads(d) for t, d in self._conn.execute("SELECT teacher, description FROM teachers ORDER BY teacher")}

    # --- calibration ------------------------------------------------------------------

    def set_calibration(self, teacher: str, prompt: str, temperature: float, bias: float = 0.0,
                        details: Mapping[str, Any] | None = None) -> None:
        """Store (or replace) the calibration of ``teacher`` / ``prompt``; exports apply it from now on."""
        if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(bias)):
            raise RerankerError(f"calibration of {teacher!r}: temperature must be finite and > 0 and bias finite, "
                                f"got T={temperature!r}, b={bias!r}")
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS calibrations (teacher TEXT NOT NULL, prompt TEXT NOT NULL, "
                "temperature REAL NOT NULL, bias REAL NOT NULL, details TEXT, created REAL, PRIMARY KEY (teacher, prompt))"
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO calibrations VALUES (?, ?, ?, ?, ?, ?)",
                (teacher, prompt, float(temperature), float(bias), json.dumps(dict(details or {}), default=str), time.time()),
            )

    def calibration(self, teacher: str, prompt: str) -> dict[str, Any] | None:
        """``{"temperature", "bias", "details"}`` stored for ``teacher`` / ``prompt``, or None."""
        if "calibrations" not in self._schema()[1]:
            return None
        row = self._conn.execute(
            "SELECT temperature, bias, details FROM calibrations WHERE teacher=? AND prompt=?", (teacher, prompt)
        ).fetchone()
        if row is None:
            return None
        return {"temperature": row[0], "bias": row[1], "details": json.loads(row[2] or "{}")}

    def clear_calibration(self, teacher: str, prompt: str) -> bool:
        if "calibrations" not in self._schema()[1]:
            return False
        with self._transaction():
            cur = self._conn.execute("DELETE FROM calibrations WHERE teacher=? AND prompt=?", (teacher, prompt))
        return cur.rowcount > 0

    # --- labels -----------------------------------------------------------------------

    def add_batch(self, teacher: str, prompt: str, rows: Iterable[tuple[str, str, float, float]]) -> int:
        """Store ``(query_id, doc_id, score, label)`` rows in one transaction; returns how many were new.

        All rows are checked first (finite score, finite label in [0, 1]): one bad row is a
        :class:`RerankerError` and nothing of the batch is written. Keys already stored
        keep their first value.
        """
        now = time.time()
        checked = []
        for row in rows:
            try:
                qid, did, score, label = row
                score, label = float(score), float(label)
            except (TypeError, ValueError) as exc:
                raise RerankerError(f"label store: bad row {row!r} for teacher {teacher!r}: {exc}; "
                                    "expected (query_id, doc_id, score, label)") from None
            if not math.isfinite(score) or not (math.isfinite(label) and 0.0 <= label <= 1.0):
                raise RerankerError(
                    f"label store: query {qid!r}, doc {did!r} (teacher {teacher!r}, prompt {prompt!r}) has "
                    f"score={score!r}, label={label!r}; the score must be finite and the label in [0, 1]. "
                    "Nothing of this batch was stored"
                )
            checked.append((teacher, prompt, str(qid), str(did), score, label, now))
        if not checked:
            return 0
        conn = self._conn
        before = conn.total_changes
        with self._transaction():
            conn.executemany("INSERT OR IGNORE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)", checked)
        inserted = conn.total_changes - before
        log.debug("label store: %d of %d rows new (%s, %s)", inserted, len(checked), teacher, prompt)
        return inserted

    def done(self, teacher: str, prompt: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The ``(query_id, doc_id)`` keys among ``keys`` that already have a label.

        The keys go through a temporary table joined on the primary key: tens of thousands
        of keys take milliseconds (long ``IN`` / ``OR`` lists are far slower or hit limits).
        """
        conn = self._conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _done_keys (query_id TEXT, doc_id TEXT)")
        with self._transaction("BEGIN"):  # temp rows never reach the file; this only batches the inserts
            conn.execute("DELETE FROM _done_keys")
            conn.executemany("INSERT INTO _done_keys VALUES (?, ?)", ((str(q), str(d)) for q, d in keys))
            found = set(conn.execute(
                "SELECT k.query_id, k.doc_id FROM _done_keys k JOIN labels l ON l.teacher=? AND l.prompt=? "
                "AND l.query_id=k.query_id AND l.doc_id=k.doc_id", (teacher, prompt),
            ))
            conn.execute("DELETE FROM _done_keys")
        return found

    @staticmethod
    def _where(teacher: str | None, prompt: str | None) -> tuple[str, list[str]]:
        given = [(column, v) for column, v in (("teacher", teacher), ("prompt", prompt)) if v is not None]
        return (" WHERE " + " AND ".join(f"{c}=?" for c, _ in given)) if given else "", [v for _, v in given]

    def count(self, teacher: str | None = None, prompt: str | None = None) -> int:
        where, params = self._where(teacher, prompt)
        return self._conn.execute(f"SELECT COUNT(*) FROM labels{where}", params).fetchone()[0]

    def keys(self) -> list[tuple[str, str]]:
        """The ``(teacher, prompt)`` pairs that have labels."""
        return list(self._conn.execute("SELECT DISTINCT teacher, prompt FROM labels ORDER BY teacher, prompt"))

    def labels(self, teacher: str | None = None, prompt: str | None = None) -> Iterator[LabelRow]:
        """Stored labels ordered by (query_id, doc_id), then teacher and prompt."""
        where, params = self._where(teacher, prompt)
        sql = f"SELECT teacher, prompt, query_id, doc_id, score, label FROM labels{where} ORDER BY query_id, doc_id, teacher, prompt"
        for row in self._conn.execute(sql, params):
            yield LabelRow(*row)

    def _require(self, teacher: str, prompt: str) -> list[LabelRow]:
        rows = list(self.labels(teacher, prompt))
        if not rows:
            known = ", ".join(f"{t} / {p}" for t, p in self.keys()) or "none"
            raise RerankerError(f"{self.path}: no labels for teacher {teacher!r}, prompt {prompt!r} (stored: {known})")
        return rows

    def as_run(self, teacher: str, prompt: str, field: str = "score") -> Run:
        """The labels of one teacher and prompt as a :class:`Run` of ``score`` or ``label`` values."""
        if field not in ("score", "label"):
            raise RerankerError(f"as_run: field must be 'score' or 'label', not {field!r}")
        run = Run(name=f"{teacher}/{prompt}")
        for row in self._require(teacher, prompt):
            run.add(row.query_id, row.doc_id, getattr(row, field))
        return run

    def export_groups(
        self, path: str | Path, teacher: str, prompt: str, queries: Mapping[str, Query], corpus: Corpus,
        positives: Mapping[str, str] | None = None, include_text: bool = True, calibrated: bool = True,
    ) -> int:
        """Write one JSON line per labelled query (sorted by id) for the student; returns the count.

        Candidates are ordered by score, best first (ties by doc id, descending, as
        :meth:`Run.ranking`). A labelled query missing from ``queries`` or a doc id (candidate
        or positive) missing from ``corpus`` is an error, raised before anything is written.
        With a stored calibration (and ``calibrated``), labels are ``sigmoid(score / T + b)``.
        """
        positives = positives or {}
        by_query: dict[str, list[LabelRow]] = {}
        for row in self._require(teacher, prompt):
            by_query.setdefault(row.query_id, []).append(row)
        missing_q = [q for q in by_query if q not in queries]
        texts: dict[str, str] = {}
        missing_d: set[str] = set()
        wanted = {r.doc_id for rows in by_query.values() for r in rows} | {positives[q] for q in by_query if positives.get(q)}
        for did in sorted(wanted):
            doc = corpus.get(did)
            if doc is None:
                missing_d.add(did)
            elif include_text:
                texts[did] = doc.contents
        if missing_q or missing_d:
            parts = [f"{len(missing_q)} queries missing from the queries ({_few(missing_q)})"] if missing_q else []
            parts += [f"{len(missing_d)} doc ids missing from the corpus ({_few(sorted(missing_d))})"] if missing_d else []
            raise RerankerError(
                f"export of {teacher!r} / {prompt!r} from {self.path}: {'; '.join(parts)}. "
                "Pass the queries and corpus the labels were made from"
            )

        cal = self.calibration(teacher, prompt) if calibrated else None
        if cal is not None:
            log.info("exporting %s / %s with its calibration T=%.4g b=%.4g", teacher, prompt, cal["temperature"], cal["bias"])

        def relabel(r: LabelRow) -> float:
            if cal is None:
                return r.label
            z = r.score / cal["temperature"] + cal["bias"]
            return sigmoid(z)

        def groups() -> Iterator[dict[str, Any]]:
            for qid in sorted(by_query):
                ranked = sorted(by_query[qid], key=lambda r: (r.score, r.doc_id), reverse=True)
                cands = [{"doc_id": r.doc_id, **({"text": texts[r.doc_id]} if include_text else {}),
                          "score": r.score, "label": relabel(r)} for r in ranked]
                yield {"query_id": qid, "query": queries[qid].text, "positive": positives.get(qid), "candidates": cands}

        absent = sum(1 for q, d in positives.items() if q in by_query and d and all(r.doc_id != d for r in by_query[q]))
        if absent:
            log.info("%d of the exported positives are not among their query's labelled candidates", absent)
        n = write_jsonl(path, groups())
        log.info("wrote %d label groups to %s", n, path)
        return n


def _few(items: list[str], k: int = 5) -> str:
    return ", ".join(repr(x) for x in items[:k]) + (", ..." if len(items) > k else "")
