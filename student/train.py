"""Distillation: train a student on the teacher's labelled groups.

Each step takes ``batch_queries`` query groups; from each group it keeps ``group_size``
candidates (the positive first when there is one, then candidates sampled with the seed),
scores them with the student, and applies the configured mix of losses
(:mod:`student.losses`) against the teacher's scores and labels. Training runs on
`accelerate`, so the same code runs on a CPU, one GPU (bf16, never fp16) or several
(``accelerate launch -m reranker.app.cli distill CONFIG``, or torchrun, gives DDP).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reranker.errors import RerankerError
from reranker.io.files import sha256

from .distill_config import DistillConfig, check_losses, load_config, resolve_bf16

__all__ = ["DistillConfig", "distill", "evaluate_groups", "load_config"]

log = logging.getLogger(__name__)

def _sample_group(group, size: int, rng: random.Random):
    """The positive (if any) first, then ``size - 1`` (or fewer) other candidates."""
    cands = list(group.candidates)
    pos = [c for c in cands if c.doc_id == group.positive]
    rest = [c for c in cands if c.doc_id != group.positive]
    picked = pos[:1] + rng.sample(rest, min(len(rest), size - len(pos[:1])))
    return picked


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


@dataclass
class TrainingData:
    """The labelled groups one distillation reads: train, dev (may be empty) and the dev set's human judgements."""

    train: list
    dev: list
    dev_qrels: Any = None


def read_training_data(cfg: DistillConfig) -> TrainingData:
    """``cfg``'s groups, checked before any model loads: at least one train group, two candidates a group, texts."""
    from reranker.io.groups import read_groups

    train = read_groups(cfg.train)
    if not train:
        raise RerankerError(f"{cfg.train}: no labelled groups")
    if any(len(g.candidates) < 2 for g in train):
        raise RerankerError(f"{cfg.train}: every group needs at least 2 candidates for the listwise losses")
    dev = read_groups(cfg.dev) if cfg.dev else []
    for path, groups in ((cfg.train, train), (cfg.dev, dev)):
        bare = next((g.query_id for g in groups if any(c.text is None for c in g.candidates)), None)
        if bare is not None:
            raise RerankerError(f"{path}: query {bare!r} has candidates without text; export the groups with their texts")
    qrels = None
    if cfg.dev_qrels:
        from reranker.io.trec import read_qrels

        qrels = read_qrels(cfg.dev_qrels)
    return TrainingData(train, dev, qrels)


def planned_steps(cfg: DistillConfig, n_groups: int) -> int:
    """Optimiser steps of the whole run: ``epochs`` over the groups, capped by ``max_pairs``; ``max_steps`` wins."""
    steps_per_epoch = math.ceil(n_groups / (cfg.batch_queries * cfg.grad_accum))
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_pairs is not None:
        total = min(total, max(1, cfg.max_pairs // (cfg.batch_queries * cfg.group_size * cfg.grad_accum)))
    return cfg.max_steps or total


def group_batches(groups: list, cfg: DistillConfig, skip: int = 0) -> Iterator[list]:
    """Batches of ``batch_queries`` groups, each epoch in its own seeded order, without end; the first ``skip``
    batches (what a resumed run already saw) are passed over."""
    def batches():
        epoch = 0
        while True:
            order = list(range(len(groups)))
            random.Random(cfg.seed + epoch).shuffle(order)
            for i in range(0, len(order), cfg.batch_queries):
                yield [groups[j] for j in order[i : i + cfg.batch_queries]]
            epoch += 1

    stream = batches()
    for _ in range(skip):
        next(stream)
    return stream


@dataclass
class _Run:
    """One distillation while it runs: the prepared model, optimiser and schedule, and the state a checkpoint keeps."""

    cfg: DistillConfig
    data: TrainingData
    acc: Any
    model: Any
    unwrapped: Any
    optimizer: Any
    scheduler: Any
    total: int
    state: dict[str, Any]
    rng: random.Random
    on_evaluate: Callable[[int, Any], None] | None
    start: float = field(default_factory=time.perf_counter)

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def ckpt(self) -> Path:
        return self.out / "checkpoint"

    def observe(self) -> None:
        """Hand the student (eval mode) to ``on_evaluate``: benchmarks measure it along training."""
        if self.on_evaluate is not None:
            self.model.eval()
            self.on_evaluate(self.state["step"], self.unwrapped)
            self.model.train()

    def dev_metrics(self) -> dict[str, float]:
        self.model.eval()
        metrics = evaluate_groups(self.unwrapped, self.data.dev, qrels=self.data.dev_qrels, temperature=self.cfg.temperature)
        self.model.train()
        return metrics

    def keep(self) -> None:
        """Save the student as OUTPUT/model (the main process only)."""
        if self.acc.is_main_process:
            self.unwrapped.save_pretrained(self.out / "model")

    def measure_start(self) -> None:
        """The untrained student's agreement: what training must beat. The starting point is a candidate too: a fitted
        hybrid head can already agree with the teacher better than a few hundred steps do, and model selection must
        never return a worse student than it began with."""
        self.state["initial_metrics"] = self.dev_metrics()
        log.info("before training: %s", self.state["initial_metrics"])
        self.state.update(best_step=0, best_metrics=self.state["initial_metrics"])
        self.keep()

    def train_step(self, stream: Iterator[list]) -> float:
        """One optimiser step (``grad_accum`` batches): sample each group, score, apply the losses; the last loss."""
        import torch

        from .losses import combined_loss

        acc, cfg = self.acc, self.cfg
        for _ in range(cfg.grad_accum):
            groups = next(stream)
            picked = [_sample_group(g, cfg.group_size, self.rng) for g in groups]
            mask, t_scores, t_labels = pad_groups(picked)
            queries = [g.query for g, cands in zip(groups, picked) for _ in cands]
            docs = [c.text for cands in picked for c in cands]
            with acc.accumulate(self.model):
                enc = {k: v.to(acc.device) for k, v in self.unwrapped.encode(queries, docs).items()}
                flat = self.model(**enc).float()
                s = torch.full(mask.shape, -1e4, device=acc.device)
                s[mask.to(acc.device)] = flat
                loss = combined_loss(cfg.losses, s, teacher_scores=t_scores.to(acc.device), teacher_labels=t_labels.to(acc.device),
                                     mask=mask.to(acc.device), temperature=cfg.temperature)
                acc.backward(loss)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
        self.state["step"] += 1
        value = float(loss.detach())
        seconds = self.state.get("seconds_before", 0.0) + time.perf_counter() - self.start  # training time so far, across resumes
        self.state["history"].append({"step": self.state["step"], "loss": value, "seconds": round(seconds, 2)})
        return value

    def select(self) -> None:
        """Evaluate on the dev groups; keep the student when ``teacher_kl`` improved, else count a bad evaluation. The
        key comes from the kept model's metrics (a checkpoint of a version that selected on another metric has none:
        the next evaluation decides)."""
        metrics = self.dev_metrics()
        self.state["history"][-1].update(metrics)
        best = selection_key(self.state.get("best_metrics"))
        log.info("step %d: %s", self.state["step"], metrics)
        if best is None or selection_key(metrics) > best:
            self.state.update(best_step=self.state["step"], bad_evals=0, best_metrics=metrics)
            self.keep()
        else:
            self.state["bad_evals"] += 1

    def checkpoint(self) -> None:
        """Weights, optimiser, scheduler, RNG states and the trainer state (seconds summed across resumes)."""
        if self.acc.is_main_process:
            self.acc.save_state(str(self.ckpt))
            self.state["seconds_before"] = self.state.get("seconds_before", 0.0) + time.perf_counter() - self.start
            self.start = time.perf_counter()
            (self.ckpt / "trainer_state.json").write_text(json.dumps({**self.state, "sampler_state": self.rng.getstate()}))

    def finish(self) -> dict[str, Any]:
        """The summary (OUTPUT/summary.json) and the model card; the last weights when nothing was selected."""
        if not self.acc.is_main_process:
            return {}
        if not self.data.dev or selection_key(self.state.get("best_metrics")) is None:  # no dev set, or stopped early (stop_after)
            self.keep()
        st = self.state
        summary = {
            "steps": st["step"], "total_steps": self.total, "best_step": st["best_step"], "best_metrics": st.get("best_metrics"),
            "initial_metrics": st.get("initial_metrics"), "head_init": st.get("head_init"), "bf16": st.get("bf16"),
            "seconds": st.get("seconds_before", 0.0) + time.perf_counter() - self.start, "train_groups": len(self.data.train),
            "train_sha256": sha256(Path(self.cfg.train)), "config": json.loads(self.cfg.model_dump_json()), "history": st["history"],
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_model_card(self.out / "model", self.cfg, summary)
        return summary


def _start_run(cfg: DistillConfig, data: TrainingData, on_evaluate) -> _Run:
    """Seed, accelerator, student (its hybrid head fitted on the train groups when new), optimiser and schedule, and the
    state of a checkpoint to resume (its sampler goes on where it stopped: a resumed run equals an uninterrupted one)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    set_seed(cfg.seed)
    use_bf16 = resolve_bf16(cfg.bf16)
    # one process may run several distillations (the pipeline, tests) with different precisions: accelerate keeps the
    # first one's mixed precision in a process-wide singleton unless it is reset (process/device state kept: DDP untouched)
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision="bf16" if use_bf16 else "no", gradient_accumulation_steps=cfg.grad_accum)
    student = build_student(cfg).to(acc.device)  # the head is fitted where the student trains (a GPU when there is one)
    ckpt = Path(cfg.output_dir) / "checkpoint"
    resuming = cfg.resume and (ckpt / "trainer_state.json").is_file()
    head_init = None
    if getattr(student, "hybrid", None) is not None and student.head_is_new and not resuming:
        from .heads import fit_hybrid_head

        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            head_init = fit_hybrid_head(student, data.train, temperature=cfg.temperature)
    optimizer = torch.optim.AdamW(parameter_groups(student, cfg), lr=cfg.lr)
    total = planned_steps(cfg, len(data.train))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    state = {"step": 0, "best_step": 0, "bad_evals": 0, "history": [], "head_init": head_init, "bf16": use_bf16}
    if resuming:
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        log.info("resumed from %s at step %d", ckpt, state["step"])
    elif not cfg.resume and ckpt.exists():
        raise RerankerError(f"{ckpt} exists; resume it (resume: true) or choose another output_dir")
    rng = random.Random(cfg.seed + state["step"])
    if "sampler_state" in state:
        version, internal, gauss = state.pop("sampler_state")
        rng.setstate((version, tuple(internal), gauss))
    return _Run(cfg, data, acc, model, acc.unwrap_model(model), optimizer, scheduler, total, state, rng, on_evaluate)


def distill(cfg: DistillConfig, progress: bool = True, on_evaluate: Callable[[int, Any], None] | None = None) -> dict[str, Any]:
    """Run the distillation ``cfg`` describes; returns a summary (also in OUTPUT/summary.json).

    ``on_evaluate(step, student)``, when given, is called with the unwrapped student (in eval mode)
    before the first step of a new run and at every evaluation point (each ``eval_every`` steps and
    the last step), with or without a dev set: benchmarks measure the student along training with it.
    """
    from tqdm.auto import tqdm

    check_losses(cfg)
    data = read_training_data(cfg)
    run = _start_run(cfg, data, on_evaluate)
    stream = group_batches(data.train, cfg, skip=run.state["step"] * cfg.grad_accum)
    if run.state["step"] == 0:
        run.observe()
        if data.dev:
            run.measure_start()
    bar = tqdm(total=run.total, initial=run.state["step"], desc="distilling", unit="step", disable=not progress or not run.acc.is_main_process)
    end = min(run.total, cfg.stop_after or run.total)  # stop_after splits one run over several invocations (time-boxed jobs)
    while run.state["step"] < end:
        loss = run.train_step(stream)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        step = run.state["step"]
        if step % cfg.eval_every == 0 or step == end:  # checkpoint; evaluate on the schedule's points only
            if step % cfg.eval_every == 0 or step == run.total:
                run.observe()
                if data.dev:
                    run.select()
            run.checkpoint()
            if run.state["bad_evals"] >= cfg.patience:
                log.info("early stop at step %d: no improvement for %d evaluations", step, cfg.patience)
                break
    bar.close()
    return run.finish()


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
