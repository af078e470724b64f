"""Distil LLM relevance judgements into a small re-ranker, export it to ONNX and serve it.

The public surface is small: records (:mod:`reranker.records`), data sets
(:func:`load_dataset`), retrieval (:mod:`reranker.retrieval`) and evaluation
(:mod:`reranker.evaluation`). Importing the package loads nothing heavy.
"""

from .errors import RerankerError
from .io.dataset import Dataset, load_dataset
from .records import Corpus, Document, Qrels, Query, Run, ScoredDoc

__version__ = "0.1.0"

__all__ = ["Corpus", "Dataset", "Document", "Qrels", "Query", "RerankerError", "Run", "ScoredDoc", "__version__", "load_dataset"]
