"""The student's configuration: ``student_config.json`` beside the weights.

Everything needed to turn ``(query, document)`` pairs into scores the same way in training,
ONNX export and serving lives here (the template, the length limits, the answer tokens);
the weights and tokenizer sit beside it in the HF layout. Loading is strict: an unknown
key or a value of the wrong type is a :class:`RerankerError` that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from .errors import RerankerError
from .lexical import DEFAULT_BUCKETS, DEFAULT_LANGUAGE, check_language

log = logging.getLogger(__name__)

CONFIG_NAME = "student_config.json"
KINDS = ("t5", "cross-encoder")
#: Score heads of cross-encoder students (:mod:`student.heads`): the classification logit alone, or
#: that logit plus a semantic (mean-pooled cosine) and a lexical (learned-IDF term match) term.
HEADS = ("classifier", "hybrid")

_DEFAULT_SCORE = {
    "t5": "logit(true_token) - logit(false_token) at the first decoder step (fp32)",
    "cross-encoder": "the single logit of the sequence-classification head (fp32)",
}

_HYBRID_SCORE = ("the classification logit + sem_weight * cos(mean query states, mean document states) "
                 "+ lex_weight * BM25-shaped match of stemmed words with learned IDF, over its maximum (fp32)")


@dataclass
class StudentConfig:
    """How a student formats its input and what its score means.

    ``true_token_id`` / ``false_token_id`` are filled in by :meth:`resolve_tokens` (T5 only);
    ``template`` names a file in ``reranker/data/templates`` (or a path); ``extra`` is free-form
    (training metadata, the teacher it was distilled from, ...).
    """

    kind: str
    base_model: str = ""
    template: str = "monot5"
    max_length: int = 512
    query_max_length: int = 64
    true_token: str = "▁true"
    false_token: str = "▁false"
    true_token_id: int | None = None
    false_token_id: int | None = None
    score: str = ""
    head: str = "classifier"
    #: the hybrid head's term space (:mod:`reranker.lexical`): hashed stemmed words, and the stemmer's language
    lexical_buckets: int = DEFAULT_BUCKETS
    lexical_language: str = DEFAULT_LANGUAGE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self, "StudentConfig")
        if self.kind not in KINDS:
            raise RerankerError(f"student config: 'kind' must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for key in ("max_length", "query_max_length"):
            if getattr(self, key) < 1:
                raise RerankerError(f"student config: {key!r} must be at least 1, got {getattr(self, key)}")
        if self.query_max_length >= self.max_length:
            raise RerankerError(
                f"student config: 'query_max_length' ({self.query_max_length}) must be smaller than "
                f"'max_length' ({self.max_length}), or no room is left for the document"
            )
        if self.head not in HEADS:
            raise RerankerError(f"student config: 'head' must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head != "classifier" and self.kind != "cross-encoder":
            raise RerankerError(f"student config: head {self.head!r} is for cross-encoder students; a {self.kind} student has its own")
        if self.lexical_buckets < 2:
            raise RerankerError(f"student config: 'lexical_buckets' must be at least 2, got {self.lexical_buckets}")
        if self.head == "hybrid":
            check_language(self.lexical_language)
        if not self.score:
            self.score = _DEFAULT_SCORE[self.kind] if self.head == "classifier" else _HYBRID_SCORE

    # --- answer tokens (T5) -----------------------------------------------------------

    def resolve_tokens(self, tokenizer: Any) -> Self:
        """A copy with ``true_token_id`` / ``false_token_id`` looked up in ``tokenizer``'s vocabulary.

        A token missing from the vocabulary (it would map to ``<unk>``) is a clear error: the
        model could not express its answer. Ids already set must agree with the tokenizer.
        """
        vocab = tokenizer.get_vocab()
        ids = {}
        for key in ("true_token", "false_token"):
            token = getattr(self, key)
            if token not in vocab:
                raise RerankerError(
                    f"student config: the tokenizer has no token {token!r} ({key}); a T5 student needs its answer "
                    f"tokens in the vocabulary (the standard T5 tokenizer has '▁true' and '▁false')"
                )
            ids[key + "_id"] = vocab[token]
            stored = getattr(self, key + "_id")
            if stored is not None and stored != vocab[token]:
                raise RerankerError(
                    f"student config: {key}_id is {stored} but the tokenizer maps {token!r} to {vocab[token]}; "
                    "the tokenizer does not belong to these weights"
                )
        if ids["true_token_id"] == ids["false_token_id"]:
            raise RerankerError(f"student config: true_token and false_token are both id {ids['true_token_id']}")
        return dataclasses.replace(self, **ids)

    @property
    def answer_ids(self) -> tuple[int, int]:
        """``(true_token_id, false_token_id)``; an error when not yet resolved."""
        if self.true_token_id is None or self.false_token_id is None:
            raise RerankerError("student config: the answer token ids are not resolved (call resolve_tokens(tokenizer))")
        return self.true_token_id, self.false_token_id

    # --- files ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "student config") -> Self:
        if not isinstance(data, dict):
            raise RerankerError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RerankerError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}")
        if "kind" not in data:
            raise RerankerError(f"{source}: the key 'kind' is missing (one of {', '.join(KINDS)})")
        try:
            return cls(**data)
        except RerankerError as exc:
            raise RerankerError(f"{source}: {str(exc).removeprefix('student config: ')}") from None

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """Read ``folder/student_config.json`` (``folder`` may also be the file itself)."""
        path = Path(folder)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise RerankerError(f"{path}: missing; a student folder holds {CONFIG_NAME} beside the weights and tokenizer")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RerankerError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "int | None": (int, type(None)), "dict[str, Any]": (dict,)}


def _check_types(obj: Any, source: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = _TYPES[f.type]
        if isinstance(value, bool) or not isinstance(value, allowed):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise RerankerError(f"student config: {f.name!r} must be {want}, got {value!r} ({type(value).__name__})")
