"""Synthetic queries for an unlabeled corpus: generate, filter, write.

A generator writes queries for sampled passages; each (query, source passage) pair is a
positive for distillation. Three ways to write them:

- InPars (Bonifacio et al. 2022): a causal LM continues a few-shot prompt
  (``teacher/prompts/inpars.txt``); queries are then ranked by their mean token
  log-probability and the most likely are kept.
- Promptagator (Dai et al. 2022): the few-shot examples are the user's own seed pairs
  (:func:`load_seed_pairs`, ``teacher/prompts/promptagator.txt``), and a round-trip
  consistency filter keeps a query only if retrieval finds its source passage.
- The inverse cloze task (ICT, Lee et al. 2019) as a model-free fallback
  (:class:`teacher.backends.extractive.ExtractiveGenerator`): the pseudo-query is a sentence of the passage.

:func:`generate_queries` runs a generator over a corpus and applies the filters of
:class:`FilterConfig`, in order: length, duplicates, verbatim copies (off by default),
log-probability share, consistency. Its ``stats`` record every step.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reranker.errors import DataFormatError, RerankerError
from reranker.io.jsonl import iter_jsonl, open_text, pick, write_jsonl
from reranker.records import Corpus, Document
from reranker.retrieval import Retriever, build_index

from .base import QueryGenerator, TeacherError
from .prompts import PromptTemplate, load_prompt

log = logging.getLogger(__name__)

BM25_BACKENDS = ("bm25s", "pyserini")
NO_TEMPLATE = "-"  # template key of queries written without a prompt (extractive)


@dataclass(frozen=True, slots=True)
class SeedPair:
    """One of the user's example (query, passage) pairs; ``doc_id`` when the file named one."""

    query: str
    document: str
    doc_id: str | None = None


@dataclass(frozen=True, slots=True)
class SyntheticQuery:
    query_id: str
    text: str
    doc_id: str  # the passage the query was written for: its positive
    mean_logprob: float
    template_key: str
    generator: str


@dataclass
class GenerationResult:
    queries: list[SyntheticQuery]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterConfig:
    """Which generated queries to keep. Filters run in this order; each can be switched off.

    - ``min_words``/``max_words`` (3, 32): length bounds in whitespace-separated words.
    - ``dedup`` (on): drop a query whose normalised text (lower-cased, punctuation and
      whitespace collapsed) was already kept anywhere in the run.
    - ``max_copied_words`` (0 = off): drop a query that repeats a run of this many words of
      its passage verbatim. Off by default, as in the papers; never applied to extractive
      queries, which are copies by design.
    - ``keep_top_share`` (0.8; 1.0 = off): keep this share of the queries with the highest
      mean log-probability. InPars kept the top 10% of 100k queries; with the corpora of a
      few thousand passages this toolkit targets that leaves too little, so only the least
      likely fifth (where degenerate and off-format texts collect) goes, and the teacher's
      labels and the consistency filter do the rest. Skipped when every log-probability
      is 0 (generators without scores, such as extractive).
    - ``consistency_k`` (10; 0 = off): keep a query only if its source passage is among the
      top ``consistency_k`` retrieved for it (Promptagator's round-trip filter; BM25 here).
    """

    min_words: int = 3
    max_words: int = 32
    dedup: bool = True
    max_copied_words: int = 0
    keep_top_share: float = 0.8
    consistency_k: int = 10

    def __post_init__(self):
        if self.min_words < 0 or self.max_words < max(self.min_words, 1):
            raise RerankerError(f"need 0 <= min_words <= max_words and max_words >= 1, got {self.min_words} and {self.max_words}")
        if not 0 < self.keep_top_share <= 1:
            raise RerankerError(f"keep_top_share must be in (0, 1], got {self.keep_top_share}")
        if self.consistency_k < 0 or self.max_copied_words < 0:
            raise RerankerError("consistency_k and max_copied_words must be >= 0 (0 switches the filter off)")


# --- the extractive (ICT) generator ----------------------------------------------------

# --- seeds and prompts ----------------------------------------------------------------


def load_seed_pairs(path: str | Path, corpus: Corpus | None = None) -> list[SeedPair]:
    """The user's seed pairs from JSONL: ``query`` plus ``document`` (or ``text``) or ``doc_id``.

    A ``doc_id`` without a document text is looked up in ``corpus`` (title and text).
    Every problem is a :class:`DataFormatError` naming the file and the line.
    """
    name = str(path)
    pairs: list[SeedPair] = []
    with open_text(path) as f:
        for lineno, obj in iter_jsonl(f, name):
            query = pick(obj, ("query",), name, lineno, "seed query").strip()
            document = pick(obj, ("document", "text"), name, lineno, "document text", required=False).strip()
            doc_id = pick(obj, ("doc_id",), name, lineno, "document id", required=False).strip() or None
            if not query:
                raise DataFormatError(name, lineno, "the seed query is empty")
            if not document:
                if doc_id is None:
                    raise DataFormatError(name, lineno, "a seed pair needs 'document' (or 'text') or a 'doc_id', and neither is set")
                if corpus is None:
                    raise DataFormatError(name, lineno, f"doc_id {doc_id!r} given without its text, and no corpus to look it up in")
                doc = corpus.get(doc_id)
                if doc is None:
                    raise DataFormatError(name, lineno, f"unknown doc_id {doc_id!r}: not in the corpus")
                document = doc.contents
            pairs.append(SeedPair(query, document, doc_id))
    if not pairs:
        raise DataFormatError(name, None, "no seed pairs in the file")
    return pairs


def build_prompt(template: PromptTemplate, document: str, seeds: Sequence[SeedPair] | None = None) -> str:
    """Render a query-generation template for ``document``.

    A template with ``{examples}`` (Promptagator) needs ``seeds``: at most the template's
    ``max_examples`` of them, in file order and skipping a seed of this very passage, are
    rendered with its ``example_format``. Templates without ``{examples}`` ignore seeds.
    """
    values: dict[str, Any] = {"document": document}
    if "examples" in template.fields:
        if not seeds:
            raise RerankerError(f"prompt {template.key} is written from the user's seed pairs; give a seed file (JSONL of query + document)")
        fmt = template.meta.get("example_format")
        if not isinstance(fmt, str):
            raise RerankerError(f"prompt {template.key} has {{examples}} but no 'example_format' in its header")
        limit = int(template.meta.get("max_examples", len(seeds)))
        chosen = [s for s in seeds if s.document != document][:limit]
        values["examples"] = "".join(fmt.format(query=s.query, document=s.document) for s in chosen)
    return template.render(**values)


def _resolve_template(template: PromptTemplate | str | None, seeds) -> PromptTemplate:
    if template is None:
        template = "promptagator" if seeds else "inpars"
    if isinstance(template, (str, Path)):
        template = load_prompt(template)
    if template.kind != "query-generation":
        raise RerankerError(f"prompt {template.key} is a {template.kind!r} template, not a query-generation one")
    return template


# --- filters ---------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower-case, punctuation and runs of whitespace to one space: the key of the dedup filter."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def _copies_span(query: str, passage: str, n: int) -> bool:
    q, p = normalize(query).split(), " " + normalize(passage) + " "
    return any(f" {' '.join(q[i : i + n])} " in p for i in range(len(q) - n + 1))


def _search_ranks(retriever: Retriever, queries: Sequence[SyntheticQuery], k: int) -> dict[str, int | None]:
    """Rank (1-based) of each query's source passage in the retriever's top ``k``; None when absent."""
    ranks: dict[str, int | None] = {}
    for start in range(0, len(queries), 4096):
        chunk = queries[start : start + 4096]
        run = retriever.search({q.query_id: q.text for q in chunk}, k=k)
        for q in chunk:
            ranked = [hit.doc_id for hit in run.ranking(q.query_id)]
            ranks[q.query_id] = ranked.index(q.doc_id) + 1 if q.doc_id in ranked else None
    return ranks


def apply_filters(
    queries: Sequence[SyntheticQuery], corpus: Corpus, config: FilterConfig = FilterConfig(),
    retriever: Retriever | None = None, extractive: bool = False,
) -> tuple[list[SyntheticQuery], dict[str, Any]]:
    """Run the filters of ``config`` in order; returns the kept queries and the stats.

    ``retriever`` serves the consistency filter (default: a bm25s index over ``corpus``,
    built once here); it must index the same passage ids. ``source_in_bm25_top10`` is the
    share of kept queries whose source BM25 ranks in its top 10 (``None`` when none is kept),
    from ``retriever`` when that is a BM25 one, else from a bm25s index built here.
    """
    steps: list[dict[str, Any]] = []

    def step(name: str, before: list[SyntheticQuery], after: list[SyntheticQuery], skipped: str | None = None):
        steps.append({"filter": name, "in": len(before), "out": len(after), **({"skipped": skipped} if skipped else {})})
        return after

    kept = list(queries)
    kept = step("length", kept, [q for q in kept if config.min_words <= len(q.text.split()) <= config.max_words])
    first: dict[str, SyntheticQuery] = {}
    for q in kept if config.dedup else ():
        first.setdefault(normalize(q.text), q)
    kept = step("dedup", kept, list(first.values())) if config.dedup else step("dedup", kept, kept, "off")
    n = config.max_copied_words
    skip = "off" if not n else "extractive queries are copies by design" if extractive else None
    kept = step("copy", kept, kept if skip else [q for q in kept if not _copies_span(q.text, corpus[q.doc_id].contents, n)], skip)
    skip = "off" if config.keep_top_share >= 1 else "no log-probabilities (all 0)" if all(q.mean_logprob == 0.0 for q in kept) else None
    if skip:
        kept = step("logprob", kept, kept, skip)
    else:
        top = math.ceil(config.keep_top_share * len(kept) - 1e-9)
        best = sorted(range(len(kept)), key=lambda i: (-kept[i].mean_logprob, i))[:top]
        kept = step("logprob", kept, [kept[i] for i in sorted(best)])
    ranks: dict[str, int | None] = {}
    if config.consistency_k and kept:
        if retriever is None:
            retriever = build_index(corpus, "bm25s")
        ranks = _search_ranks(retriever, kept, max(config.consistency_k, 10))
        kept = step("consistency", kept, [q for q in kept if (ranks[q.query_id] or math.inf) <= config.consistency_k])
    else:
        kept = step("consistency", kept, kept, None if config.consistency_k else "off")
    stats: dict[str, Any] = {"candidates": len(queries), "filters": steps, "kept": len(kept), "source_in_bm25_top10": None}
    if kept:
        is_bm25 = retriever is not None and retriever.name in BM25_BACKENDS
        if not (is_bm25 and ranks):  # no BM25 ranks yet: search (building the index only if none was given)
            ranks = _search_ranks(retriever if is_bm25 else build_index(corpus, "bm25s"), kept, 10)
        stats["source_in_bm25_top10"] = sum(1 for q in kept if (ranks[q.query_id] or math.inf) <= 10) / len(kept)
    return kept, stats


# --- the whole run ---------------------------------------------------------------------


def query_id(doc_id: str, i: int) -> str:
    """``gen-<doc id>-<i>``, whitespace and ``%`` percent-escaped: stable, unique and TREC-safe."""
    safe = "".join(f"%{ord(c):02X}" if c.isspace() or c == "%" else c for c in doc_id)
    return f"gen-{safe}-{i}"


def _generator_label(generator: QueryGenerator) -> str:
    model = generator.params.get("model")
    return f"{generator.name}:{model}" if model else generator.name


def generate_queries(
    corpus: Corpus, generator: QueryGenerator, template: PromptTemplate | str | None = None, n_per_passage: int = 1,
    sample: int | None = None, seed: int = 0, temperature: float = 0.0, max_tokens: int = 32,
    filters: FilterConfig = FilterConfig(), seeds: Sequence[SeedPair] | None = None, batch_size: int = 16,
    retriever: Retriever | None = None,
) -> GenerationResult:
    """Write ``n_per_passage`` queries for each of ``sample`` passages (all when None), then filter.

    Passages are sampled with ``seed`` and kept in corpus order. LLM generators get
    ``template`` (a template, a packaged name or a path; default ``promptagator`` when
    ``seeds`` are given, else ``inpars``) rendered per passage (title and text); generators
    that take documents (extractive) get the passage text and no template. Query ids are
    ``gen-<doc id>-<i>``, ``i`` counting the passage's generations before filtering, so a
    query keeps its id whatever the filters drop.
    """
    if n_per_passage < 1 or batch_size < 1:
        raise RerankerError(f"n_per_passage and batch_size must be at least 1, got {n_per_passage} and {batch_size}")
    if len(corpus) == 0:
        raise RerankerError("cannot generate queries for an empty corpus")
    extractive = generator.takes_documents
    if extractive:
        if template is not None:
            log.warning("the %s generator reads passages directly; the prompt template is not used", generator.name)
        tpl, key, stop = None, NO_TEMPLATE, ()
    else:
        tpl = _resolve_template(template, seeds)
        key, stop = tpl.key, tuple(tpl.meta.get("stop", ["\n"]))
    docs: list[Document] = list(corpus)
    if sample is not None and sample < len(docs):
        if sample < 1:
            raise RerankerError(f"sample must be at least 1, got {sample}")
        chosen = set(random.Random(seed).sample(range(len(docs)), sample))
        docs = [d for i, d in enumerate(docs) if i in chosen]
    label = _generator_label(generator)
    candidates: list[SyntheticQuery] = []
    with tqdm(total=len(docs), desc="generating queries", unit="passage", disable=None) as bar:
        for b, start in enumerate(range(0, len(docs), batch_size)):
            batch = docs[start : start + batch_size]
            prompts = [d.text if extractive else build_prompt(tpl, d.contents, seeds) for d in batch]
            outputs = generator.generate(prompts, n=n_per_passage, temperature=temperature, max_tokens=max_tokens,
                                         stop=stop, seed=seed + b)
            if len(outputs) != len(batch) or any(len(o) != n_per_passage for o in outputs):
                raise TeacherError(f"generator {generator.name!r} did not return {n_per_passage} texts for each of {len(batch)} prompts")
            for doc, texts in zip(batch, outputs):
                for i, g in enumerate(texts):
                    candidates.append(SyntheticQuery(query_id(doc.id, i), g.text.strip(), doc.id, float(g.mean_logprob), key, label))
            bar.update(len(batch))
    kept, filter_stats = apply_filters(candidates, corpus, filters, retriever, extractive)
    stats = {"generator": label, "template": key, "passages": len(docs), "n_per_passage": n_per_passage, "seed": seed,
             "temperature": temperature, **filter_stats}
    log.info("generated %d queries for %d passages, kept %d (source in BM25 top 10: %s)",
             len(candidates), len(docs), len(kept), stats["source_in_bm25_top10"])
    return GenerationResult(kept, stats)


# --- files -----------------------------------------------------------------------------


def write_synthetic(path: str | Path, result: GenerationResult | Iterable[SyntheticQuery]) -> int:
    """JSONL with ``_id``, ``text`` (a BEIR queries file), ``doc_id``, ``mean_logprob``, ``template``, ``generator``."""
    queries = result.queries if isinstance(result, GenerationResult) else result
    return write_jsonl(path, (
        {"_id": q.query_id, "text": q.text, "doc_id": q.doc_id, "mean_logprob": q.mean_logprob,
         "template": q.template_key, "generator": q.generator} for q in queries
    ))


def read_synthetic(path: str | Path) -> list[SyntheticQuery]:
    """Queries written by :func:`write_synthetic`; ``mean_logprob``, ``template``, ``generator`` are optional."""
    name = str(path)
    out: dict[str, SyntheticQuery] = {}
    with open_text(path) as f:
        for lineno, obj in iter_jsonl(f, name):
            qid = pick(obj, ("_id",), name, lineno, "query id")
            if qid in out:
                raise DataFormatError(name, lineno, f"query id {qid!r} appears twice")
            try:
                lp = float(obj.get("mean_logprob", 0.0))
            except (TypeError, ValueError):
                raise DataFormatError(name, lineno, f"mean_logprob must be a number, got {obj.get('mean_logprob')!r}") from None
            out[qid] = SyntheticQuery(
                qid, pick(obj, ("text",), name, lineno, "query text"), pick(obj, ("doc_id",), name, lineno, "source doc_id"),
                lp, pick(obj, ("template",), name, lineno, "template", required=False),
                pick(obj, ("generator",), name, lineno, "generator", required=False),
            )
    return list(out.values())


def positives(result: GenerationResult | Iterable[SyntheticQuery]) -> dict[str, str]:
    """``query id -> source doc id``: each synthetic query's one known positive."""
    queries = result.queries if isinstance(result, GenerationResult) else result
    return {q.query_id: q.doc_id for q in queries}
