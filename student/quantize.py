"""Which nodes of a graph dynamic int8 hurts most, and a mixed graph that keeps those in fp32.

Dynamic int8 (``quantize_dynamic``) quantises every MatMul-like node's weights per output channel and
its input activations per tensor and batch at run time. Its error is not spread evenly: a node whose
input has a few large outliers (the FFN output projection after GELU, typically) loses most of its
small values to a coarse scale. The per-node signal-to-quantisation-noise ratio (SQNR) finds those
nodes from one fp32 run: for each node with a constant weight ``W`` and input ``x`` (captured as an
extra graph output on calibration pairs), ``SQNR = 10 log10(|xW|^2 / |Q(x)Q(W) - xW|^2)`` with ``Q``
the quantiser's own scheme (activations asymmetric uint8 per tensor, weights symmetric int8 per
output channel). This is the layer-wise sensitivity analysis of Nagel et al., "A White Paper on
Neural Network Quantization" (2021), section 3.7 (the per-layer SQNR of the quantised output).

:func:`quantize_dynamic_int8` with ``keep_fp32`` keeps the ``k`` lowest-SQNR nodes in fp32 and quantises the rest;
:func:`student.export` searches ``k`` on a small ladder until the graph's nDCG@10 drop on the
calibration sample is within the budget (``--int8-method mixed``, or ``--precision auto`` when
plain dynamic int8 misses the budget). The ranking is a proxy (it ignores how errors travel to the
score); the ladder measures the real graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reranker.errors import MissingDependencyError

from .parity import ParitySample
from .precision import drop_bases, ndcg_drop

log = logging.getLogger(__name__)

#: node types whose second input is a constant weight that quantize_dynamic turns into an integer kernel with
#: int8 activations (its registry also quantises Gather/EmbedLayerNormalization tables, weights only; Gemm stays fp32)
SWEPT_OPS = ("MatMul", "Attention")
#: how many of the most sensitive nodes a mixed graph keeps in fp32, tried in this order
LADDER = (2, 4, 8, 16)
#: node types that end the score head's walk back from the output (the encoder's layers begin there)
NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
            "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "RMSNormalization")
#: calibration pairs whose activations rank the nodes
SENSITIVITY_PAIRS = 32


@dataclass(frozen=True)
class NodeSensitivity:
    """One node's SQNR (dB; higher is safer, ``inf`` when its output is all zeros) and its weight's fp32 bytes."""

    name: str
    op_type: str
    sqnr_db: float
    weight_bytes: int


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear's scheme: uint8, asymmetric, one scale for the whole tensor, range including 0."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (the last axis of a MatMul weight)."""
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def swept_nodes(model) -> list:
    """The named nodes of ``model`` (an ``onnx.ModelProto``) with a constant 2-D weight as their second input."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in SWEPT_OPS and n.name and len(n.input) > 1
            and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def node_sensitivity(fp32_path: str | Path, feeds: dict[str, np.ndarray]) -> list[NodeSensitivity]:
    """SQNR of every swept node of the fp32 graph at ``fp32_path`` on the inputs ``feeds`` (one batch of
    tokenised calibration pairs), most sensitive (lowest SQNR) first."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    nodes = swept_nodes(model)
    inits = {i.name: i for i in model.graph.initializer}
    existing = {o.name for o in model.graph.output}
    for name in sorted({n.input[0] for n in nodes} - existing):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the captured tensors as named
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))
    found = []
    for node in nodes:
        x = values[node.input[0]].astype(np.float64)
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        x = x.reshape(-1, x.shape[-1])
        exact = x @ w
        error = _fake_quant_activation(x) @ _fake_quant_weight(w) - exact
        signal, noise = float((exact**2).sum()), float((error**2).sum())
        sqnr = math.inf if signal == 0 else (math.inf if noise == 0 else 10 * math.log10(signal / noise))
        found.append(NodeSensitivity(node.name, node.op_type, sqnr, w.size * 4))
    found.sort(key=lambda s: s.sqnr_db)
    log.info("int8 sensitivity: %s", ", ".join(f"{s.name} {s.sqnr_db:.1f} dB" for s in found[:5]))
    return found


def quantize_dynamic_int8(src: str | Path, dst: str | Path, keep_fp32: Sequence[str] = (), keep_head: bool = True) -> Path:
    """Dynamic int8 (int8 weights per output channel, activations per batch) with the score head
    (:func:`score_head_nodes`, unless ``keep_head`` is false) in fp32: the export's ``dynamic`` method; with
    ``keep_fp32``, those nodes stay fp32 too (the ``mixed`` method)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # "consider pre-processing" advice printed on every call
    head = score_head_nodes(onnx.load(str(src), load_external_data=False)) if keep_head else []
    keep = list(dict.fromkeys([*head, *keep_fp32]))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(dst)


def quantize_weight_only(model, dst: Path, block: int) -> Path:
    """int8 weights, fp32 activations: MatMulNBits (8 bits, symmetric, blocks of ``block``) for every MatMul with a
    constant weight in ``model`` (an ``onnx.ModelProto``), then int8 Gather for the embeddings."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError as exc:  # it needs onnx_ir (the cpu/gpu extras install it)
        raise MissingDependencyError("reranker export --int8-method weight-only", "cpu", exc) from exc
    logging.getLogger("root").setLevel(logging.ERROR)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    kinds = {"op_types_to_quantize": ("MatMul",), "quant_axes": (("MatMul", 0),)}
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=8, **kinds)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True, algo_config=cfg, **kinds)
    quantizer.process()
    blocked = dst.with_suffix(".blocked.onnx")
    quantizer.model.save_model_to_file(str(blocked), use_external_data_format=False)
    quantize_dynamic(str(blocked), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    blocked.unlink(missing_ok=True)
    return dst


def search_mixed(base: Path, fused: bool, work: Path, check, loaded: dict, scored: dict, sample: ParitySample, max_ndcg_drop: float,
                 ladder: Sequence[int]) -> Any:
    """Dynamic int8 with the ``k`` most quantisation-sensitive nodes (:func:`node_sensitivity`) in fp32, for the
    first ``k`` of ``ladder`` whose nDCG@10 drop against the fp32 graph on ``sample`` is within ``max_ndcg_drop``
    (else the last); checked like any graph, its entry says which nodes stayed in fp32 and the drop."""
    fp32 = loaded["fp32"]
    head = sample.pairs[:SENSITIVITY_PAIRS]
    import onnx

    score_head = set(score_head_nodes(onnx.load(str(base), load_external_data=False)))  # fp32 in every int8 graph already
    ranking = [s for s in node_sensitivity(base, fp32.encode([q for q, _ in head], [d for _, d in head])) if s.name not in score_head]
    entry, bases = None, drop_bases(scored["fp32"], sample)
    ladder = sorted({min(k, len(ranking)) for k in ladder})  # a small graph has fewer nodes than the ladder's top
    for k in ladder:
        keep = [s.name for s in ranking[:k]]
        loaded.pop("int8", None)
        entry = check("int8", quantize_dynamic_int8(base, work / "int8.tmp.onnx", keep), fused, [])
        drop = ndcg_drop(scored["int8"], sample, scored["fp32"], bases)[0]
        within = drop <= max_ndcg_drop
        log.info("mixed int8, %d most sensitive nodes in fp32: nDCG@10 drop %+.4f (%s)", k, drop, "within budget" if within else "over")
        sqnr = ", ".join(f"{s.name} ({s.sqnr_db:.1f} dB)" for s in ranking[:k]) or "none"
        entry.notes = [f"mixed int8: dynamic int8 with the {k} nodes of lowest int8 SQNR kept in fp32 (ladder {list(ladder)}): {sqnr}",
                       (f"nDCG@10 drop against the fp32 graph on the parity sample {drop:+.4f}, "
                        f"{'within' if within else 'over'} the budget {max_ndcg_drop:g}")]
        if within:
            break
    return entry


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations (GPUs); inputs, output and the classification head (:func:`head_nodes`) stay fp32."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    # symbolic shape inference types every tensor, so Casts are put in front of the fp32 head
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True, node_block_list=head_nodes(model.model))
    model.save_model_to_file(str(dst))
    return dst


def head_nodes(model: Any, stop_at: Sequence[str] = ()) -> list[str]:
    """Names of the nodes from the graph's output back to the last MatMul/Gemm on each path (the score head), which
    stay fp32; the walk also ends, without taking it, at a node of a type in ``stop_at``."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name for i in model.graph.initializer}
    keep, frontier = [], [o.name for o in model.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in keep or node.op_type in stop_at:
            continue
        keep.append(node.name)
        if node.op_type not in ("MatMul", "Gemm"):
            frontier += [i for i in node.input if i and i not in initializers]
    return keep


def score_head_nodes(model: Any) -> list[str]:
    """The score head that int8 keeps in fp32: :func:`head_nodes` up to the encoder's last normalisation. A head that
    reads a few logits off one hidden state (T5's two answer rows; a classifier) is cheap in fp32, while per-tensor
    activation scales there move every score (a random-init T5 student on SciFact: mean score change 0.015 -> 0.005)."""
    return head_nodes(model, stop_at=NORM_OPS)
