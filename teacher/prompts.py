"""Prompt templates are data: versioned files in ``teacher/prompts/`` (or any path).

A template file starts with ``key: value`` lines (values are JSON when they parse as JSON),
then a line ``---``, then the body. The body uses ``{name}`` placeholders (``str.format``;
write ``{{`` and ``}}`` for literal braces). Keys every template has:

- ``name`` and ``version``: together they key the labels a template produced;
- ``kind``: ``relevance`` (yes/no), ``graded`` (0–3) or ``query-generation``.

The body's final newline (the file's last) is dropped: a prompt ends where the model
should continue, e.g. right after ``Relevant:``.

Relevance templates also list their answer strings (``yes``/``no``, or ``grades``): the
tokens whose next-token probabilities make the soft label.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from reranker.errors import DataFormatError, RerankerError

PROMPT_DIR = Path(str(resources.files("teacher") / "prompts"))


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
        try:
            meta[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            meta[key.strip()] = value
    for key in ("name", "version", "kind"):
        if key not in meta:
            raise DataFormatError(source, None, f"the template's header lacks '{key}'")
    tpl = PromptTemplate(str(meta.pop("name")), str(meta.pop("version")), str(meta.pop("kind")), body, meta, source)
    try:
        tpl.fields  # noqa: B018 - validates the placeholders now, not at the first render
    except ValueError as exc:
        raise DataFormatError(source, None, f"bad placeholder in the body ({exc}); write {{{{ and }}}} for literal braces") from None
    return tpl


def load_prompt(name_or_path: str | Path) -> PromptTemplate:
    """A template by file path, or by name from the packaged templates (``relevance-fewshot``)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise RerankerError(f"no prompt template {str(name_or_path)!r} (a file, or one of: {have})")
    return parse_template(path.read_text(encoding="utf-8"), str(path))
