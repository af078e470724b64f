"""Label groups: one query with its teacher-labelled candidates, the student's training input.

One JSON line per query (written by :meth:`teacher.store.LabelStore.export_groups`)::

    {"query_id": "q1", "query": "...", "positive": "d1" | null,
     "candidates": [{"doc_id": "d1", "text": "...", "score": 3.2, "label": 0.96}, ...]}

with candidates best first; :func:`read_groups` reads it back, naming the line of any error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from .jsonl import iter_jsonl, open_text


@dataclass(frozen=True, slots=True)
class GroupCandidate:
    doc_id: str
    score: float
    label: float
    text: str | None = None  # None when the file was exported with include_text=False


@dataclass(frozen=True, slots=True)
class LabelGroup:
    """One query with its labelled candidates (best first), as the student reads them."""

    query_id: str
    query: str
    positive: str | None
    candidates: list[GroupCandidate]


def _number(value: Any, name: str, lineno: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(name, lineno, f"{what} must be a finite number, got {value!r}")
    return float(value)


def read_groups(path: str | Path) -> list[LabelGroup]:
    """Read a file written by :meth:`LabelStore.export_groups`; errors name the line."""
    name, groups, seen = str(path), [], set()
    with open_text(path) as f:
        for lineno, obj in iter_jsonl(f, name):
            qid, query, positive, cands = (obj.get(k) for k in ("query_id", "query", "positive", "candidates"))
            if not isinstance(qid, str) or not isinstance(query, str):
                raise DataFormatError(name, lineno, "expected string fields 'query_id' and 'query'")
            if qid in seen:
                raise DataFormatError(name, lineno, f"query id {qid!r} appears twice")
            if positive is not None and not isinstance(positive, str):
                raise DataFormatError(name, lineno, f"'positive' must be a doc id or null, got {positive!r}")
            if not isinstance(cands, list):
                raise DataFormatError(name, lineno, "expected a list field 'candidates'")
            out = []
            for i, c in enumerate(cands):
                where = f"candidate {i}"
                if not isinstance(c, dict) or not isinstance(c.get("doc_id"), str):
                    raise DataFormatError(name, lineno, f"{where}: expected an object with a string 'doc_id'")
                label = _number(c.get("label"), name, lineno, f"{where}: 'label'")
                if not 0.0 <= label <= 1.0:
                    raise DataFormatError(name, lineno, f"{where}: 'label' must be in [0, 1], got {label}")
                text = c.get("text")
                if text is not None and not isinstance(text, str):
                    raise DataFormatError(name, lineno, f"{where}: 'text' must be a string")
                out.append(GroupCandidate(c["doc_id"], _number(c.get("score"), name, lineno, f"{where}: 'score'"), label, text))
            seen.add(qid)
            groups.append(LabelGroup(qid, query, positive, out))
    return groups
