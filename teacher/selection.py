"""Label-budget selection: which (query, passage) pairs go to the teacher when it costs money per pair.

Every strategy orders the candidate pairs by priority; :func:`select_pairs` then takes pairs in
that order until the budget is spent, keeping at least ``min_per_query`` (2) pairs of every
query it opens (a listwise loss needs two candidates to compare): opening a query takes its
next-best pair by the same priority along. Strategies:

- ``random``: pairs in a seeded random order (the baseline);
- ``uncertainty``: the current student's pairs closest to its decision boundary,
  ``|sigmoid(score) - 0.5|`` smallest;
- ``disagreement``: pairs whose student rank differs most from their first-stage rank;
- ``diversity``: queries clustered by their embeddings (k-means), visited round-robin across
  clusters; each visit takes the query's top first-stage pairs (``min_per_query`` of them),
  then the next depth for every query, and so on;
- ``top-rank``: the same depth-first walk with the queries in a seeded random order, no
  clusters: the ablation that tells the clusters' share of ``diversity`` from the share of
  taking every query's top first-stage pairs first.

Pairs in ``exclude`` (already labelled) are never chosen again, so rounds of
label -> distil -> select spend each round's budget on new pairs only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from reranker.errors import RerankerError
from reranker.records import Run
from reranker.scoring import sigmoid

log = logging.getLogger(__name__)

STRATEGIES = ("random", "uncertainty", "disagreement", "diversity", "top-rank")
Key = tuple[str, str]


def _pairs(candidates: Run, exclude: Collection[Key]) -> list[tuple[Key, int, float]]:
    """``((qid, did), first-stage rank (0 best), first-stage score)`` of every pair not excluded."""
    out = []
    for qid in sorted(candidates):
        for rank, hit in enumerate(candidates.ranking(qid)):
            if (qid, hit.doc_id) not in exclude:
                out.append(((qid, hit.doc_id), rank, hit.score))
    return out


def _need_student(student: Run | None, pairs, strategy: str) -> Run:
    if student is None:
        raise RerankerError(f"selection strategy {strategy!r} needs the current student's scores (give --student MODEL_DIR)")
    missing = [k for k, _, _ in pairs if k[1] not in student.get(k[0], {})]
    if missing:
        raise RerankerError(f"the student's scores lack {len(missing)} candidate pairs (e.g. {missing[0]})")
    return student


def priority_order(
    candidates: Run, strategy: str, student: Run | None = None, embeddings: Mapping[str, np.ndarray] | None = None,
    exclude: Collection[Key] = (), seed: int = 0, n_clusters: int | None = None, min_per_query: int = 2,
) -> list[Key]:
    """The candidate pairs (less ``exclude``) in the order ``strategy`` would send them to the teacher."""
    pairs = _pairs(candidates, set(exclude))
    rng = random.Random(seed)
    if strategy == "random":
        keys = [k for k, _, _ in pairs]
        rng.shuffle(keys)
        return keys
    if strategy == "uncertainty":
        st = _need_student(student, pairs, strategy)
        margin = {k: abs(sigmoid(st[k[0]][k[1]]) - 0.5) for k, _, _ in pairs}
        return sorted(margin, key=lambda k: (margin[k], rng.random()))
    if strategy == "disagreement":
        st = _need_student(student, pairs, strategy)
        student_rank = {}
        for qid in {k[0] for k, _, _ in pairs}:
            for r, hit in enumerate(st.ranking(qid)):
                student_rank[qid, hit.doc_id] = r
        gap = {k: abs(student_rank[k] - rank) for k, rank, _ in pairs}
        return sorted(gap, key=lambda k: (-gap[k], rng.random()))
    if strategy == "top-rank":
        visit = sorted({k[0] for k, _, _ in pairs})
        rng.shuffle(visit)
        return _depth_first(pairs, visit, min_per_query)
    if strategy == "diversity":
        if embeddings is None:
            raise RerankerError("selection strategy 'diversity' needs query embeddings")
        qids = sorted({k[0] for k, _, _ in pairs})
        labels = kmeans(np.stack([embeddings[q] for q in qids]), n_clusters or max(1, min(len(qids), round(len(qids) ** 0.5))), seed)
        clusters: dict[int, list[str]] = {}
        for q, c in zip(qids, labels):
            clusters.setdefault(int(c), []).append(q)
        for members in clusters.values():
            rng.shuffle(members)
        visit, depth = [], 0  # round-robin: one query from each cluster in turn
        while any(depth < len(m) for m in clusters.values()):
            visit += [m[depth] for _, m in sorted(clusters.items()) if depth < len(m)]
            depth += 1
        return _depth_first(pairs, visit, min_per_query)
    raise RerankerError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _depth_first(pairs: list[tuple[Key, int, float]], visit: Sequence[str], min_per_query: int) -> list[Key]:
    """Every query's top ``min_per_query`` first-stage pairs in ``visit`` order, then the next depth, and so on."""
    position = {q: i for i, q in enumerate(visit)}
    step = max(1, min_per_query)
    return [k for k, rank, _ in sorted(pairs, key=lambda p: (p[1] // step, position[p[0][0]], p[1]))]


def take_budget(order: Sequence[Key], budget: int, min_per_query: int = 2, already: Mapping[str, int] | None = None) -> list[Key]:
    """Pairs from ``order`` up to ``budget``; a newly opened query comes with ``min_per_query`` pairs or not at all.

    ``already`` counts pairs each query has from earlier rounds (those queries are open).
    """
    if budget < 0:
        raise RerankerError(f"the label budget must be >= 0, got {budget}")
    count = dict(already or {})
    by_query: dict[str, list[Key]] = {}
    for k in order:
        by_query.setdefault(k[0], []).append(k)
    taken: set[Key] = set()
    out: list[Key] = []
    for k in order:
        if len(out) >= budget:
            break
        if k in taken:
            continue
        qid = k[0]
        if count.get(qid, 0) >= min_per_query:
            group = [k]
        else:
            need = min_per_query - count.get(qid, 0)
            group = [x for x in by_query[qid] if x not in taken][:need]
            if len(group) < need or len(out) + len(group) > budget:
                continue  # a query that cannot get its minimum is not opened
        for x in group:
            taken.add(x)
            out.append(x)
        count[qid] = count.get(qid, 0) + len(group)
    return out


def select_pairs(
    candidates: Run, budget: int, strategy: str, student: Run | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None, exclude: Collection[Key] = (), seed: int = 0,
    n_clusters: int | None = None, min_per_query: int = 2,
) -> Run:
    """The ``budget`` pairs ``strategy`` picks from ``candidates`` (less ``exclude``), as a run with first-stage scores."""
    exclude = set(exclude)
    order = priority_order(candidates, strategy, student, embeddings, exclude, seed, n_clusters, min_per_query)
    already: dict[str, int] = {}
    for qid, did in exclude:
        if qid in candidates and did in candidates[qid]:
            already[qid] = already.get(qid, 0) + 1
    chosen = take_budget(order, budget, min_per_query, already)
    run = Run(name=f"{candidates.name or 'candidates'}/{strategy}-{budget}")
    for qid, did in chosen:
        run.add(qid, did, candidates[qid][did])
    log.info("selected %d pairs of %d queries with %s (budget %d)", len(chosen), len(run), strategy, budget)
    return run


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster labels of the rows of ``x`` (k-means++ initialisation, Lloyd iterations; deterministic per seed)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(n, p=d / d.sum())] if d.sum() > 0 else x[rng.integers(n)])
    c = np.array(centres)
    labels = np.zeros(n, dtype=int)
    for _ in range(iters):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels


def embed_queries(texts: Mapping[str, str], encoder: str = "auto") -> dict[str, np.ndarray]:
    """Query embeddings: the packaged all-MiniLM-L6-v2 (``encoder="minilm"``), or TF-IDF (``"tfidf"``).

    ``"auto"`` uses MiniLM when sentence-transformers and the model are installed, else TF-IDF.
    """
    qids = sorted(texts)
    if encoder in ("auto", "minilm"):
        try:
            from reranker.retrieval.dense import DEFAULT_MODEL, load_bi_encoder

            model = load_bi_encoder(DEFAULT_MODEL)
            vecs = model.encode([texts[q] for q in qids], normalize_embeddings=True, show_progress_bar=False)
            return {q: np.asarray(v) for q, v in zip(qids, vecs)}
        except Exception as exc:
            if encoder == "minilm":
                raise RerankerError(f"could not load the MiniLM encoder for query embeddings: {exc}") from exc
            log.info("query embeddings: MiniLM unavailable (%s); using TF-IDF", exc)
    elif encoder != "tfidf":
        raise RerankerError(f"unknown query encoder {encoder!r}; use auto, minilm or tfidf")
    return _tfidf(texts)


def _tfidf(texts: Mapping[str, str], tokenize: Callable[[str], list[str]] | None = None) -> dict[str, np.ndarray]:
    import re

    tok = tokenize or (lambda s: re.findall(r"[a-z0-9]+", s.lower()))
    qids = sorted(texts)
    docs = [tok(texts[q]) for q in qids]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    m = np.zeros((len(qids), max(1, len(vocab))))
    for i, d in enumerate(docs):
        for w in d:
            m[i, vocab[w]] += 1
    idf = np.log((1 + len(qids)) / (1 + (m > 0).sum(0))) + 1
    m = m * idf
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return {q: m[i] for i, q in enumerate(qids)}
