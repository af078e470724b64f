"""Per-node int8 sensitivity (SQNR) and the mixed int8 graph (student.quantize), on real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from reranker.onnx_manifest import OnnxManifest, Tolerance  # noqa: E402
from student.export import export_student  # noqa: E402
from student.parity import load_parity_sample  # noqa: E402
from student.quantize import node_sensitivity, quantize_dynamic_int8, swept_nodes  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def _two_matmuls(path, rng):
    """x -> MatMul(W1) "smooth" -> Relu -> MatMul(W2) "spiky" -> y; the second input gets an outlier channel."""
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    spike = np.ones((1, 32), np.float32)
    spike[0, 0] = 400.0  # one huge activation channel: a per-tensor scale that crushes the others...
    w2[0] /= 400.0  # ...whose own weight is small, so the output lives in the crushed channels
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="smooth"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "spike"], ["s"], name="scale"), helper.make_node("MatMul", ["s", "w2"], ["y"], name="spiky")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(spike, "spike")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_node_with_outlier_inputs_ranks_first_and_its_sqnr_matches_the_real_quantised_graph(tmp_path):
    rng = np.random.default_rng(0)
    _two_matmuls(tmp_path / "g.onnx", rng)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    ranking = node_sensitivity(tmp_path / "g.onnx", {"x": x})
    assert [s.name for s in ranking] == ["spiky", "smooth"] and ranking[0].sqnr_db < ranking[1].sqnr_db - 10
    assert ranking[0].weight_bytes == 32 * 8 * 4

    # keep "smooth" in fp32: the graph's only int8 error is "spiky"'s, whose SQNR the estimate must match
    exact = _run(tmp_path / "g.onnx", x).astype(np.float64)
    quantize_dynamic_int8(tmp_path / "g.onnx", tmp_path / "q.onnx", ["smooth"], keep_head=False)
    noise = _run(tmp_path / "q.onnx", x) - exact
    real = 10 * np.log10((exact**2).sum() / (noise**2).sum())
    assert abs(real - ranking[0].sqnr_db) < 1.5, (real, ranking[0].sqnr_db)


def test_quantize_dynamic_int8_keeps_the_named_nodes_in_fp32(tmp_path):
    _two_matmuls(tmp_path / "g.onnx", np.random.default_rng(1))
    ops = lambda p: {n.name: n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    everything = ops(quantize_dynamic_int8(tmp_path / "g.onnx", tmp_path / "all.onnx", [], keep_head=False))
    kept = ops(quantize_dynamic_int8(tmp_path / "g.onnx", tmp_path / "kept.onnx", ["spiky"], keep_head=False))
    assert "spiky" not in everything and "smooth" not in everything  # both became integer kernels
    assert kept["spiky"] == "MatMul" and "smooth" not in kept


def test_dynamic_int8_keeps_the_score_head_in_fp32_up_to_the_last_normalisation(tmp_path):
    """x -> MatMul "body" -> LayerNorm -> MatMul "head" -> Sub -> score: the head and what follows stay fp32, the body
    (before the normalisation) is quantised; the head's output then carries no activation rounding of its own."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "wb"),
             numpy_helper.from_array(np.ones(32, np.float32), "gamma"), numpy_helper.from_array(np.zeros(32, np.float32), "beta"),
             numpy_helper.from_array(rng.normal(size=(32, 2)).astype(np.float32), "wh"),
             numpy_helper.from_array(np.array([0], np.int64), "i0"), numpy_helper.from_array(np.array([1], np.int64), "i1")]
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["h"], name="body"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="norm", axis=-1),
             helper.make_node("MatMul", ["n", "wh"], ["two"], name="head"),
             helper.make_node("Gather", ["two", "i0"], ["t"], name="true", axis=1), helper.make_node("Gather", ["two", "i1"], ["f"], name="false", axis=1),
             helper.make_node("Sub", ["t", "f"], ["score"], name="diff")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    from student.quantize import score_head_nodes
    assert sorted(score_head_nodes(onnx.load(str(tmp_path / "g.onnx")))) == ["diff", "false", "head", "true"]
    ops = {n.name: n.op_type for n in onnx.load(str(quantize_dynamic_int8(tmp_path / "g.onnx", tmp_path / "q.onnx"))).graph.node}
    assert ops["head"] == "MatMul" and "body" not in ops  # body became an integer kernel
    bare = {n.name for n in onnx.load(str(quantize_dynamic_int8(tmp_path / "g.onnx", tmp_path / "b.onnx", keep_head=False))).graph.node}
    assert "head" not in bare


def test_export_mixed_searches_the_ladder_and_says_which_nodes_stayed_fp32(student_dir, tmp_path):  # noqa: F811
    sample = load_parity_sample(None, 48)
    loose = {"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.0)}  # random tiny model: near-tied scores
    easy = export_student(student_dir, tmp_path / "easy", ["fp32", "int8"], parity=sample, tolerances=loose, int8_method="mixed",
                          max_ndcg_drop=1.0)
    assert "with the 0 nodes" in easy.models["int8"].notes[0] and "within the budget 1" in easy.models["int8"].notes[1]

    hard = export_student(student_dir, tmp_path / "hard", ["fp32", "int8"], parity=sample, tolerances=loose, int8_method="mixed",
                          max_ndcg_drop=-1.0)  # never met: the ladder runs to its end and keeps the last graph
    notes = hard.models["int8"].notes
    swept = len(swept_nodes(onnx.load(str(tmp_path / "hard" / "model.onnx"))))
    assert 2 < swept < 16  # the tiny model has fewer nodes than the ladder's top: all of them end in fp32
    assert f"with the {swept} nodes" in notes[0] and "over the budget" in notes[1] and notes[0].count(" dB)") == swept
    assert (tmp_path / "hard" / "model.int8.onnx").stat().st_size > (tmp_path / "easy" / "model.int8.onnx").stat().st_size
    kept = {n.name for n in onnx.load(str(tmp_path / "hard" / "model.int8.onnx")).graph.node if n.op_type in ("MatMul", "Attention")}
    named = [part.split(" (")[0] for part in notes[0].split("): ", 1)[1].split(", ")]
    assert set(named) <= kept


def test_auto_adds_the_mixed_graph_only_when_dynamic_misses_the_budget(student_dir, tmp_path):  # noqa: F811
    sample = load_parity_sample(None, 48)
    loose = {"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.0)}
    m = export_student(student_dir, tmp_path / "strict", ["auto"], parity=sample, tolerances=loose, max_ndcg_drop=0.0, threads=1)
    rows = {r.name: r for r in m.choice.candidates}
    assert rows["int8 (dynamic)"].ndcg_drop > 0  # the random tiny model's dynamic graph reorders something
    assert "int8 (mixed)" in rows and OnnxManifest.load(tmp_path / "strict").choice.candidates == m.choice.candidates
