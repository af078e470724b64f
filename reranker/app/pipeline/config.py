"""The pipeline's config: one YAML/TOML file, checked in full before any work starts.

Sections follow the stages (queries, candidates, labels, distill, export, evaluate,
promote). Unknown keys, wrong types and missing paths are errors that name the key
(``distill.lr: Input should be a valid number``). Relative paths are read against the
config file's folder; ``package:`` paths point into the installed ``reranker`` package
(the embedded demo corpus). What the pipeline writes or accumulates (``run_dir``,
``promote.models_dir``, ``feedback``) is relative to the current directory instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reranker.config import DataSpec, check_paths, data_paths, load_config_file, validation_problems
from reranker.errors import RerankerError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class QueriesSection(Section):
    generator: str = "extractive"
    params: dict[str, Any] = Field(default_factory=dict)
    prompt: str | None = None
    per_passage: int = Field(1, ge=1)
    sample: int | None = Field(1000, ge=1, description=(
        "Passages to write queries for: a seeded random sample, which bounds the labelling and training time on a large "
        "corpus (1,000 passages: about 8,000 teacher pairs and one epoch of 225 steps); null = every passage."))
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(32, ge=1)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(32, ge=1)
    keep_top: float = Field(1.0, gt=0, le=1)
    consistency_k: int = Field(10, ge=0)
    use_feedback_as_seeds: bool = Field(True, description="LLM generators get the feedback judgements as few-shot seeds.")


class CandidatesSection(Section):
    retrievers: list[str] = Field(default_factory=lambda: ["bm25s"], min_length=1)
    depth: int = Field(8, ge=2)
    negatives: int | None = Field(None, ge=1)


class LabelsSection(Section):
    teacher: str = "ensemble"
    params: dict[str, Any] = Field(default_factory=dict)
    batch_pairs: int = Field(64, ge=1)
    retries: int = Field(2, ge=0)
    dev_share: float = Field(0.1, gt=0, lt=1, description="Share of the labelled groups held out for the dev set.")
    fit_weights: bool = Field(True, description=(
        "An ensemble teacher's member weights are fitted on the dev queries' groups (their source passages, with the "
        "query's words taken out of them: teacher/fusion.py) before labelling; false keeps the configured weights."))


class ExportSection(Section):
    enabled: bool = True
    precisions: list[Literal["fp32", "int8", "fp16", "auto"]] = Field(
        default_factory=lambda: ["auto"], min_length=1,
        description="auto: time fp32 and both int8 methods on the dev groups' pairs and keep the fastest within max_ndcg_drop.")
    serve: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto", description="The precision that evaluation and `serve` use; auto: the export's own default (its auto choice on CPU).")
    max_ndcg_drop: float = Field(0.005, ge=0, description="precisions auto: the most nDCG@10 below fp32 a faster graph may lose.")
    int8_method: Literal["dynamic", "weight-only", "mixed"] = Field(
        "dynamic", description="dynamic: int8 weights and activations (fastest on CPU); weight-only: int8 weights, fp32 activations; "
                               "mixed: dynamic with its most sensitive nodes in fp32, as few as keep max_ndcg_drop.")
    passage_states: bool = Field(True, description="A separated export (a hybrid student without its joint pass): also encode the "
                                 "corpus's passages once and store their states in onnx/passage_states, which the scorer reads.")


class CascadeSection(Section):
    """BM25 -> student on ``student_top_k`` -> teacher on the student's ``teacher_top_k``."""

    enabled: bool = False
    student_top_k: int = Field(100, ge=1)
    teacher_top_k: int = Field(10, ge=1)


class EvaluateSection(Section):
    data: DataSpec | None = Field(None, description="Judged data (qrels) to evaluate on; default: none (skip).")
    first_stage: str = "bm25s"
    top_k: int = Field(100, ge=1)
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@10"], min_length=1)
    teacher: bool = Field(True, description="Also re-rank with the teacher (its cost is real for LLM teachers).")
    cascade: CascadeSection = Field(default_factory=CascadeSection)


class PromoteSection(Section):
    enabled: bool = True
    models_dir: str = Field("models", description="Versioned model folders (v0001, v0002, ...) and CURRENT.")
    metric: str = "ndcg@10"
    max_p: float = Field(0.05, gt=0, lt=1, description="A new student is refused if it is worse with p below this.")


class PipelineConfig(Section):
    """Every option of ``reranker pipeline run``."""

    name: str = "pipeline"
    run_dir: str = Field("runs/pipeline", description="The run folder (manifest, artifacts, log).")
    corpus: DataSpec
    seed: int = 0
    feedback: str | None = Field(None, description="Feedback file of `reranker feedback add` (extra labels, seeds); may not exist yet.")
    queries: QueriesSection = Field(default_factory=QueriesSection)
    candidates: CandidatesSection = Field(default_factory=CandidatesSection)
    labels: LabelsSection = Field(default_factory=LabelsSection)
    distill: dict[str, Any] = Field(default_factory=dict, description="Options of `reranker distill` (not train/dev/output_dir).")
    export: ExportSection = Field(default_factory=ExportSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    promote: PromoteSection = Field(default_factory=PromoteSection)

    @field_validator("distill")
    @classmethod
    def _distill_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        from student.distill_config import DistillConfig

        owned = {"train", "dev", "output_dir"} & set(value)
        if owned:
            raise ValueError(f"{', '.join(sorted(owned))} are set by the pipeline")
        try:
            DistillConfig(train="-", output_dir="-", **value)
        except ValidationError as exc:
            raise ValueError(validation_problems(exc, "")) from None
        return value

    def distill_settings(self) -> dict[str, Any]:
        """The distill options with every default filled in, and the training code's recipe version: a run made
        with other defaults or an older recipe is not "up to date" (``student.distill_config.RECIPE_VERSION``)."""
        from student.distill_config import RECIPE_VERSION, DistillConfig

        resolved = DistillConfig(train="-", output_dir="-", **self.distill)
        return {**resolved.model_dump(mode="json", exclude={"train", "dev", "output_dir"}), "recipe": RECIPE_VERSION}


def load_pipeline_config(path: str | Path | None = None, data: dict[str, Any] | None = None) -> tuple[PipelineConfig, Path]:
    """The config in ``path`` (or ``data``), with its paths resolved; every problem named before any work."""
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        data = load_config_file(path)
        base = path.resolve().parent
    where = str(path or "pipeline config")
    try:
        cfg = PipelineConfig(**(data or {}))
    except ValidationError as exc:
        raise RerankerError(f"{where}: {validation_problems(exc)}") from None
    check_paths(where, _paths(cfg), base)
    return cfg, base


def _paths(cfg: PipelineConfig):
    yield from data_paths("corpus", cfg.corpus)
    yield from data_paths("evaluate.data", cfg.evaluate.data)
    yield "distill.tokenizer", cfg.distill.get("tokenizer")
