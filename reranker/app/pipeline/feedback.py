"""Production feedback: judgements or clicks on (query, document) pairs, kept in a JSONL file.

``reranker feedback add`` appends records; the next pipeline run that names the file in its
``feedback`` key labels the judged pairs with the user's labels instead of the teacher's,
adds their queries to the training queries, and gives LLM query generators the positive
ones as few-shot seeds. Labels are in [0, 1] (a graded label g of 0..3 is stored as g / 3;
a click as 1, a skip as 0). Records are validated on write and on read, and errors name the
file and line.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from reranker.errors import DataFormatError, RerankerError
from reranker.io.jsonl import iter_jsonl, open_text

KINDS = ("judgement", "click", "skip")


@dataclass(frozen=True)
class Feedback:
    query: str
    doc_id: str
    label: float
    kind: str = "judgement"
    time: float = 0.0

    @property
    def query_id(self) -> str:
        """A stable id for the query text (feedback has no query ids of its own)."""
        return "fb-" + hashlib.sha256(" ".join(self.query.split()).lower().encode()).hexdigest()[:12]


def make_feedback(query: str, doc_id: str, label: float | None = None, kind: str = "judgement", grade_max: int | None = None) -> Feedback:
    """A checked record: clicks default to label 1, skips to 0; ``grade_max`` turns a graded label into [0, 1]."""
    if kind not in KINDS:
        raise RerankerError(f"feedback kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not query.strip() or not doc_id.strip():
        raise RerankerError("feedback needs a non-empty query and doc id")
    if label is None:
        if kind == "judgement":
            raise RerankerError("a judgement needs a label")
        label = 1.0 if kind == "click" else 0.0
    if grade_max is not None:
        if not 0 <= label <= grade_max:
            raise RerankerError(f"graded label {label} is outside 0..{grade_max}")
        label = label / grade_max
    if not 0.0 <= label <= 1.0:
        raise RerankerError(f"feedback label {label} is outside [0, 1] (pass --grade-max for graded labels)")
    return Feedback(query.strip(), doc_id.strip(), float(label), kind, time.time())


def add_feedback(path: str | Path, records: Iterable[Feedback]) -> int:
    """Append ``records`` to the feedback file; returns how many. The file is checked first, so a broken one is not extended."""
    path = Path(path)
    if path.is_file():
        read_feedback(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(asdict(r), ensure_ascii=False) for r in records]
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
    return len(lines)


def read_feedback(path: str | Path) -> list[Feedback]:
    """The records in ``path``; a later record of the same (query, doc) pair replaces an earlier one."""
    name = str(path)
    out: dict[tuple[str, str], Feedback] = {}
    with open_text(path) as f:
        for lineno, obj in iter_jsonl(f, name):
            try:
                query, doc_id, label = obj["query"], obj["doc_id"], obj["label"]
            except KeyError as exc:
                raise DataFormatError(name, lineno, f"missing field {exc.args[0]!r} (expected query, doc_id, label)") from None
            if not isinstance(query, str) or not isinstance(doc_id, str) or isinstance(label, bool) or not isinstance(label, int | float):
                raise DataFormatError(name, lineno, "expected string query and doc_id and a numeric label")
            if not 0.0 <= label <= 1.0:
                raise DataFormatError(name, lineno, f"label {label} is outside [0, 1]")
            kind = obj.get("kind", "judgement")
            if kind not in KINDS:
                raise DataFormatError(name, lineno, f"kind {kind!r}: expected one of {', '.join(KINDS)}")
            fb = Feedback(query, doc_id, float(label), kind, float(obj.get("time", 0.0)))
            out[(fb.query_id, doc_id)] = fb
    return list(out.values())
