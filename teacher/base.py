"""The teacher protocol: score query–passage pairs with soft relevance labels.

A teacher maps pairs to :class:`Judgement` s: a raw ``score`` (a logit-scale number; higher
is more relevant) and a ``label`` in [0, 1] (the soft label: P(relevant), or an expected
grade scaled to [0, 1]). Backends are chosen by name from :data:`TEACHERS` and imported
only when asked for, with an install hint when their packages are missing.

Teachers receive whole query groups (all candidates of a query in one call), so a
teacher may normalise scores within a query (the ensemble does).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from reranker.errors import RerankerError
from reranker.registry import BackendSpec, Registry


class TeacherError(RerankerError):
    """A teacher could not score pairs (unreachable endpoint, a model without the answer tokens, ...)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One query–passage pair to label; ``first_stage`` is its score in the candidate run, when it came from one."""

    query_id: str
    doc_id: str
    query: str
    document: str
    first_stage: float | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    score: float
    label: float



class Teacher(ABC):
    """Scores pairs. Subclasses set ``name`` and implement :meth:`score_batch`.

    ``params`` (the constructor's keywords) and ``prompt_version`` make up the
    :attr:`fingerprint`, which keys the label store: labels of another configuration are
    never mixed with these.
    """

    name: ClassVar[str]
    prompt_version: str = "-"

    def __init__(self, **params: Any):
        self.params = params

    @abstractmethod
    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        """Judgements for ``pairs``, in order (one per pair)."""

    @property
    def fingerprint(self) -> str:
        """``name:hash`` of the configuration that determines the scores."""
        blob = json.dumps({"params": self.params, "prompt": self.prompt_version}, sort_keys=True, default=str)
        return f"{self.name}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def warm_up(self) -> None:
        """Load models now (called once before labelling starts); by default nothing."""

    def prepare(self, corpus) -> None:
        """Called once with the :class:`~reranker.records.Corpus` before labelling (BM25 needs its statistics)."""

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.name, "fingerprint": self.fingerprint, "prompt_version": self.prompt_version, "params": self.params}


TEACHERS = Registry("teacher", {
    "bm25": BackendSpec("teacher.backends.lexical", "BM25Teacher", "core", "BM25 with the whole corpus's statistics (or the first stage's scores)"),
    "bi-encoder": BackendSpec("teacher.backends.neural", "BiEncoderTeacher", "dense", "sentence-transformers bi-encoder cosine"),
    "cross-encoder": BackendSpec("teacher.backends.neural", "CrossEncoderTeacher", "dense", "sentence-transformers CrossEncoder"),
    "hf": BackendSpec("teacher.backends.hf", "HFTeacher", "llm", "transformers causal LM, P(yes) from the answer logits"),
    "llama-cpp": BackendSpec("teacher.backends.llama_cpp", "LlamaCppTeacher", "gguf", "GGUF model on CPU with llama-cpp-python"),
    "openai": BackendSpec("teacher.backends.openai_api", "OpenAITeacher", "openai", "any OpenAI-compatible server, via logprobs"),
    "vllm": BackendSpec("teacher.backends.vllm_engine", "VLLMTeacher", "vllm", "vLLM offline engine on GPUs"),
    "ensemble": BackendSpec("teacher.backends.ensemble", "EnsembleTeacher", "core", "weighted fusion of other teachers"),
})


def get_teacher_class(name: str) -> type[Teacher]:
    return TEACHERS.load(name)


def make_teacher(name: str, **params: Any) -> Teacher:
    """Build the teacher registered as ``name`` with ``params``; unknown parameters are a clear error."""
    return TEACHERS.create(name, **params)


def write_teacher_file(path, name: str, params: dict[str, Any], fit: dict[str, Any] | None = None) -> None:
    """A teacher as JSON, ``{"teacher": NAME, "params": {...}, "fit": ...}`` (the pipeline's ``teacher.json``,
    ``reranker label --teacher-out``): what labelled, so that evaluation, the cascade and ``--teacher-file`` use it."""
    from pathlib import Path

    Path(path).write_text(json.dumps({"teacher": name, "params": params, "fit": fit}, indent=2) + "\n")


def read_teacher_file(path) -> tuple[str, dict[str, Any]]:
    """(name, params) of a file :func:`write_teacher_file` wrote; a clear error for anything else."""
    from pathlib import Path

    from reranker.errors import DataFormatError

    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(path, getattr(exc, "lineno", None), f"not a readable JSON teacher file ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("teacher"), str) or not isinstance(spec.get("params", {}), dict):
        raise DataFormatError(path, None, 'expected {"teacher": NAME, "params": {...}} (a pipeline run\'s teacher.json)')
    return spec["teacher"], spec.get("params", {})


# --- query generation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generated:
    """One generated text with the generator's mean token log-probability (0.0 when unknown)."""

    text: str
    mean_logprob: float


class QueryGenerator(ABC):
    """Writes text continuations of prompts (synthetic queries). Subclasses set ``name``.

    A generator with ``takes_documents = True`` (the extractive one) is given the passages
    themselves instead of rendered prompts.
    """

    name: ClassVar[str]
    takes_documents: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params = params

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[Generated]]:
        """``n`` continuations per prompt (greedy when ``temperature`` is 0), each cut at the first stop string."""


GENERATORS = Registry("query generator", {
    "extractive": BackendSpec("teacher.backends.extractive", "ExtractiveGenerator", "core", "a sentence of the passage (inverse cloze task)"),
    "hf": BackendSpec("teacher.backends.hf", "HFGenerator", "llm", "transformers causal LM"),
    "llama-cpp": BackendSpec("teacher.backends.llama_cpp", "LlamaCppGenerator", "gguf", "GGUF model on CPU"),
    "openai": BackendSpec("teacher.backends.openai_api", "OpenAIGenerator", "openai", "any OpenAI-compatible server"),
})


def make_generator(name: str, **params: Any) -> QueryGenerator:
    return GENERATORS.create(name, **params)
