"""`reranker export`: a trained student to a self-describing ONNX folder, checked against PyTorch.

1. **Export**: the student's own ``forward`` (T5: encoder + one decoder step,
   logit(true) - logit(false); cross-encoder: the head's logit), traced by the legacy exporter
   (``torch.onnx.export(..., dynamo=False)``), opset 17, dynamic batch and sequence axes, one
   graph from token ids to an fp32 score. Attention runs in its eager implementation for export.
2. **Optimise**: ONNX Runtime's transformer optimiser (``model_type`` bert or t5); if it fails or
   its graph misses the parity tolerance, the plain graph is kept and the manifest says why.
3. **int8**, one of three methods (``int8_method``):
   ``dynamic`` (default): ``quantize_dynamic``, int8 weights per output channel and activations
   quantised per batch and tensor at run time: the fastest on CPUs (VNNI/AVX2 integer kernels),
   but per-tensor activation scales move scores by about a tenth of their spread;
   ``weight-only``: int8 weights in blocks of 128 (``MatMulNBits``, 8 bits, symmetric) and int8
   embeddings, activations in fp32: scores within a few hundredths and a quarter of the size,
   at about fp32's speed (for memory, not for speed). The optimiser runs with multi-head
   attention fusion so that the Q/K/V projections stay MatMuls that can be quantised;
   ``mixed``: dynamic int8 with the nodes it hurts most (lowest per-node SQNR on calibration
   pairs, :mod:`student.quantize`) kept in fp32, as few as bring the nDCG@10 drop on the parity
   sample within ``max_ndcg_drop`` (2, 4, 8, then 16 nodes).
4. **fp16** (cross-encoders; T5 overflows in fp16): weights and activations in fp16 for GPUs;
   inputs, output and the classification head stay fp32, so the score is computed in fp32.
5. **auto** (``--precision auto``): dynamic and weight-only int8 are built (and mixed, when dynamic
   misses the budget) and, with fp32, timed and ranked on the parity sample; the fastest within
   ``max_ndcg_drop`` nDCG@10 of fp32 becomes the CPU default
   (:mod:`student.precision`; the manifest's ``choice`` says which and why).
6. **Parity**: every precision is scored by the ONNX Runtime scorer (:mod:`reranker.onnx_runtime`,
   CPU) on a sample of real pairs and compared with the PyTorch student; beyond the tolerance
   written in the manifest the export fails with the figures and leaves nothing behind.

The folder is written next to ``out_dir`` and moved into place only when every check passed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from reranker.errors import MissingDependencyError, RerankerError
from reranker.formatting import template_path
from reranker.io.files import sha256
from reranker.onnx_manifest import (
    DEFAULT_TOLERANCES,
    MODEL_FILES,
    PRECISIONS,
    ModelFile,
    OnnxManifest,
    PrecisionChoice,
    TokenizerInfo,
    Tolerance,
)
from reranker.scoring import ONNX_MANIFEST

from .graphs import (
    ENCODER_INPUTS,
    GRAPH_INPUTS,
    SCORE_GRAPH_FILE,
    WEIGHT_ONLY_BLOCK,
    export_score_graph,
    optimize_graph,
    optimizer_type,
    quantize_weight_only_graph,
    separated_manifest,
    torch_export,
)
from .parity import ParitySample, compare, load_parity_sample
from .precision import DEFAULT_MAX_NDCG_DROP, Measured, choose, measure, ndcg_drop
from .quantize import LADDER, quantize_dynamic_int8, search_mixed, to_fp16

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: the graph inputs in the order of the students' forward() (token ids and masks, then the hybrid head's term ids)
INT8_METHODS = ("dynamic", "weight-only", "mixed")
LAYOUTS = ("auto", "pair", "separated")
#: the separated layout's encoder graph: one text's token ids in, its pooled vector out; the score graph's file
#: the precision name that measures the candidate graphs and keeps the fastest within the nDCG budget (student.precision)
AUTO = "auto"
#: a part of the student whose removal changes nDCG@10 on the parity pairs by at most this is left out of the graph
DEFAULT_MAX_DROP_CHANGE = 0.001
#: parity pairs also scored one at a time, to measure how far a score moves with the rest of its batch (the stated
#: bound is twice the largest move: the default sample of 128 is probed whole, since a 32-pair probe missed the
#: largest moves of dynamic int8 on an AVX512-VNNI CPU)
BATCH_PROBE_PAIRS = 128


def parse_precisions(values: Sequence[str]) -> list[str]:
    """``["fp32", "int8"]``, ``["all"]``, ``["fp32,int8"]``, ``["auto"]`` -> precisions in a fixed order (fp32 always
    first; ``auto`` last: measure the int8 methods and keep the fastest graph within the nDCG budget)."""
    names = {p.strip().lower() for v in values for p in v.split(",") if p.strip()}
    if "all" in names:
        names |= set(PRECISIONS)
    unknown = sorted(names - set(PRECISIONS) - {"all", AUTO})
    if unknown:
        raise RerankerError(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}, all or auto")
    return [p for p in PRECISIONS if p in names or p == "fp32"] + ([AUTO] if AUTO in names else [])


def export_student(model_dir: str | Path, out_dir: str | Path, precisions: Sequence[str] = ("fp32", "int8"), *,
                   optimize: bool = True, opset: int = DEFAULT_OPSET, parity: ParitySample | None = None,
                   parity_sample: int = 128, tolerances: dict[str, Tolerance] | None = None,
                   triton_dir: str | Path | None = None, int8_method: str = "dynamic",
                   max_ndcg_drop: float = DEFAULT_MAX_NDCG_DROP, threads: int | None = None, timing_passes: int = 2,
                   max_drop_change: float = DEFAULT_MAX_DROP_CHANGE, layout: str = "auto") -> OnnxManifest:
    """Export the student in ``model_dir`` to ``out_dir``; returns the manifest written there.

    ``precisions`` with ``auto``: both int8 methods are built and, with fp32, timed and ranked on the parity
    sample (``threads``: ONNX Runtime's intra-op threads; ``timing_passes`` timed passes after the parity check's, best
    kept); the fastest graph within ``max_ndcg_drop``
    nDCG@10 of fp32 is the CPU default (the manifest's ``choice``), an int8 one is kept as the int8 model. Parts of
    the student that do not count are left out of the graph first (:func:`drop_idle_parts`, the manifest's ``dropped``).

    ``layout``: ``"auto"`` exports a student that encodes query and passage apart (a hybrid student without its joint
    pass) as two graphs, the encoder (text -> vector; a passage's vector is computed once and cached by the scorer) and
    the score of vector pairs; ``"pair"`` keeps one graph from a pair's token ids to its score (Triton serves that one).
    """
    from .models import load_student

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("reranker export", "cpu", exc) from exc
    precisions = parse_precisions(precisions)
    if layout not in LAYOUTS:
        raise RerankerError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if int8_method not in INT8_METHODS:
        raise RerankerError(f"unknown int8 method {int8_method!r}; choose one of {', '.join(INT8_METHODS)}")
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / ONNX_MANIFEST).is_file():
        raise RerankerError(f"{out_dir}: exists and is not an earlier export; choose an empty or new folder")
    student = load_student(model_dir).eval()
    if "fp16" in precisions and student.kind == "t5":
        raise RerankerError("T5 students are not exported in fp16: T5's activations overflow float16 (inf/NaN scores); "
                            "use fp32 (or int8 on CPU)")
    if parity is None and (AUTO in precisions or ("int8" in precisions and int8_method == "mixed")):
        raise RerankerError(
            "--precision auto (and --int8-method mixed) choose a graph by its nDCG@10 against fp32 on your own pairs: give "
            "--parity-data (a JSONL of {query, document} pairs, the labelled groups of `reranker label --export`, or a "
            "data-set spec of your corpus); without it, name the precisions (e.g. --precision fp32,int8)")
    sample = parity or load_parity_sample(None, parity_sample)  # numeric parity only (no judgements)
    log.info("parity sample: %d pairs, %d queries (%s)", len(sample.pairs), sample.num_queries, sample.source)
    dropped = drop_idle_parts(student, sample, max_change=max_drop_change)
    separated = layout != "pair" and getattr(student, "separated", False)
    if layout == "separated" and not separated:
        raise RerankerError("--layout separated needs a hybrid student whose joint pass is left out (its weights are 0 or "
                            "it does not change the ranking); this student needs the pair layout")
    if separated and triton_dir is not None:
        raise RerankerError("a Triton repository serves one graph from a pair's token ids to its score: export with --layout pair")
    reference = student.score(sample.pairs)  # the served student: the graph is checked against it

    work = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        inputs, template = _save_folder(student, work, separated)
        raw = work / "raw.onnx"
        torch_export(student, raw, inputs, opset, separated)
        models: dict[str, ModelFile] = {}
        draft = _manifest(student, inputs, template, opset, models, model_dir)
        draft.dropped = dropped
        if separated:
            separated_manifest(student, draft, export_score_graph(student, work / SCORE_GRAPH_FILE, opset))

        loaded: dict[str, Any] = {}
        scored: dict[str, np.ndarray] = {}

        def check(precision: str, path: Path, optimized: bool, notes: list[str]) -> ModelFile:
            final = work / MODEL_FILES[precision]
            if path != final:
                shutil.move(path, final)
            entry = ModelFile(file=final.name, precision=precision, sha256=sha256(final), bytes=final.stat().st_size,
                              optimized=optimized, notes=notes)
            draft.models[precision] = entry
            draft.save(work)
            from reranker.onnx_runtime import load_onnx

            scorer = load_onnx(work, providers=["cpu"], precision=precision, intra_op_threads=threads, cache_entries=0)
            loaded[precision] = scorer  # warmed up by this pass: --precision auto times it next
            scores = scored[precision] = np.asarray(scorer.score(sample.pairs), np.float64)
            alone = np.array([scorer.score([pair])[0] for pair in sample.pairs[:BATCH_PROBE_PAIRS]])
            entry.parity = compare(reference, scores, sample, tolerances[precision], alone)
            p = entry.parity
            log.info("%s parity: max |diff| %.2e, mean %.2e, top-10 agreement %.3f, batch dependence %.2e (%s)", precision,
                     p.max_abs_diff, p.mean_abs_diff, p.top10_agreement, p.batch_max_abs_diff, "passed" if p.passed else "FAILED")
            return entry

        fp32 = None
        if optimize:
            try:
                optimized = optimize_graph(student, raw, work / "optimized.onnx")
                fp32 = check("fp32", optimized, True, [f"ONNX Runtime transformer optimiser, model_type {optimizer_type(student)}"])
                if not fp32.parity.passed:
                    note = f"optimised graph missed the fp32 tolerance (max |diff| {fp32.parity.max_abs_diff:.2e}); plain graph kept"
                    log.warning(note)
                    fp32 = None
            except Exception as exc:  # noqa: BLE001 (the optimiser raises anything from its pattern matchers)
                note = f"optimiser failed ({type(exc).__name__}: {str(exc)[:200]}); plain graph kept"
                log.warning(note)
            if fp32 is None:
                fp32 = check("fp32", _copy(raw, work / "plain.onnx"), False, [note])
        else:
            fp32 = check("fp32", _copy(raw, work / "plain.onnx"), False, ["optimiser not run (--no-optimize)"])
        _fail_unless(fp32, "fp32")
        models["fp32"] = fp32
        base = work / fp32.file
        if AUTO in precisions:
            draft.choice, chosen = _auto_precision(student, raw, base, fp32.optimized, work, check, loaded, scored, sample, optimize,
                                                   max_ndcg_drop, threads, timing_passes)
            if chosen is not None:
                models["int8"] = chosen
        elif "int8" in precisions and int8_method == "mixed":
            models["int8"] = _fail_unless(search_mixed(base, fp32.optimized, work, check, loaded, scored, sample, max_ndcg_drop, (0, *LADDER)),
                                          "int8")
        elif "int8" in precisions and int8_method == "weight-only":
            quantized, fused = quantize_weight_only_graph(student, raw, work / "int8.tmp.onnx", optimize)
            models["int8"] = _fail_unless(check("int8", quantized, fused, _int8_notes("weight-only")), "int8")
        elif "int8" in precisions:
            models["int8"] = _fail_unless(check("int8", quantize_dynamic_int8(base, work / "int8.tmp.onnx"), fp32.optimized,
                                                _int8_notes("dynamic")), "int8")
        raw.unlink()
        if "fp16" in precisions:
            models["fp16"] = _fail_unless(check("fp16", to_fp16(base, work / "fp16.tmp.onnx"), fp32.optimized,
                                                ["fp16 weights and activations (GPU); inputs, head and score in fp32"]), "fp16")
        draft.models = models
        draft.save(work)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if triton_dir is not None:
        from .triton import write_triton_repository

        write_triton_repository(out_dir, triton_dir)
    log.info("exported %s student %s to %s (%s)", student.kind, model_dir, out_dir, ", ".join(models))
    return draft


def drop_idle_parts(student: Any, sample: ParitySample, max_change: float = DEFAULT_MAX_DROP_CHANGE) -> list[str]:
    """Leave out of the student what does not count, and say what and why (for the manifest).

    A hybrid cross-encoder's joint (classifier) pass costs as much as the rest of the student; it is dropped when its
    output layer is all zero (the recipe's fitted start, and what training at the backbone's rate leaves: the
    teacher ladder, ``benchmarks/results/teacher_ladder.md``), or when scoring without it changes nDCG@10 on the
    parity pairs by at most ``max_change`` either way (against the full student's own ranking, and against the
    sample's judgements where it has them). The export's parity check then holds the graph to the student without it.
    """
    if getattr(student, "hybrid", None) is None or not student.joint:
        return []
    weight = student.joint_weight()
    if weight == 0.0:
        student.drop_joint_pass()
        return ["joint cross-encoder pass: its classifier weights are all 0 (it adds exactly nothing to the score)"]
    full = np.asarray(student.score(sample.pairs), np.float64)
    student.drop_joint_pass()
    _, fidelity, judged = ndcg_drop(np.asarray(student.score(sample.pairs), np.float64), sample, full)
    changes = [abs(fidelity)] + ([] if judged is None else [abs(judged)])
    if max(changes) > max_change:
        student.joint = True
        log.info("joint pass kept: without it nDCG@10 on the parity pairs changes by %.4f (bound %.4f)", max(changes), max_change)
        return []
    judged_text = "" if judged is None else f" and by {-judged:+.4f} on their judgements"
    return [f"joint cross-encoder pass: largest classifier weight {weight:.3g}; without it nDCG@10 on the {len(sample.pairs)} "
            f"parity pairs changes by {-fidelity:+.4f} against the full student's ranking{judged_text} (bound {max_change})"]


def _int8_notes(method: str) -> list[str]:
    if method == "weight-only":
        return [f"weight-only int8: MatMulNBits (8 bits, blocks of {WEIGHT_ONLY_BLOCK}), int8 embeddings, fp32 activations"]
    return [("dynamic quantisation: int8 weights per output channel, activations quantised per batch (CPU); "
             "the score head (from the last MatMul to the output) stays fp32")]


def _auto_precision(student: Any, raw: Path, base: Path, base_fused: bool, work: Path, check, loaded: dict, scored: dict,
                    sample: ParitySample, optimize: bool, max_ndcg_drop: float, threads: int | None, passes: int) -> tuple[PrecisionChoice, ModelFile | None]:
    """Build both int8 graphs, measure them and fp32 on ``sample`` (:mod:`student.precision`); returns the choice
    and the int8 entry to keep (moved to the int8 file name), or ``None`` when fp32 won."""
    timed = [(Measured("fp32", "fp32", None, scored["fp32"], 0.0, base.stat().st_size), loaded["fp32"])]
    built: dict[str, tuple[ModelFile, Path]] = {}
    excluded = []
    methods = ["dynamic", "weight-only"]
    for method in methods:
        name = f"int8 ({method})"
        if method == "weight-only":
            path, fused = quantize_weight_only_graph(student, raw, work / "int8.tmp.onnx", optimize)
            entry = check("int8", path, fused, _int8_notes(method))
        elif method == "mixed":
            entry = search_mixed(base, base_fused, work, check, loaded, scored, sample, max_ndcg_drop, LADDER)
        else:
            entry = check("int8", quantize_dynamic_int8(base, work / "int8.tmp.onnx"), base_fused, _int8_notes(method))
        if entry.parity.passed:
            timed.append((Measured(name, "int8", method, scored["int8"], 0.0, entry.bytes), loaded["int8"]))
            if method == "dynamic" and ndcg_drop(scored["int8"], sample, scored["fp32"])[0] > max_ndcg_drop:
                methods.append("mixed")  # the most sensitive nodes in fp32, only where plain dynamic misses the budget
        else:
            excluded.append(f"{name} (top-10 agreement with PyTorch {entry.parity.top10_agreement:.3f}, "
                            f"below the int8 parity tolerance {entry.parity.tolerance.min_top10_agreement:g})")
            log.warning("%s missed the int8 parity tolerance; not a candidate", name)
        loaded.pop("int8", None)  # kept in `timed` (its session holds the graph in memory) for the timing rounds
        keep = work / f".candidate-int8-{method}.onnx"
        shutil.move(work / MODEL_FILES["int8"], keep)
        built[name] = (entry, keep)
    choice = choose(measure(timed, sample, passes), sample, max_ndcg_drop, threads, excluded)
    chosen = None
    for name, (entry, path) in built.items():
        if name == choice.candidate:
            shutil.move(path, work / MODEL_FILES["int8"])
            entry.notes.append(f"chosen by --precision auto: {choice.reason}")
            chosen = entry
        else:
            path.unlink()
    return choice, chosen


def _fail_unless(entry: ModelFile, precision: str) -> ModelFile:
    p = entry.parity
    if not p.passed:
        bound = "unbounded" if p.tolerance.max_abs_diff is None else f"<= {p.tolerance.max_abs_diff:g}"
        batch = "" if p.batch_max_abs_diff is None or p.tolerance.max_batch_diff is None else (
            f", scores alone vs batched differ by {p.batch_max_abs_diff:.3g} (tolerance <= {p.tolerance.max_batch_diff:g})")
        raise RerankerError(
            f"ONNX export failed the {precision} parity check on {p.pairs} pairs ({p.queries} queries, {p.sample}): "
            f"max |score diff| {p.max_abs_diff:.3g} (tolerance {bound}), top-10 agreement {p.top10_agreement:.3f} "
            f"(tolerance >= {p.tolerance.min_top10_agreement:g}){batch}; nothing was written"
        )
    return entry


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _save_folder(student: Any, folder: Path, separated: bool = False) -> tuple[list[str], str | None]:
    """Tokenizer, student config and template into ``folder``; returns the graph's input names and the template file."""
    student.tokenizer.save_pretrained(folder)
    config = student.config
    if student.kind == "t5":
        path = template_path(config.template)
        shutil.copyfile(path, folder / path.name)
        config = dataclasses.replace(config, template=path.name)
    config.save(folder)
    names = list(student.encode(["a query"], ["a document"]))
    template = config.template if student.kind == "t5" else None
    return (list(ENCODER_INPUTS) if separated else [n for n in GRAPH_INPUTS if n in names]), template


def _manifest(student: Any, inputs: list[str], template: str | None, opset: int, models: dict, source: str | Path) -> OnnxManifest:
    cfg, tok = student.config, student.tokenizer
    versions = {}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "enterprise-reranker"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return OnnxManifest(
        kind=student.kind, inputs=inputs, opset=opset, template=template,
        max_length=cfg.max_length, query_max_length=cfg.query_max_length, true_token_id=cfg.true_token_id,
        false_token_id=cfg.false_token_id, score=cfg.score,
        tokenizer=TokenizerInfo(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                embedding_rows=student.model.get_input_embeddings().num_embeddings),
        models=models, source=str(source), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), versions=versions,
    )
