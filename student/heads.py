"""Score heads of the cross-encoder student that start from what the backbone already knows.

A cross-encoder built on a bi-encoder backbone (all-MiniLM-L6-v2) gets a new, random
classification head: before training it ranks no better than chance, and a few thousand
distillation steps on a CPU are not enough to teach it relevance from scratch. The
``hybrid`` head adds two signals that work from the first step and lets training correct
them:

``score = classifier(CLS) + w_sem * cos(mean(query states), mean(document states)) + w_lex * lexical``

- **semantic**: the cosine of the mean-pooled query and document token states, read with the
  two encoded apart (:meth:`CrossEncoderStudent.separate_states`: a second pass with a
  block-diagonal mask), the pooling the bi-encoder was trained with (Reimers & Gurevych 2019,
  "Sentence-BERT"), so the untrained student already ranks exactly like its bi-encoder here;
- **lexical**: a BM25-shaped exact-match score (Robertson & Zaragoza 2009) over the stemmed
  words of query and document (:mod:`reranker.lexical`: bm25s's analysis, hashed to ids that
  come in as the inputs ``query_terms`` and ``doc_terms``) with a learned weight per term id,
  initialised to the IDF of the training passages (learned term weights as in DeepCT, Dai &
  Callan 2020; exact-match channels as in the Duet model, Mitra et al. 2017): the lexical
  matching a first stage does, in the student itself. It is divided by the most the query can
  score (every term matched at saturation, ``sum idf * (k1 + 1)``), so it is the share of the
  query's term weight that the document matches, in [0, 1]. Raw BM25 grows with the query's
  length while the cosine does not; a weight fitted on one query form (long synthetic
  sentences) would then be wrong for another (short typed queries); on SciFact's synthetic
  groups the normalised term lowered the fitted listwise KL from 0.176 to 0.140 (``head_init.kl`` in the git
  history of ``benchmarks/results/student_curve.json``, before and after that change). Words, not
  the model's word pieces: pieces miss "protein"/"proteins" and match rare words on their
  common pieces; mixed with the same cosine at a weight fitted to the teacher (SciFact test,
  bm25s top 100, nothing trained), stemmed words ranked at 0.7350 nDCG@10 and word pieces at
  0.7142 (``benchmarks/results/lexical_terms.md``).

The classifier starts at zero; the two weights are fitted to the teacher's scores on training
groups before the first step (least squares, then the listwise KL; :func:`fit_hybrid_head`), so
the untrained student approximates its teacher. Everything is tensor arithmetic on the model's inputs
(Equal, ReduceSum, Gather), so the head exports to ONNX in the same graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reranker.errors import RerankerError
from reranker.lexical import term_ids

from .losses import listwise_kl

log = logging.getLogger(__name__)

HEAD_FILE = "hybrid_head.safetensors"
BM25_K1, BM25_B = 1.2, 0.75


class HybridHead(nn.Module):
    """The semantic and lexical terms of the ``hybrid`` head (the classifier logit is the backbone's).

    ``buckets``: the size of the term id space (:data:`reranker.lexical.DEFAULT_BUCKETS`), one
    learned weight per id.
    """

    def __init__(self, buckets: int):
        super().__init__()
        self.idf = nn.Parameter(torch.ones(buckets))
        self.sem_weight = nn.Parameter(torch.tensor(10.0))
        self.lex_weight = nn.Parameter(torch.tensor(5.0))
        self.register_buffer("avg_doc_len", torch.tensor(100.0))

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                 query_terms: torch.Tensor, doc_terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cosine, lexical)``, each ``[batch]`` fp32: the cosine from the last hidden states of the
        separated pass, the lexical share from the term ids (0 = padding), in [0, 1]."""
        return self.combine(*pool_segments(hidden, attention_mask, token_type_ids), query_terms, doc_terms)

    def combine(self, query_vector: torch.Tensor, doc_vector: torch.Tensor, query_terms: torch.Tensor,
                doc_terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cosine, lexical)`` from the two sides' pooled vectors ``[batch, hidden]`` and their term ids: the part
        of the score that needs both sides (the separated export runs it as its own graph, :class:`SeparatedScore`)."""
        cosine = torch.nn.functional.cosine_similarity(query_vector.float(), doc_vector.float(), dim=-1, eps=1e-6)
        q_valid, d_valid = query_terms > 0, doc_terms > 0
        match = (query_terms.unsqueeze(2) == doc_terms.unsqueeze(1)) & d_valid.unsqueeze(1)
        tf = match.float().sum(-1)  # [batch, query terms]: how often each query term occurs in the document
        doc_len = d_valid.float().sum(-1, keepdim=True)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * doc_len / self.avg_doc_len)
        saturated = tf * (BM25_K1 + 1) / (tf + norm)
        weight = self.idf[query_terms] * q_valid.float()
        lexical = (weight * saturated).sum(-1) / (weight.sum(-1) * (BM25_K1 + 1)).clamp(min=1e-6)
        return cosine, lexical

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                query_terms: torch.Tensor, doc_terms: torch.Tensor) -> torch.Tensor:
        return self.score(*pool_segments(hidden, attention_mask, token_type_ids), query_terms, doc_terms)

    def score(self, query_vector: torch.Tensor, doc_vector: torch.Tensor, query_terms: torch.Tensor,
              doc_terms: torch.Tensor) -> torch.Tensor:
        """``w_sem * cosine + w_lex * lexical`` from the pooled vectors and term ids (:meth:`combine`)."""
        cosine, lexical = self.combine(query_vector, doc_vector, query_terms, doc_terms)
        return self.sem_weight * cosine + self.lex_weight * lexical

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / HEAD_FILE
        save_file({k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
                   for k, v in self.state_dict().items()}, str(path))
        return path

    def load(self, folder: str | Path) -> bool:
        """Load ``folder/hybrid_head.safetensors`` when it is there; ``False`` when it is not (a new head)."""
        from safetensors.torch import load_file

        path = Path(folder) / HEAD_FILE
        if not path.is_file():
            return False
        state = load_file(str(path))
        have = state["idf"].numel() if "idf" in state else 0
        if have != self.idf.numel():
            raise RerankerError(
                f"{path}: {have} term weights, but the "
                f"student config asks for {self.idf.shape[0]} lexical buckets; a head saved before the lexical term "
                "matched stemmed words (it had one weight per word piece) cannot be read: distil the student again")
        self.load_state_dict(state)
        return True


def pool_segments(hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of each segment's states (token type 0: the query, 1: the document), fp32 ``[batch, hidden]`` each."""
    valid = attention_mask.bool()
    return mean_pool(hidden, valid & (token_type_ids == 0)), mean_pool(hidden, valid & (token_type_ids == 1))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the states where ``attention_mask`` is set, fp32 ``[batch, hidden]``: of one segment encoded alone
    (``[CLS] text [SEP]``), or of one segment of a pair (:func:`pool_segments`)."""
    mask = attention_mask.unsqueeze(-1).float()
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)


class SeparatedScore(nn.Module):
    """The hybrid score from pooled vectors and term ids: ``forward(query_vector, doc_vector, query_terms, doc_terms)``.

    The second graph of a separated export (:mod:`student.export`): the encoder graph turns each text into its vector
    once (a passage's can be cached), this one scores any pair of them. The same arithmetic as
    :meth:`HybridHead.forward`: :meth:`HybridHead.score`."""

    def __init__(self, head: HybridHead):
        super().__init__()
        self.head = head

    def forward(self, query_vector: torch.Tensor, doc_vector: torch.Tensor, query_terms: torch.Tensor,
                doc_terms: torch.Tensor) -> torch.Tensor:
        return self.head.score(query_vector, doc_vector, query_terms, doc_terms)


def document_frequencies(config: Any, texts: Sequence[str]) -> tuple[torch.Tensor, float]:
    """Term-id document frequencies ``[buckets]`` of ``texts`` (each its first ``max_length`` terms, as
    :func:`reranker.formatting.encode_pairs` reads documents) and their mean length in terms."""
    df = torch.zeros(config.lexical_buckets)
    ids = term_ids(texts, config.max_length, config.lexical_buckets, config.lexical_language)
    lengths = (ids > 0).sum(1)
    for row, n in zip(ids, lengths):
        if n:
            df[torch.from_numpy(np.unique(row[:n]))] += 1
    return df, float(lengths.mean()) if len(lengths) else 100.0


def fit_hybrid_head(student: Any, groups: Sequence[Any], max_groups: int = 96, batch_size: int = 32,
                    temperature: float = 1.0) -> dict[str, float]:
    """Initialise a student's hybrid head from the training groups before the first step.

    Term weights: BM25's IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))``, over the groups' distinct
    passages; the classifier's output layer at zero; ``sem_weight`` and ``lex_weight`` by least
    squares of the teacher's scores on the two features, both centred per query (only the order
    within a query matters), then refined to minimise the listwise KL to the teacher at
    ``temperature``, on up to ``max_groups`` groups. Returns the fitted figures.
    """
    head: HybridHead = student.hybrid
    texts = list({c.doc_id: c.text for g in groups for c in g.candidates}.values())
    if not texts:
        raise RerankerError("fit_hybrid_head: the groups have no candidate texts")
    cfg = student.config
    df, avg_len = document_frequencies(cfg, texts)
    n = len(texts)
    with torch.no_grad():
        head.idf.copy_(torch.log1p((n - df + 0.5) / (df + 0.5)))
        head.avg_doc_len.fill_(max(avg_len, 1.0))
        out = student.output_layer()
        out.weight.zero_()
        if out.bias is not None:
            out.bias.zero_()
    rows = []
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode():
            for g in groups[:max_groups]:
                pairs = [(g.query, c.text) for c in g.candidates]
                feats = []
                for start in range(0, len(pairs), batch_size):
                    chunk = pairs[start : start + batch_size]
                    enc = {k: v.to(student.device) for k, v in student.encode([q for q, _ in chunk], [d for _, d in chunk]).items()}
                    feats.append(torch.stack(student.hybrid_features(**enc), dim=-1).cpu())
                x = torch.cat(feats).double()
                y = torch.tensor([c.score for c in g.candidates], dtype=torch.float64)
                rows.append((x - x.mean(0), y - y.mean()))
    finally:
        student.train(was_training)
    # least squares on the per-query centred values gives the starting point (both weights kept >= a small
    # floor); then the two weights minimise the distillation loss itself (listwise KL at the run's temperature)
    x = torch.cat([r[0] for r in rows])
    y = torch.cat([r[1] for r in rows])
    scale = x.std(0).clamp(min=1e-6)
    xs = x / scale
    coef = torch.linalg.solve(xs.T @ xs + 1e-3 * len(xs) * torch.eye(2, dtype=xs.dtype), xs.T @ y) / scale
    floor = 0.05 * y.std().item() / scale
    start = torch.maximum(coef, floor)
    width = max(len(r[1]) for r in rows)
    feats = torch.zeros(len(rows), width, 2, dtype=torch.float64)
    target = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (xi, yi) in enumerate(rows):
        feats[i, : len(yi)], target[i, : len(yi)], mask[i, : len(yi)] = xi, yi, True
    log_w = start.log().clone().requires_grad_(True)
    kl = lambda w: listwise_kl((feats * w).sum(-1), target, temperature=temperature, mask=mask)  # noqa: E731
    with torch.enable_grad():
        kl_start = float(kl(start))
        opt = torch.optim.LBFGS([log_w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = kl(log_w.exp())
            loss.backward()
            return loss

        opt.step(closure)
    weights = log_w.detach().exp()
    if not torch.isfinite(weights).all() or float(kl(weights)) > kl_start:
        weights = start
    sem, lex = float(weights[0]), float(weights[1])
    with torch.no_grad():
        head.sem_weight.fill_(sem)
        head.lex_weight.fill_(lex)
    pred = x @ weights
    r2 = 1 - float(((y - pred) ** 2).sum() / (y**2).sum().clamp(min=1e-12))
    fitted = {"sem_weight": sem, "lex_weight": lex, "r2": r2, "kl_least_squares": kl_start, "kl": float(kl(weights)),
              "passages": n, "avg_doc_len": float(head.avg_doc_len), "groups": len(rows)}
    log.info("hybrid head initialised: %s", {k: round(v, 4) if isinstance(v, float) and math.isfinite(v) else v for k, v in fitted.items()})
    return fitted
