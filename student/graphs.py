"""The graphs an export writes: tracing a student (pair layout) or its encoder tower and score head (separated
layout) to ONNX, ONNX Runtime's transformer fusions, and weight-only int8. :mod:`student.export` decides which graphs
to build, checks them against PyTorch and writes the folder; this module only makes files."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from reranker.io.files import sha256
from reranker.onnx_manifest import OnnxManifest, ScoreGraph

from .quantize import quantize_weight_only

log = logging.getLogger(__name__)

#: the inputs a pair-layout graph may take (a student's encoding decides which)
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "query_terms", "doc_terms")
#: the separated layout's encoder graph: token ids in, one vector out; its score graph's file
ENCODER_INPUTS = ("input_ids", "attention_mask")
ENCODER_OUTPUT = "embedding"
SCORE_GRAPH_FILE = "score.onnx"
WEIGHT_ONLY_BLOCK = 128


EXAMPLE_QUERIES = ["what does the example query ask", "short"]
EXAMPLE_DOCUMENTS = ["an example document that is a little longer than the other one", "doc"]


def torch_export(student: Any, path: Path, inputs: list[str], opset: int, separated: bool = False) -> None:
    """The student's graph: its ``forward`` (pair layout), or its encoder tower (separated: token ids -> vector)."""
    if hasattr(student.model, "set_attn_implementation"):
        try:
            student.model.set_attn_implementation("eager")
        except (ValueError, ImportError) as exc:
            log.debug("eager attention not set: %s", exc)
    if separated:
        from reranker.formatting import encode_segments

        tower, _ = student.separated_parts()
        example = encode_segments(student.tokenizer, student.config, EXAMPLE_DOCUMENTS, "document")
        trace(tower, path, {n: example[n] for n in inputs}, ENCODER_OUTPUT, opset)
    else:
        example = student.encode(EXAMPLE_QUERIES, EXAMPLE_DOCUMENTS)
        trace(student, path, {n: example[n] for n in inputs}, "score", opset)


def trace(module: Any, path: Path, example: dict[str, Any], output: str, opset: int) -> None:
    import torch

    axes = {n: {0: "batch", 1: "terms_" + n.split("_")[0] if n.endswith("_terms") else "sequence"} for n in example}
    axes.update({n: {0: "batch"} for n in example if n.endswith("_vector")})
    tensors = tuple(torch.as_tensor(v) for v in example.values())
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in shape arithmetic
        torch.onnx.export(module, tensors, str(path), input_names=list(example), output_names=[output],
                          dynamic_axes={**axes, output: {0: "batch"}}, opset_version=opset, do_constant_folding=True, dynamo=False)
    log.info("exported %s (opset %d) in %.1f s", path.name, opset, time.perf_counter() - start)


def export_score_graph(student: Any, path: Path, opset: int) -> ScoreGraph:
    """The separated layout's second graph, from :class:`student.heads.SeparatedScore` (fp32, whatever the encoder's
    precision: a few element-wise operations and the term weights)."""
    import torch

    from reranker.formatting import encode_segments

    tower, head = student.separated_parts()
    q = encode_segments(student.tokenizer, student.config, EXAMPLE_QUERIES, "query")
    d = encode_segments(student.tokenizer, student.config, EXAMPLE_DOCUMENTS, "document")
    with torch.inference_mode():
        q_vec = tower(torch.from_numpy(q["input_ids"]), torch.from_numpy(q["attention_mask"]))
        d_vec = tower(torch.from_numpy(d["input_ids"]), torch.from_numpy(d["attention_mask"]))
    example = {"query_vector": q_vec.numpy(), "doc_vector": d_vec.numpy(), "query_terms": q["terms"], "doc_terms": d["terms"]}
    trace(head, path, example, "score", opset)
    return ScoreGraph(file=path.name, sha256=sha256(path), bytes=path.stat().st_size, inputs=list(example))


def separated_manifest(student: Any, manifest: OnnxManifest, graph: ScoreGraph) -> None:
    from reranker.formatting import document_tokens

    manifest.layout, manifest.output, manifest.score_graph = "separated", ENCODER_OUTPUT, graph
    manifest.document_tokens = document_tokens(student.config)
    manifest.hidden_size = int(student.model.config.hidden_size)


def optimizer_type(student: Any) -> str:
    if student.kind == "t5":
        return "t5"
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    model_type = getattr(student.model.config, "model_type", "bert")
    return model_type if model_type in MODEL_TYPES else "bert"


def optimize_graph(student: Any, src: Path, dst: Path, weight_only: bool = False) -> Path:
    """ONNX Runtime's transformer fusions; ``weight_only``: multi-head attention after MatMul projections
    and unfused embeddings, so that every weight is a MatMul or Gather input the quantiser can reach."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = student.model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", 0)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", 0)
    options = FusionOptions(optimizer_type(student))
    if weight_only:
        options.use_multi_head_attention = True
        options.enable_embed_layer_norm = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimize_model(str(src), model_type=optimizer_type(student), num_heads=heads, hidden_size=hidden, use_gpu=False,
                               optimization_options=options)
    log.info("optimiser fusions: %s", {k: v for k, v in model.get_fused_operator_statistics().items() if v})
    model.save_model_to_file(str(dst))
    return dst


def quantize_weight_only_graph(student: Any, raw: Path, dst: Path, optimize: bool) -> tuple[Path, bool]:
    """int8 weights, fp32 activations: MatMulNBits for every MatMul with constant weights, int8 Gather for embeddings.

    Returns the file and whether the optimiser's fusions are in it."""
    import onnx

    model, fused = onnx.load(str(raw)), False
    if optimize:
        try:
            model, fused = onnx.load(str(optimize_graph(student, raw, dst.with_suffix(".fused.onnx"), weight_only=True))), True
        except Exception as exc:  # noqa: BLE001 (pattern matchers raise anything)
            log.warning("optimiser failed for weight-only int8 (%s); quantising the plain graph", exc)
    quantize_weight_only(model, dst, WEIGHT_ONLY_BLOCK)
    dst.with_suffix(".fused.onnx").unlink(missing_ok=True)
    return dst, fused
