"""What every LLM teacher shares: turning answer-token log-probabilities into soft labels.

All arithmetic is in float64 on numbers the backends read as fp32 or better (never fp16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reranker.scoring import sigmoid

from .base import Judgement, TeacherError
from .prompts import PromptTemplate


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


def yes_no_judgement(yes_logprobs: Sequence[float], no_logprobs: Sequence[float], temperature: float = 1.0) -> Judgement:
    """Soft label from the log-probabilities of the answer strings' tokens.

    Variants of each answer (``" yes"``, ``" Yes"``) are pooled (log-sum-exp). The score
    is ``(log P(yes) - log P(no)) / T`` and the label ``sigmoid(score)``, which is
    ``P(yes) / (P(yes) + P(no))`` at ``T = 1``. A side whose tokens all fell outside what a
    server returned (``-inf``) is taken as far less likely than the other side.
    """
    if temperature <= 0:
        raise TeacherError(f"temperature must be > 0, got {temperature}")
    lp_yes, lp_no = logsumexp(yes_logprobs), logsumexp(no_logprobs)
    if lp_yes == -math.inf and lp_no == -math.inf:
        raise TeacherError("neither answer token is among the model's candidates for the next token")
    if lp_no == -math.inf:
        score = 30.0
    elif lp_yes == -math.inf:
        score = -30.0
    else:
        score = (lp_yes - lp_no) / temperature
    return Judgement(score=score, label=sigmoid(score))


def graded_judgement(grade_logprobs: Sequence[Sequence[float]], temperature: float = 1.0) -> Judgement:
    """Expected grade over grades 0..G from each grade's token log-probabilities, scaled to [0, 1].

    ``score`` is the logit of that label (clipped), so it orders pairs like the label.
    """
    if temperature <= 0:
        raise TeacherError(f"temperature must be > 0, got {temperature}")
    pooled = [logsumexp(lps) / temperature for lps in grade_logprobs]
    norm = logsumexp(pooled)
    if norm == -math.inf:
        raise TeacherError("no grade token is among the model's candidates for the next token")
    probs = [math.exp(p - norm) for p in pooled]
    top = len(probs) - 1
    label = sum(g * p for g, p in enumerate(probs)) / top
    clipped = min(max(label, 1e-9), 1 - 1e-9)
    return Judgement(score=math.log(clipped / (1 - clipped)), label=label)


def answer_strings(template: PromptTemplate) -> list[list[str]]:
    """The answer strings of a relevance template: ``[yes, no]`` or the grades, each a list of variants."""
    if template.kind == "relevance":
        sides = [template.meta.get("yes"), template.meta.get("no")]
    elif template.kind == "graded":
        sides = template.meta.get("grades")
        sides = [[g] if isinstance(g, str) else g for g in sides] if sides else None
    else:
        raise TeacherError(f"prompt {template.key} is a {template.kind!r} template, not a relevance one")
    if not sides or any(not s for s in sides):
        raise TeacherError(f"prompt {template.key} does not list its answer strings (yes/no or grades)")
    return [[s] if isinstance(s, str) else list(s) for s in sides]


def judgement_from_logprobs(template: PromptTemplate, logprobs: Sequence[Sequence[float]], temperature: float) -> Judgement:
    """``logprobs[i]`` holds the log-probabilities of the variants of answer ``i`` of ``template``."""
    if template.kind == "relevance":
        return yes_no_judgement(logprobs[0], logprobs[1], temperature)
    return graded_judgement(logprobs, temperature)


def truncate_words(text: str, max_chars: int | None) -> str:
    """``text`` cut to at most ``max_chars`` characters, at a word boundary where there is one.

    Every LLM teacher truncates documents with this one function, so that the same pair
    renders the same prompt on every backend.
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
    cut = cut[:space] if space > 0 else text[:max_chars]
    return cut.rstrip()
