"""What every LLM teacher shares: the prompt, the document's truncation, and turning answer-token
log-probabilities into soft labels.

:class:`LLMTeacher` owns the template (``prompt``), ``temperature`` and ``max_doc_chars``, renders each pair
(:meth:`LLMTeacher.render`, :func:`truncate_words`) and turns log-probabilities into judgements
(:meth:`LLMTeacher.score_batch`); a backend supplies only :meth:`LLMTeacher.logprobs_batch`, the log-probability
of each answer variant at the next token after each pair's prompt. All arithmetic is in float64 on numbers the
backends read as fp32 or better (never fp16).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from reranker.scoring import sigmoid

from .base import Judgement, Pair, Teacher, TeacherError
from .prompts import PromptTemplate, load_prompt


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


def pooled_answer_logprobs(top: Sequence[tuple[str, float]], answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """From a server's top next-token candidates ``(token text, log-probability)``: the log-probability of each answer
    variant, ``-inf`` where it is not among them. Distinct tokens that decode to the same text are pooled (their
    probabilities summed)."""
    pooled: dict[str, list[float]] = {}
    for token, value in top:
        pooled.setdefault(token, []).append(float(value))
    merged = {token: logsumexp(values) for token, values in pooled.items()}
    return [[merged.get(v, -math.inf) for v in side] for side in answers]


def chat_prompt(tokenizer: Any, text: str) -> str:
    """``text`` as the user turn of ``tokenizer``'s chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


class LLMTeacher(Teacher):
    """A teacher that reads an LLM's next-token log-probabilities at a relevance template's answer strings.

    The base owns the template (``prompt``: a name or file, :func:`teacher.prompts.load_prompt`), the answer
    strings, ``temperature`` (it divides the answer log-odds; > 0) and ``max_doc_chars`` (documents are cut at a
    word boundary, the same on every backend); ``prompt``, ``temperature`` and ``max_doc_chars`` are part of the
    fingerprint with the backend's own ``params``. A backend implements :meth:`logprobs_batch` only.
    """

    def __init__(self, prompt: str, temperature: float = 1.0, max_doc_chars: int | None = 2000, **params: Any):
        if temperature <= 0:
            raise TeacherError(f"temperature must be > 0, got {temperature}")
        super().__init__(prompt=prompt, temperature=temperature, max_doc_chars=max_doc_chars, **params)
        self.template: PromptTemplate = load_prompt(prompt)
        self.prompt_version = self.template.key
        self.answers = answer_strings(self.template)
        self.temperature = temperature
        self.max_doc_chars = max_doc_chars

    def render(self, pair: Pair) -> str:
        """The prompt text for ``pair`` (before any chat template), its document cut to ``max_doc_chars``."""
        return self.template.render(query=pair.query, document=truncate_words(pair.document, self.max_doc_chars))

    @abstractmethod
    def logprobs_batch(self, pairs: Sequence[Pair]) -> list[list[list[float]]]:
        """For each pair, for each answer of the template, the log-probabilities of its variants (``-inf`` when
        unknown) at the next token after the pair's prompt."""

    def pair_context(self, pair: Pair) -> str:
        """How an error names the pair (backends add their endpoint and settings)."""
        return f"pair ({pair.query_id}, {pair.doc_id})"

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        self.warm_up()
        out = []
        for pair, lps in zip(pairs, self.logprobs_batch(pairs), strict=True):
            try:
                out.append(judgement_from_logprobs(self.template, lps, self.temperature))
            except TeacherError as exc:
                raise TeacherError(f"{self.pair_context(pair)}: {exc}") from exc
        return out
