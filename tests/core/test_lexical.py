"""The lexical term space of the hybrid head: bm25s's analysis, stable hashed ids."""

import zlib

import numpy as np
import pytest

from reranker.errors import RerankerError
from reranker.lexical import analyze, term_id, term_ids
from reranker.retrieval.bm25s_backend import BM25sRetriever


def test_terms_are_stemmed_words_without_stop_words():
    assert analyze("The Proteins were binding to a receptor, and it's 5-HT") == ["protein", "were", "bind", "receptor", "ht"]
    assert analyze("of the and") == [] and analyze("") == []


def test_analysis_matches_the_bm25s_retriever():
    """The student's lexical term sees the words the project's BM25 first stage indexes."""
    texts = ["Proteins bind receptors in mitochondrial membranes.", "The effects of Vitamin-D on bone density (2019)"]
    tokenized = BM25sRetriever()._tokenize(texts)
    vocab = {i: w for w, i in tokenized.vocab.items()}
    assert [[vocab[i] for i in row] for row in tokenized.ids] == [analyze(t) for t in texts]


def test_ids_are_stable_hashes_with_zero_for_padding():
    assert term_id("protein", 1 << 18) == 1 + zlib.crc32(b"protein") % ((1 << 18) - 1)
    ids = term_ids(["proteins bind", "the", "bind bind bind bind"], max_terms=3, buckets=64)
    assert ids.dtype == np.int64 and ids.shape == (3, 3)
    assert ids[0, 0] == term_id("protein", 64) and ids[0, 2] == 0  # padded
    assert (ids[1] == 0).all()  # only stop words: no terms
    assert (ids[2] == term_id("bind", 64)).all()  # cut to max_terms
    assert ((ids >= 0) & (ids < 64)).all()
    assert term_ids(["the", "a"], max_terms=4).shape == (2, 1)  # a batch without terms still has a shape


def test_bad_settings_are_refused():
    with pytest.raises(RerankerError, match="no stemmer.*english"):
        analyze("text", language="klingon")
    with pytest.raises(RerankerError, match="buckets must be at least 2"):
        term_ids(["a"], max_terms=4, buckets=1)
    from reranker.student_config import StudentConfig

    with pytest.raises(RerankerError, match="no stemmer"):
        StudentConfig(kind="cross-encoder", head="hybrid", lexical_language="klingon")
