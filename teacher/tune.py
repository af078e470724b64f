"""Adapt an ``hf`` teacher to seed judgements with LoRA (peft), on the prompt that labelling uses.

The loss is the binary cross-entropy between ``log P(yes) - log P(no)`` at the answer position
(the answer variants pooled by log-sum-exp, exactly the teacher's score at temperature 1) and
the seed target ``grade / G``. Prompts are rendered, truncated and tokenised by the teacher's
own :meth:`~teacher.backends.hf.HFTeacher.answer_logprobs`, so the adapter is trained
on what it will score. The result is a peft adapter folder (``adapter_config.json``, weights,
and ``tune.json`` with the settings and losses) that the ``hf`` teacher loads with
``-p adapter=DIR`` and the ``vllm`` teacher with ``adapter=DIR`` (``enable_lora``).

On a GPU the base model is bf16 and the LoRA weights train in fp32; a 7B model with rank 16
fits one 24 GB card at batch size 4 with prompts up to 1024 tokens. Give each adapter its own
folder: the teacher's fingerprint (and so the label store's key) includes the adapter's path.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reranker.errors import MissingDependencyError, RerankerError

from .base import Pair

log = logging.getLogger(__name__)


@dataclass
class TuneConfig:
    steps: int = 100
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    batch_size: int = 4
    weight_decay: float = 0.0
    target_modules: list[str] | str | None = None  # None: peft's default for the architecture, else all linear layers
    seed: int = 0


@dataclass
class TuneReport:
    losses: list[float] = field(default_factory=list)
    loss_before: float = 0.0  # mean loss over all seed pairs before training (eval mode)
    loss_after: float = 0.0
    seconds: float = 0.0
    trainable_params: int = 0


def _yes_no_logit(teacher, logprobs):
    import torch

    yes_ids, no_ids = teacher._answer_ids
    return torch.logsumexp(logprobs[:, yes_ids], -1) - torch.logsumexp(logprobs[:, no_ids], -1)


def _mean_loss(teacher, pairs: Sequence[Pair], targets: Sequence[float], batch_size: int) -> float:
    import torch
    import torch.nn.functional as F

    teacher._model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            z = _yes_no_logit(teacher, teacher.answer_logprobs(chunk))
            y = torch.tensor(targets[start : start + batch_size], dtype=torch.float32, device=z.device)
            total += float(F.binary_cross_entropy_with_logits(z, y, reduction="sum"))
    return total / len(pairs)


def tune_teacher(
    model: str, pairs: Sequence[Pair], targets: Sequence[float], out: str | Path, prompt: str = "relevance-zeroshot",
    config: TuneConfig | None = None, **teacher_params,
) -> TuneReport:
    """Train a LoRA adapter on ``(pair, target)`` seed examples and save it to ``out``."""
    try:
        import torch
        import torch.nn.functional as F
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise MissingDependencyError("teacher tuning", "llm", exc) from exc
    from .backends.hf import HFTeacher

    cfg = config or TuneConfig()
    if len(pairs) != len(targets) or not pairs:
        raise RerankerError(f"teacher tuning needs one target per pair and at least one pair, got {len(pairs)} and {len(targets)}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.rank < 1:
        raise RerankerError(f"teacher tuning: steps, batch size and rank must be >= 1 and lr > 0 (got {cfg})")
    teacher = HFTeacher(model=model, prompt=prompt, **teacher_params)
    if teacher.template.kind != "relevance":
        raise RerankerError(f"teacher tuning trains yes/no templates; prompt {teacher.prompt_version} is {teacher.template.kind!r}")
    teacher.warm_up()
    torch.manual_seed(cfg.seed)
    targets = [float(t) for t in targets]
    report = TuneReport(loss_before=_mean_loss(teacher, pairs, targets, cfg.batch_size))

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=cfg.target_modules)
    try:
        peft_model = get_peft_model(teacher._model, lora)
    except ValueError:  # an architecture peft has no default target modules for
        lora.target_modules = "all-linear"
        peft_model = get_peft_model(teacher._model, lora)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights train in fp32 beside a bf16 base
    teacher._model = peft_model
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    report.trainable_params = sum(p.numel() for p in trainable)
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / max(1, cfg.steps // 10)))
    rng = random.Random(cfg.seed)
    order: list[int] = []
    start = time.perf_counter()
    peft_model.train()
    for step in range(cfg.steps):
        batch = []
        while len(batch) < min(cfg.batch_size, len(pairs)):
            if not order:
                order = list(range(len(pairs)))
                rng.shuffle(order)
            batch.append(order.pop())
        z = _yes_no_logit(teacher, teacher.answer_logprobs([pairs[i] for i in batch]))
        y = torch.tensor([targets[i] for i in batch], dtype=torch.float32, device=z.device)
        loss = F.binary_cross_entropy_with_logits(z, y)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        sched.step()
        report.losses.append(float(loss.detach()))
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            log.info("teacher-tune step %d/%d: loss %.4f", step + 1, cfg.steps, report.losses[-1])
    report.seconds = time.perf_counter() - start
    report.loss_after = _mean_loss(teacher, pairs, targets, cfg.batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    meta = {"base_model": model, "prompt": teacher.prompt_version, "pairs": len(pairs), "config": asdict(cfg),
            "report": asdict(report)}
    (out / "tune.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log.info("saved the LoRA adapter to %s (loss %.4f -> %.4f over %d seed pairs)", out, report.loss_before, report.loss_after, len(pairs))
    return report
