"""The teacher's prompts: versioned template files in ``teacher/prompts/`` (or any path).

The file format and its parser are the core's (:mod:`reranker.templates`). Teacher prompts
are of ``kind`` ``relevance`` (yes/no), ``graded`` (0-3) or ``query-generation``; relevance
templates also list their answer strings (``yes``/``no``, or ``grades``): the tokens whose
next-token probabilities make the soft label. ``name@version`` keys the labels a prompt made.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from reranker.errors import RerankerError
from reranker.templates import PromptTemplate, parse_template

__all__ = ["PROMPT_DIR", "PromptTemplate", "load_prompt", "parse_template"]

PROMPT_DIR = Path(str(resources.files("teacher") / "prompts"))


def load_prompt(name_or_path: str | Path) -> PromptTemplate:
    """A template by file path, or by name from the packaged templates (``relevance-fewshot``)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise RerankerError(f"no prompt template {str(name_or_path)!r} (a file, or one of: {have})")
    return parse_template(path.read_text(encoding="utf-8"), str(path))
