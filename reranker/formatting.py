"""Turning ``(query, document)`` pairs into model inputs: one function for training, export and serving.

T5 students read a template (a data file in ``reranker/data/templates``, in the format of the
teacher's prompt files, :mod:`reranker.templates`) such as monoT5's ``Query: {query} Document: {document} Relevant:``.
:func:`encode_pairs` tokenises the template's words, the query and the document separately
and joins the ids: the query is cut to ``query_max_length`` tokens first, then the document
to what is left of ``max_length``, so the words after the document ("Relevant:") and the
end-of-sequence token are never cut away. For the T5 (SentencePiece) tokenizer, which splits
at whitespace before anything else, the joined ids equal those of the whole rendered text
whenever nothing had to be cut.

Cross-encoders use the tokenizer's own pair encoding with ``truncation="only_second"``; with the
hybrid head also ``query_terms`` and ``doc_terms``, the hashed stemmed words of each side
(:func:`reranker.lexical.term_ids`, 0-padded), which its lexical term matches.

The arrays come back as torch tensors (``return_tensors="pt"``, training and export) or NumPy
arrays (``"np"``, the ONNX Runtime scorer); torch is imported only for ``"pt"``, so the
serving path runs without it.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RerankerError
from .lexical import term_ids
from .student_config import StudentConfig
from .templates import PromptTemplate, parse_template

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(str(resources.files("reranker") / "data" / "templates"))


@dataclass(frozen=True)
class StudentTemplate:
    """A parsed template split around its two placeholders: ``prefix {query} middle {document} suffix``."""

    prompt: PromptTemplate
    prefix: str
    middle: str
    suffix: str

    @property
    def name(self) -> str:
        return self.prompt.name

    def render(self, query: str, document: str) -> str:
        return self.prompt.render(query=query, document=document)


def template_path(name_or_path: str | Path, folder: str | Path | None = None) -> Path:
    """The file of a template: ``folder/<name>`` (a copy saved with a student), a path, or a packaged name."""
    candidates = [Path(folder) / str(name_or_path)] if folder is not None else []
    candidates += [Path(name_or_path), TEMPLATE_DIR / f"{name_or_path}.txt"]
    for path in candidates:
        if path.is_file():
            return path
    have = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt")))
    raise RerankerError(f"no student template {str(name_or_path)!r} (a file, or one of: {have})")


def is_packaged(path: Path) -> bool:
    return path.resolve().parent == TEMPLATE_DIR.resolve()


def load_template(name_or_path: str | Path, folder: str | Path | None = None) -> StudentTemplate:
    """Load and check a student template: ``{query}`` then ``{document}``, each exactly once."""
    path = template_path(name_or_path, folder)
    return _parse(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _parse(path: str, mtime_ns: int) -> StudentTemplate:  # mtime: an edited file is read again
    prompt = parse_template(Path(path).read_text(encoding="utf-8"), path)
    parts = list(string.Formatter().parse(prompt.body))
    names = [f for _, f, _, _ in parts if f is not None]
    if names != ["query", "document"] or any(spec or conv for _, f, spec, conv in parts if f is not None):
        raise RerankerError(
            f"{path}: a student template has the placeholders {{query}} and then {{document}}, each once and "
            f"without format specs; found {['{' + n + '}' for n in names]}"
        )
    literals = [lit for lit, _, _, _ in parts] + [""] * (3 - len(parts))
    return StudentTemplate(prompt, *literals[:3])


def encode_pairs(tokenizer: Any, config: StudentConfig, queries: Sequence[str], documents: Sequence[str],
                 return_tensors: str = "pt") -> dict[str, Any]:
    """Model inputs for ``zip(queries, documents)``: ``input_ids`` and ``attention_mask`` (and ``token_type_ids``
    where a cross-encoder's tokenizer makes them), right-padded to the longest row, at most ``config.max_length``.

    int64 arrays: torch tensors with ``return_tensors="pt"``, NumPy arrays with ``"np"``.
    """
    if return_tensors not in ("pt", "np"):
        raise RerankerError(f"encode_pairs: return_tensors must be 'pt' or 'np', got {return_tensors!r}")
    queries, documents = list(queries), list(documents)
    if len(queries) != len(documents):
        raise RerankerError(f"encode_pairs: {len(queries)} queries but {len(documents)} documents")
    if not queries:
        raise RerankerError("encode_pairs: no pairs to encode")
    if not getattr(tokenizer, "is_fast", True):
        raise RerankerError(f"encode_pairs needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    if config.kind == "cross-encoder":
        arrays = _encode_cross(tokenizer, config, queries, documents)
    else:
        arrays = _encode_template(tokenizer, config, queries, documents)
    if return_tensors == "np":
        return arrays
    import torch

    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _special_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (T5: none, and ``</s>``)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise RerankerError(f"encode_pairs: cannot tell the special tokens of {type(tokenizer).__name__}")


def _encode_template(tokenizer: Any, config: StudentConfig, queries: list[str], documents: list[str]) -> dict[str, np.ndarray]:
    template = load_template(config.template)
    if tokenizer.pad_token_id is None:
        raise RerankerError("encode_pairs: the tokenizer has no pad token")
    head, tail = _special_ids(tokenizer)
    prefix, middle, suffix = tokenizer(
        [template.prefix.strip(), template.middle.strip(), template.suffix.strip()], add_special_tokens=False
    )["input_ids"]
    fixed = len(head) + len(prefix) + len(middle) + len(suffix) + len(tail)
    if fixed + config.query_max_length >= config.max_length:
        raise RerankerError(
            f"student config: max_length {config.max_length} leaves no room for a document after the template "
            f"{template.name!r} ({fixed} tokens) and a query of up to {config.query_max_length} tokens"
        )
    q_ids = tokenizer(queries, add_special_tokens=False, truncation=True, max_length=config.query_max_length)["input_ids"]
    d_ids = tokenizer(documents, add_special_tokens=False, truncation=True, max_length=config.max_length - fixed)["input_ids"]
    rows = []
    for q, d in zip(q_ids, d_ids):
        budget = config.max_length - fixed - len(q)
        rows.append(head + prefix + q + middle + d[:budget] + suffix + tail)
    width = max(map(len, rows))
    input_ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def truncate_texts(tokenizer: Any, texts: list[str], max_tokens: int) -> list[str]:
    """Each text cut (as text, at a token's end offset) to at most ``max_tokens`` tokens (without special tokens):
    tokenised again, the cut text gives the same first tokens. The one truncation of the project: the students'
    formatting and the server's ``max_tokens_per_doc``. A tokenizer without offsets (a slow one) cuts its tokens
    and joins them back; no tokenizer at all cuts words."""
    texts = list(texts)
    if tokenizer is None:
        return [t if len(w := t.split()) <= max_tokens else " ".join(w[:max_tokens]) for t in texts]
    if not getattr(tokenizer, "is_fast", True):
        out = []
        for text in texts:
            tokens = tokenizer.tokenize(text)
            out.append(text if len(tokens) <= max_tokens else tokenizer.convert_tokens_to_string(tokens[:max_tokens]))
        return out
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        out.append(text[: offsets[max_tokens - 1][1]] if len(ids) > max_tokens else text)
    return out


#: the special tokens of a hybrid pair, ``[CLS] q [SEP] [CLS] d [SEP]``
HYBRID_SPECIAL_TOKENS = 4


def document_tokens(config: StudentConfig) -> int:
    """Tokens of a document a hybrid student reads, whatever the query: ``max_length - query_max_length - 4``.

    A fixed budget (not what the query leaves over) makes a passage's encoding independent of the query it is
    paired with, so that it can be computed once and cached (:mod:`reranker.passage_cache`)."""
    budget = config.max_length - config.query_max_length - HYBRID_SPECIAL_TOKENS
    if budget < 1:
        raise RerankerError(f"student config: max_length {config.max_length} leaves no room for a document after a query of "
                            f"{config.query_max_length} tokens and the hybrid pair's {HYBRID_SPECIAL_TOKENS} special tokens")
    return budget


def _encode_cross(tokenizer: Any, config: StudentConfig, queries: list[str], documents: list[str]) -> dict[str, np.ndarray]:
    queries = truncate_texts(tokenizer, queries, config.query_max_length)
    # hybrid: the document segment opens with its own [CLS], "[CLS] q [SEP] [CLS] d [SEP]": encoded apart from the
    # query (student.heads), it then reads exactly as the bi-encoder read documents; it is cut to a budget of its own
    # (document_tokens), so that its states do not depend on the query (encode_segments gives the same tokens)
    if config.head == "hybrid" and tokenizer.cls_token is None:
        raise RerankerError("the hybrid head needs a tokenizer with a [CLS] token (BERT family)")
    if config.head == "hybrid":
        seconds = [f"{tokenizer.cls_token} {d}" for d in truncate_texts(tokenizer, documents, document_tokens(config))]
    else:
        seconds = documents
    enc = tokenizer(queries, seconds, truncation="only_second", max_length=config.max_length, padding=True, return_tensors="np")
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if config.head == "hybrid":
        # the lexical term matches stemmed words (reranker.lexical), as the first stage does: the query's first
        # query_max_length terms, the document's first max_length terms (the whole text, not only what fits in the pair)
        arrays["query_terms"] = _query_terms(config, queries)
        arrays["doc_terms"] = _doc_terms(config, documents)
    return arrays


def _query_terms(config: StudentConfig, queries: list[str]) -> np.ndarray:
    return term_ids(queries, config.query_max_length, config.lexical_buckets, config.lexical_language)


def _doc_terms(config: StudentConfig, documents: list[str]) -> np.ndarray:
    return term_ids(documents, config.max_length, config.lexical_buckets, config.lexical_language)


def encode_segments(tokenizer: Any, config: StudentConfig, texts: Sequence[str], side: str) -> dict[str, np.ndarray]:
    """A hybrid student's inputs for texts encoded alone, ``side`` ``"query"`` or ``"document"``: ``input_ids`` and
    ``attention_mask`` of ``[CLS] text [SEP]`` (right-padded), cut as :func:`encode_pairs` cuts that side of a pair,
    and ``terms``, the side's term ids. A pair's separated states equal its two sides' states encoded alone."""
    if config.head != "hybrid":
        raise RerankerError("encode_segments: only a hybrid cross-encoder student encodes query and document apart")
    texts = list(texts)
    if not texts:
        raise RerankerError("encode_segments: no texts to encode")
    if side == "query":
        cut = truncate_texts(tokenizer, texts, config.query_max_length)
        terms = _query_terms(config, cut)
    elif side == "document":
        cut = truncate_texts(tokenizer, texts, document_tokens(config))
        terms = _doc_terms(config, texts)
    else:
        raise RerankerError(f"encode_segments: side must be 'query' or 'document', got {side!r}")
    enc = tokenizer(cut, padding=True, return_tensors="np")
    return {"input_ids": np.asarray(enc["input_ids"], np.int64), "attention_mask": np.asarray(enc["attention_mask"], np.int64),
            "terms": terms}
