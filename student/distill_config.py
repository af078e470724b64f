"""The settings of a distillation run (:class:`DistillConfig`, saved beside the weights in the model card and
``summary.json``), how a config file and flags fill them, and the recipe version that names the training code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reranker.config import load_config_file, validation_problems
from reranker.errors import RerankerError

#: Names the training code's behaviour beyond its settings (the head, its features, its fit). A change that makes
#: ``distill`` produce a different student from the same settings gets a new value, so that pipelines re-run their
#: distill stage instead of keeping a student of the old code as "up to date".
RECIPE_VERSION = "2026-12-01 hybrid head, stemmed-word lexical term"


class DistillConfig(BaseModel):
    """Every option of a distillation run; a config file (YAML or TOML) and CLI flags fill it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    train: Path = Field(description="Labelled groups (JSONL from `reranker label --export`).")
    output_dir: Path = Field(description="Folder for checkpoints, the final model and its card.")
    dev: Path | None = Field(None, description="Dev groups for evaluation during training.")
    dev_qrels: Path | None = Field(None, description="Human qrels for the dev queries (optional).")
    student: Literal["cross-encoder", "t5"] = "cross-encoder"
    head: Literal["classifier", "hybrid"] | None = Field(None, description="Cross-encoder score head (default hybrid): the classification logit alone, or hybrid: + mean-pooled cosine + learned-IDF term match, fitted to the teacher before the first step (student.heads). T5 students have their own.")
    base_model: str = Field("all-MiniLM-L6-v2", description="Hub id or folder to start from.")
    model_config_overrides: dict[str, Any] | None = Field(None, description="Random init from this transformers config instead.")
    tokenizer: str | None = Field(None, description="Tokenizer (hub id or folder) for a random init.")
    max_length: int = Field(256, ge=16, description="Longest input in tokens (query + document + template).")
    query_max_length: int = Field(64, ge=1, description="Longest query in tokens (cut first).")
    lexical_language: str = Field("english", description="Hybrid head: the language whose stemmer and stop words make the lexical term's words (reranker.lexical; any PyStemmer language).")
    group_size: int = Field(8, ge=2)
    batch_queries: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_pairs: int | None = Field(3200, ge=1, description=(
        "Training budget in query-document pairs (steps x batch_queries x group_size x grad_accum): the run ends at "
        "whichever of epochs and this budget comes first, so the default run's cost does not grow with the corpus "
        "(3,200 pairs: 100 steps of 32, about 20 minutes for the hybrid MiniLM student on 2 CPU cores). null = epochs only."))
    max_steps: int | None = Field(None, ge=1, description="Steps of the whole run, overriding epochs and max_pairs; sets the learning-rate schedule.")
    stop_after: int | None = Field(None, ge=1, description="End this invocation after this step, with a checkpoint; the schedule stays that of the whole run and a later run (resume: true) goes on.")
    lr: float = Field(3e-5, gt=0)
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the new head (cross-encoder pooler + classifier); default: lr.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    losses: dict[str, float] = Field(default_factory=lambda: {"listwise_kl": 1.0})
    temperature: float = Field(1.0, gt=0, description="Distillation temperature of listwise_kl (student side).")
    eval_every: int = Field(25, ge=1, description="Dev evaluation (model selection) every this many steps.")
    patience: int = Field(3, ge=1)
    seed: int = 42
    bf16: bool | None = Field(None, description="bf16 autocast: null = where the hardware has it (a GPU with bf16, a CPU with AVX512-BF16 or AMX); true = required (an error without it); false = fp32. Never fp16.")
    teacher: str = Field("", description="The teacher that made the labels, for the model card.")
    resume: bool = Field(True, description="Resume from OUTPUT/checkpoint when it exists.")


def load_config(path: str | Path | None = None, **overrides: Any) -> DistillConfig:
    """A :class:`DistillConfig` from a YAML/TOML file and/or keyword overrides (``None`` values ignored)."""
    data: dict[str, Any] = load_config_file(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DistillConfig(**data)
    except ValidationError as exc:
        raise RerankerError(f"{path or 'distill options'}: {validation_problems(exc, '')}") from None


def check_losses(cfg: DistillConfig) -> None:
    from .losses import LOSSES

    unknown = [name for name in cfg.losses if name not in LOSSES]
    if unknown:
        raise RerankerError(f"unknown loss {', '.join(unknown)}; choose from: {', '.join(LOSSES)}")


def bf16_supported() -> tuple[bool, str]:
    """Whether bf16 autocast runs in hardware here, and on what."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(), torch.cuda.get_device_name()
    # native bf16 only (AVX512-BF16 or AMX): oneDNN also "supports" bf16 on plain AVX512 by emulation, which
    # trains at half and infers at a third of fp32's speed on such a CPU (benchmarks/results/bf16_cpu.md)
    try:
        ok = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        ok = False
    return ok, f"this CPU ({torch.backends.cpu.get_cpu_capability()}, {'with' if ok else 'without'} AVX512-BF16/AMX)"


def resolve_bf16(wanted: bool | None) -> bool:
    """``None``: bf16 where the hardware has it; ``True``: bf16 or a clear error; ``False``: fp32."""
    if wanted is False:
        return False
    ok, where = bf16_supported()
    if wanted and not ok:
        raise RerankerError(f"bf16 was asked for (bf16: true) but {where} has no bf16 support (a GPU with bf16, or a CPU with "
                            "AVX512-BF16 or AMX); set bf16: false for fp32, or leave it unset to choose by the hardware")
    return ok
