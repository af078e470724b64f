"""Distillation: train a student on the teacher's labelled groups.

Each step takes ``batch_queries`` query groups; from each group it keeps ``group_size``
candidates (the positive first when there is one, then candidates sampled with the seed),
scores them with the student, and applies the configured mix of losses
(:mod:`student.losses`) against the teacher's scores and labels. Training runs on
`accelerate`, so the same code runs on a CPU, one GPU (bf16, never fp16) or several
(``accelerate launch -m reranker.cli distill CONFIG``, or torchrun, gives DDP).

Every ``eval_every`` steps the student re-ranks the dev groups: ``teacher_kl`` (the listwise KL
from the teacher's distribution over each group to the student's, at the run's temperature:
the training objective on held-out groups, lower is better), ``teacher_ndcg@10`` (ranx, gains
from the teacher's labels) and, with ``dev_qrels``, nDCG@10 against human judgements. Model
selection reads ``teacher_kl``: on small groups of easy synthetic queries ``teacher_ndcg@10``
sits near 1.0 and cannot tell students apart. The best checkpoint is
kept (the untrained starting point is the first candidate), training stops early after ``patience`` evaluations without improvement, and a
``checkpoint/`` folder (weights, optimiser, scheduler, RNG states, step) lets a crashed run
resume where it stopped. The result is ``OUTPUT/model``: a student folder that
:func:`student.models.load_student` opens, with a model card (``README.md``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reranker.config import load_config_file, validation_problems
from reranker.errors import RerankerError
from reranker.io.files import sha256

log = logging.getLogger(__name__)

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


def _check_losses(cfg: DistillConfig) -> None:
    from .losses import LOSSES

    unknown = [name for name in cfg.losses if name not in LOSSES]
    if unknown:
        raise RerankerError(f"unknown loss {', '.join(unknown)}; choose from: {', '.join(LOSSES)}")


def _sample_group(group, size: int, rng: random.Random):
    """The positive (if any) first, then ``size - 1`` (or fewer) other candidates."""
    cands = list(group.candidates)
    pos = [c for c in cands if c.doc_id == group.positive]
    rest = [c for c in cands if c.doc_id != group.positive]
    picked = pos[:1] + rng.sample(rest, min(len(rest), size - len(pos[:1])))
    return picked


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


def build_student(cfg: DistillConfig):
    from .models import CrossEncoderStudent, T5Student

    cls = T5Student if cfg.student == "t5" else CrossEncoderStudent
    extra = {"max_length": cfg.max_length, "query_max_length": cfg.query_max_length}
    if cfg.student == "cross-encoder":
        extra["head"] = cfg.head or "hybrid"
        if extra["head"] == "hybrid":
            extra["lexical_language"] = cfg.lexical_language
    elif cfg.head not in (None, "classifier"):
        raise RerankerError(f"head {cfg.head!r} is for cross-encoder students; a T5 student scores with logit(true) - logit(false)")
    if cfg.model_config_overrides is not None:
        from transformers import AutoTokenizer

        if not cfg.tokenizer:
            raise RerankerError("a random init (model_config_overrides) needs a tokenizer")
        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        return cls.from_config(dict(cfg.model_config_overrides), tok, **extra)
    return cls.from_pretrained(cfg.base_model, **extra)


def parameter_groups(student, cfg: DistillConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; the student's new head at ``head_lr``."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "hybrid.")
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in student.named_parameters():
        head = any(part in name for part in student.head_parts)
        groups.setdefault((head, any(k in name for k in no_decay)), []).append(param)
    return [
        {"params": params, "weight_decay": 0.0 if decay_free else cfg.weight_decay, "lr": (cfg.head_lr or cfg.lr) if head else cfg.lr}
        for (head, decay_free), params in sorted(groups.items())
    ]


def pad_groups(candidate_lists) -> tuple[Any, Any, Any]:
    """``(mask, teacher_scores, teacher_labels)``, each ``[groups, widest group]``, for lists of candidates
    (flattened in order, the student's scores fill ``scores[mask]``)."""
    import torch

    width = max((len(c) for c in candidate_lists), default=1)
    mask = torch.zeros(len(candidate_lists), width, dtype=torch.bool)
    scores, labels = torch.zeros(len(candidate_lists), width), torch.zeros(len(candidate_lists), width)
    for i, cands in enumerate(candidate_lists):
        for j, c in enumerate(cands):
            mask[i, j], scores[i, j], labels[i, j] = True, c.score, c.label
    return mask, scores, labels


def selection_key(metrics: dict[str, float] | None) -> float | None:
    """What model selection maximises: minus the dev listwise KL (None when ``metrics`` lack it)."""
    kl = (metrics or {}).get("teacher_kl")
    return None if kl is None else -kl


def evaluate_groups(student, groups, batch_size: int = 32, qrels=None, temperature: float = 1.0) -> dict[str, float]:
    """Re-rank each dev group with ``student``: listwise KL to the teacher's scores at ``temperature``,
    nDCG@10 against the teacher's labels (and against human qrels when given)."""
    import numpy as np
    import torch

    from reranker.evaluation import evaluate
    from reranker.records import Qrels
    from reranker.rerank import score_pairs

    from .losses import listwise_kl

    keyed = [(g.query_id, c.doc_id, g.query, c.text) for g in groups for c in g.candidates]
    run = score_pairs(student, keyed, name="student", batch_size=batch_size)
    scores = [run[qid][did] for qid, did, _, _ in keyed]
    teacher_qrels = Qrels({g.query_id: {c.doc_id: int(round(10 * c.label)) for c in g.candidates} for g in groups}, name="teacher")
    mask, teacher_scores, _ = pad_groups([g.candidates for g in groups])
    s = torch.zeros(mask.shape)
    s[mask] = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    out = {"teacher_kl": float(listwise_kl(s, teacher_scores, temperature=temperature, mask=mask)),
           "teacher_ndcg@10": evaluate(teacher_qrels, run, ["ndcg@10"])["student"]["ndcg@10"]}
    if qrels is not None:
        judged = Qrels({q: d for q, d in qrels.items() if q in run}, name="human")
        if len(judged):
            out["ndcg@10"] = evaluate(judged, run.restrict(judged), ["ndcg@10"])["student"]["ndcg@10"]
    return out


def distill(cfg: DistillConfig, progress: bool = True, on_evaluate: Callable[[int, Any], None] | None = None) -> dict[str, Any]:
    """Run the distillation ``cfg`` describes; returns a summary (also in OUTPUT/summary.json).

    ``on_evaluate(step, student)``, when given, is called with the unwrapped student (in eval mode)
    before the first step of a new run and at every evaluation point (each ``eval_every`` steps and
    the last step), with or without a dev set: benchmarks measure the student along training with it.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from reranker.io.groups import read_groups

    from .losses import combined_loss

    _check_losses(cfg)
    train_groups = read_groups(cfg.train)
    if not train_groups:
        raise RerankerError(f"{cfg.train}: no labelled groups")
    if any(len(g.candidates) < 2 for g in train_groups):
        raise RerankerError(f"{cfg.train}: every group needs at least 2 candidates for the listwise losses")
    dev_groups = read_groups(cfg.dev) if cfg.dev else []
    for path, groups in ((cfg.train, train_groups), (cfg.dev, dev_groups)):
        bare = next((g.query_id for g in groups if any(c.text is None for c in g.candidates)), None)
        if bare is not None:
            raise RerankerError(f"{path}: query {bare!r} has candidates without text; export the groups with their texts")
    dev_qrels = None
    if cfg.dev_qrels:
        from reranker.io.trec import read_qrels

        dev_qrels = read_qrels(cfg.dev_qrels)
    set_seed(cfg.seed)
    use_bf16 = resolve_bf16(cfg.bf16)
    from accelerate.state import AcceleratorState

    # one process may run several distillations (the pipeline, tests) with different precisions: accelerate
    # keeps the first one's mixed precision in a process-wide singleton unless it is reset (the
    # process/device state is kept, so DDP is untouched)
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision="bf16" if use_bf16 else "no", gradient_accumulation_steps=cfg.grad_accum)
    student = build_student(cfg).to(acc.device)  # the head is fitted where the student trains (a GPU when there is one)
    out = Path(cfg.output_dir)
    ckpt = out / "checkpoint"
    head_init = None
    if getattr(student, "hybrid", None) is not None and student.head_is_new and not (cfg.resume and (ckpt / "trainer_state.json").is_file()):
        from .heads import fit_hybrid_head

        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            head_init = fit_hybrid_head(student, train_groups, temperature=cfg.temperature)
    optimizer = torch.optim.AdamW(parameter_groups(student, cfg), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_groups) / (cfg.batch_queries * cfg.grad_accum))
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_pairs is not None:
        total = min(total, max(1, cfg.max_pairs // (cfg.batch_queries * cfg.group_size * cfg.grad_accum)))
    total = cfg.max_steps or total
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    state = {"step": 0, "best_step": 0, "bad_evals": 0, "history": [], "head_init": head_init, "bf16": use_bf16}
    if cfg.resume and (ckpt / "trainer_state.json").is_file():
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        log.info("resumed from %s at step %d", ckpt, state["step"])
    elif not cfg.resume and ckpt.exists():
        raise RerankerError(f"{ckpt} exists; resume it (resume: true) or choose another output_dir")
    rng = random.Random(cfg.seed + state["step"])
    if "sampler_state" in state:  # the candidate sampler goes on where it stopped: a resumed run equals an uninterrupted one
        version, internal, gauss = state.pop("sampler_state")
        rng.setstate((version, tuple(internal), gauss))
    unwrapped = acc.unwrap_model(model)
    start = time.perf_counter()

    def batches():
        epoch = 0
        while True:
            order = list(range(len(train_groups)))
            random.Random(cfg.seed + epoch).shuffle(order)
            for i in range(0, len(order), cfg.batch_queries):
                yield [train_groups[j] for j in order[i : i + cfg.batch_queries]]
            epoch += 1

    stream = batches()
    for _ in range(state["step"] * cfg.grad_accum):  # skip what a resumed run already saw
        next(stream)

    def observe() -> None:
        if on_evaluate is not None:
            model.eval()
            on_evaluate(state["step"], unwrapped)
            model.train()

    if state["step"] == 0:
        observe()
    if dev_groups and state["step"] == 0:  # the untrained student's agreement: what training must beat
        model.eval()
        state["initial_metrics"] = evaluate_groups(unwrapped, dev_groups, qrels=dev_qrels, temperature=cfg.temperature)
        model.train()
        log.info("before training: %s", state["initial_metrics"])
        # the starting point is a candidate too: a fitted hybrid head can already agree with the teacher better
        # than a few hundred steps do, and model selection must never return a worse student than it began with
        state.update(best_step=0, best_metrics=state["initial_metrics"])
        if acc.is_main_process:
            unwrapped.save_pretrained(out / "model")
    bar = tqdm(total=total, initial=state["step"], desc="distilling", unit="step", disable=not progress or not acc.is_main_process)
    end = min(total, cfg.stop_after or total)  # stop_after splits one run over several invocations (time-boxed jobs)
    while state["step"] < end:
        for _ in range(cfg.grad_accum):
            groups = next(stream)
            picked = [_sample_group(g, cfg.group_size, rng) for g in groups]
            mask, t_scores, t_labels = pad_groups(picked)
            queries = [g.query for g, cands in zip(groups, picked) for _ in cands]
            docs = [c.text for cands in picked for c in cands]
            with acc.accumulate(model):
                enc = {k: v.to(acc.device) for k, v in unwrapped.encode(queries, docs).items()}
                flat = model(**enc).float()
                s = torch.full(mask.shape, -1e4, device=acc.device)
                s[mask.to(acc.device)] = flat
                loss = combined_loss(cfg.losses, s, teacher_scores=t_scores.to(acc.device), teacher_labels=t_labels.to(acc.device),
                                     mask=mask.to(acc.device), temperature=cfg.temperature)
                acc.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        state["step"] += 1
        state["history"].append({"step": state["step"], "loss": float(loss.detach())})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == end:  # checkpoint; evaluate on the schedule's points only
            if state["step"] % cfg.eval_every == 0 or state["step"] == total:
                observe()
            if dev_groups and (state["step"] % cfg.eval_every == 0 or state["step"] == total):
                model.eval()
                metrics = evaluate_groups(unwrapped, dev_groups, qrels=dev_qrels, temperature=cfg.temperature)
                model.train()
                state["history"][-1].update(metrics)
                # the key comes from the kept model's metrics (a checkpoint of a version that selected on another
                # metric has none: the next evaluation decides)
                best = selection_key(state.get("best_metrics"))
                log.info("step %d: %s", state["step"], metrics)
                if best is None or selection_key(metrics) > best:
                    state.update(best_step=state["step"], bad_evals=0, best_metrics=metrics)
                    if acc.is_main_process:
                        unwrapped.save_pretrained(out / "model")
                else:
                    state["bad_evals"] += 1
            if acc.is_main_process:
                acc.save_state(str(ckpt))
                state["seconds_before"] = state.get("seconds_before", 0.0) + time.perf_counter() - start  # across resumes
                start = time.perf_counter()
                (ckpt / "trainer_state.json").write_text(json.dumps({**state, "sampler_state": rng.getstate()}))
            if state["bad_evals"] >= cfg.patience:
                log.info("early stop at step %d: no improvement for %d evaluations", state["step"], cfg.patience)
                break
    bar.close()
    if acc.is_main_process:
        if not dev_groups or selection_key(state.get("best_metrics")) is None:  # no dev set, or stopped (stop_after) before its first evaluation
            unwrapped.save_pretrained(out / "model")
        summary = {
            "steps": state["step"], "total_steps": total, "best_step": state["best_step"], "best_metrics": state.get("best_metrics"),
            "initial_metrics": state.get("initial_metrics"), "head_init": state.get("head_init"), "bf16": state.get("bf16"),
            "seconds": state.get("seconds_before", 0.0) + time.perf_counter() - start, "train_groups": len(train_groups), "train_sha256": sha256(Path(cfg.train)),
            "config": json.loads(cfg.model_dump_json()), "history": state["history"],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_model_card(out / "model", cfg, summary)
        return summary
    return {}


def write_model_card(folder: Path, cfg: DistillConfig, summary: dict[str, Any]) -> None:
    metrics = summary.get("best_metrics") or {}
    lines = [
        "---", "library_name: transformers", "tags: [reranker, distillation, " + cfg.student + "]", "---", "",
        f"# {cfg.student} re-ranker distilled from {cfg.teacher or 'a teacher'}", "",
        f"- Started from: `{cfg.base_model if cfg.model_config_overrides is None else 'random init'}`",
        f"- Teacher: {cfg.teacher or '(not recorded)'}",
        f"- Training data: `{cfg.train}` ({summary['train_groups']} query groups, sha256 {summary['train_sha256'][:16]}...)",
        f"- Losses: {', '.join(f'{k} x {v}' for k, v in cfg.losses.items())}; distillation temperature {cfg.temperature}",
        f"- Steps: {summary['steps']} of {summary.get('total_steps', summary['steps'])} (best at {summary['best_step']}), {summary['seconds']:.0f} s",
        f"- Dev metrics at the best step: {json.dumps(metrics) if metrics else 'no dev set'}",
        f"- Dev metrics before training: {json.dumps(summary.get('initial_metrics')) if summary.get('initial_metrics') else 'no dev set'}", "",
        "Load it with `student.models.load_student(PATH)`; `score(pairs)` and `rank(query, docs)` re-rank.",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("\n".join(lines) + "\n")
