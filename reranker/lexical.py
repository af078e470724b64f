"""Lexical terms as a first stage sees them: lower-cased words, stop words dropped, stemmed.

The hybrid student head (:mod:`student.heads`) scores term matches as BM25 does. Matching the
model's word pieces instead misses what makes BM25 strong: "proteins" and "protein" are
different pieces, and a rare word split into common pieces matches documents that only share
the pieces. This module analyses text with the tokenizer of the project's bm25s retriever
(bm25s's ``tokenize``: its token pattern and stop-word lists, Snowball stemmers from
PyStemmer) and maps every term to a stable integer id by hashing (CRC-32, the same in every
process and on every machine), so that the ids can be a model input: training, the ONNX graph
and the server share one vocabulary-free term space. Id 0 is padding; a term's id is
``1 + crc32(term) % (buckets - 1)``. With 2^18 buckets the chance that a query term shares its
id with one of the other terms of a 200-term document is about 1 in 1,300.

No torch: the ONNX serving path uses this module.
"""

from __future__ import annotations

import functools
import threading
import zlib
from collections.abc import Sequence

import numpy as np

from .errors import RerankerError

DEFAULT_BUCKETS = 1 << 18
DEFAULT_LANGUAGE = "english"

_local = threading.local()  # PyStemmer's stemmers keep a cache and are not safe to share between threads


def languages() -> list[str]:
    """The Snowball languages PyStemmer can stem."""
    import Stemmer

    return sorted(Stemmer.algorithms())


def check_language(language: str) -> str:
    if language not in languages():
        raise RerankerError(f"lexical language {language!r} has no stemmer; use one of: {', '.join(languages())}")
    return language


@functools.cache
def _stopwords(language: str) -> str | None:
    """``language`` where bm25s has a stop-word list for it, else None (every word kept)."""
    from bm25s.tokenization import tokenize

    try:
        tokenize(["probe"], stopwords=language, return_ids=False, show_progress=False)
    except ValueError:
        return None
    return language


def _stemmer(language: str):
    stemmers = getattr(_local, "stemmers", None)
    if stemmers is None:
        stemmers = _local.stemmers = {}
    if language not in stemmers:
        import Stemmer

        stemmers[language] = Stemmer.Stemmer(check_language(language))
    return stemmers[language]


def analyze_many(texts: Sequence[str], language: str = DEFAULT_LANGUAGE) -> list[list[str]]:
    """The terms of each text in order, by bm25s's own tokenizer (the retriever's): lower-cased words of 2+
    characters, stop words dropped, stemmed."""
    from bm25s.tokenization import tokenize

    if not texts:
        return []
    stemmer = _stemmer(language)
    return tokenize(list(texts), stopwords=_stopwords(language), stemmer=stemmer, return_ids=False, show_progress=False)


def analyze(text: str, language: str = DEFAULT_LANGUAGE) -> list[str]:
    """The terms of one text (:func:`analyze_many`)."""
    return analyze_many([text], language)[0]


def term_id(term: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The stable id of a term in ``[1, buckets)`` (0 is padding)."""
    return 1 + zlib.crc32(term.encode("utf-8")) % (buckets - 1)


def term_ids(texts: Sequence[str], max_terms: int, buckets: int = DEFAULT_BUCKETS, language: str = DEFAULT_LANGUAGE) -> np.ndarray:
    """``[len(texts), width]`` int64 term ids, each text's first ``max_terms`` terms, right-padded with 0.

    ``width`` is the longest row (at least 1, so that a batch of texts without terms still has a shape).
    """
    if buckets < 2:
        raise RerankerError(f"lexical buckets must be at least 2, got {buckets}")
    if max_terms < 1:
        raise RerankerError(f"max_terms must be at least 1, got {max_terms}")
    return pad_ids([[term_id(t, buckets) for t in terms[:max_terms]] for terms in analyze_many(texts, language)])


def pad_ids(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Rows of term ids right-padded with 0 into one int64 array ``[len(rows), longest]`` (at least one column)."""
    out = np.zeros((len(rows), max([1, *map(len, rows)])), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
