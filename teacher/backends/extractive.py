"""The extractive query generator: a sentence of the passage is its query (no model, no network)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import ClassVar

from ..base import Generated, QueryGenerator, TeacherError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after . ! ? followed by space and a capital or a digit."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


class ExtractiveGenerator(QueryGenerator):
    """The inverse cloze task (Lee et al. 2019) as a generator: a sentence of the passage is its query.

    The "prompt" this generator receives is the passage text itself, not a rendered
    template (``takes_documents``: :func:`generate_queries` then skips templates). Sentences
    of ``min_words``..``max_words`` words (5–30) are preferred; the ``n`` picked per passage
    are distinct while the passage has enough sentences, then repeat (the dedup filter
    drops the repeats). The choice is a function of the seed and the passage only.
    ``max_tokens`` caps a query's length in words; ``temperature`` and ``stop`` are
    ignored; ``mean_logprob`` is 0.0. Unlike ICT training the passage is not altered, so
    these pairs are lexically easy: a cold start, not a substitute for an LLM generator.
    """

    name: ClassVar[str] = "extractive"
    takes_documents: ClassVar[bool] = True

    def __init__(self, min_words: int = 5, max_words: int = 30):
        super().__init__(min_words=min_words, max_words=max_words)

    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[Generated]]:
        if n < 1:
            raise TeacherError(f"n must be at least 1, got {n}")
        lo, hi = self.params["min_words"], self.params["max_words"]
        out = []
        for passage in prompts:
            rng = random.Random(f"{seed}\x00{passage}")  # str seeds hash with SHA-512: stable across runs
            sentences = split_sentences(passage)
            # preferred lengths first, each group in a seeded random order
            order = sorted(sentences, key=lambda s: (not lo <= len(s.split()) <= hi, rng.random())) or [""]
            picks = [order[i % len(order)] for i in range(n)]
            out.append([Generated(" ".join(s.split()[:max_tokens]), 0.0) for s in picks])
        return out
