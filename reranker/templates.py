"""Templates are data: a file of ``key: value`` header lines (values are JSON when they parse as
JSON), then a line ``---``, then the body with ``{name}`` placeholders (``str.format``; write
``{{`` and ``}}`` for literal braces). Keys every template has:

- ``name`` and ``version``: together they key what a template produced (the teacher's labels);
- ``kind``: ``relevance`` (yes/no), ``graded`` (0-3), ``query-generation`` (the teacher's
  prompts in ``teacher/prompts``) or ``seq2seq-relevance`` (how a T5 student formats its input,
  in ``reranker/data/templates``).

The body's final newline (the file's last) is dropped: a prompt ends where the model should
continue, e.g. right after ``Relevant:``. The teacher's prompts and the students' input
templates share this one format and parser.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from .config import json_or_text
from .errors import DataFormatError, RerankerError


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    kind: str
    body: str
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> str:
        """``name@version``, stored with every label made with this template."""
        return f"{self.name}@{self.version}"

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.body) if f}

    def render(self, **values: Any) -> str:
        missing = self.fields - set(values)
        if missing:
            raise RerankerError(f"prompt {self.key} needs {', '.join(sorted(missing))}")
        return self.body.format(**values)


def parse_template(text: str, source: str) -> PromptTemplate:
    head, sep, body = text.partition("\n---\n")
    body = body.removesuffix("\n")  # the file's final newline is not part of the prompt
    if not sep:
        raise DataFormatError(source, None, "a prompt template needs 'key: value' lines, then a line '---', then the body")
    meta: dict[str, Any] = {}
    for lineno, line in enumerate(head.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise DataFormatError(source, lineno, f"expected 'key: value', got {line!r}")
        value = value.strip()
        meta[key.strip()] = json_or_text(value)
    for key in ("name", "version", "kind"):
        if key not in meta:
            raise DataFormatError(source, None, f"the template's header lacks '{key}'")
    tpl = PromptTemplate(str(meta.pop("name")), str(meta.pop("version")), str(meta.pop("kind")), body, meta, source)
    try:
        tpl.fields  # noqa: B018 - validates the placeholders now, not at the first render
    except ValueError as exc:
        raise DataFormatError(source, None, f"bad placeholder in the body ({exc}); write {{{{ and }}}} for literal braces") from None
    return tpl
