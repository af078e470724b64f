"""ONNX export and the ONNX Runtime scorer on tiny T5 and BERT students, with real ONNX Runtime sessions.

The students are the random tiny models of test_student_models (built from configs, tokenizers
made in the test); each is exported once per module with the parity check on real pairs from
the embedded demo corpus.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BERT_CONFIG, PAIRS, T5_CONFIG, tiny_bert_tokenizer, tiny_t5_tokenizer

from reranker.errors import RerankerError
from reranker.onnx_manifest import OnnxManifest, Tolerance
from reranker.scoring import Scorer, detect_backend, load_model
from student.models import CrossEncoderStudent, T5Student

pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
from reranker.onnx_runtime import OnnxScorer, load_onnx
from student.export import BATCH_PROBE_PAIRS, export_student, parse_precisions
from student.parity import load_parity_sample, top_k_agreement

EXE = str(Path(sys.executable).with_name("reranker"))
MORE = [("solar", "wind turbines " * 60), ("coal power", "burning coal"), ("batteries", "energy storage in batteries"),
        ("how do wind turbines work", "wind"), ("store energy", "coal releases carbon " * 5)]


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def sample():
    return load_parity_sample(None, 48)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample):
    """``{kind: (student, student folder, export folder)}``: T5 with fp32 + int8, BERT with fp32 + int8 + fp16."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    torch.manual_seed(0)
    t5 = T5Student.from_config(T5_CONFIG, tiny_t5_tokenizer(), max_length=48, query_max_length=8).eval()
    bert = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8).eval()
    loose_int8 = {"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.5)}  # random tiny models: near-tied scores
    for kind, student, precisions in (("t5", t5, ["fp32", "int8"]), ("cross-encoder", bert, ["all"])):
        src = student.save_pretrained(root / kind / "student")
        export_student(src, root / kind / "onnx", precisions, parity=sample, tolerances=loose_int8)
        out[kind] = (student, src, root / kind / "onnx")
    return out


@pytest.fixture(params=["t5", "cross-encoder"])
def kind(request):
    return request.param


def test_fp32_scores_match_torch(exported, kind):
    student, _, folder = exported[kind]
    scorer = load_onnx(folder, precision="fp32")
    pairs = PAIRS + MORE
    onnx_scores = scorer.score(pairs)
    assert onnx_scores.dtype == np.float32 and onnx_scores.shape == (len(pairs),)
    np.testing.assert_allclose(onnx_scores, student.score(pairs), rtol=0, atol=1e-4)
    assert np.ptp(onnx_scores) > 1e-4  # the scores differ between pairs: the comparison is not vacuous
    assert scorer.kind == kind and scorer.providers[-1] == "CPUExecutionProvider"


def test_batched_equals_one_by_one(exported, kind):
    scorer = load_onnx(exported[kind][2], precision="fp32")
    pairs = PAIRS + MORE
    single = np.array([scorer.score([p])[0] for p in pairs])
    np.testing.assert_allclose(scorer.score(pairs, batch_size=3), single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.score(pairs, batch_size=64), single, rtol=0, atol=1e-5)


def test_dynamic_shapes_batch_1_and_17_short_and_max_length(exported, kind):
    student, _, folder = exported[kind]
    scorer = load_onnx(folder, precision="fp32")
    max_length = student.config.max_length
    short = [("coal", "coal")]
    long = [("how do solar panels work " * 5, "wind turbines convert power " * 40)]
    assert scorer.pair_lengths(long) == [max_length] and scorer.pair_lengths(short)[0] < 10
    seventeen = [(f"{q} {i}", d) for i in range(3) for q, d in PAIRS + MORE][:17]
    for pairs in (short, long, seventeen, short + long):
        got = scorer.score(pairs, batch_size=32)
        assert got.shape == (len(pairs),)
        np.testing.assert_allclose(got, student.score(pairs), rtol=0, atol=1e-4)
    ranked = scorer.rank("solar panels", [d for _, d in PAIRS], top_n=2)
    expected = np.argsort(-student.score([("solar panels", d) for _, d in PAIRS]), kind="stable")[:2]
    assert [i for i, _ in ranked] == expected.tolist()


def test_manifest_records_formatting_checksums_and_parity(exported, kind):
    student, _, folder = exported[kind]
    m = OnnxManifest.load(folder)
    assert m.kind == kind and m.opset == 17 and m.max_length == student.config.max_length
    assert m.inputs == (["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "cross-encoder" else []))
    assert set(m.models) == ({"fp32", "int8"} if kind == "t5" else {"fp32", "int8", "fp16"})
    fp32 = m.models["fp32"]
    assert fp32.parity.passed and fp32.parity.max_abs_diff <= fp32.parity.tolerance.max_abs_diff == 1e-3
    assert fp32.parity.pairs == 48 and "demo" in fp32.parity.sample
    if kind == "t5":
        assert (m.true_token_id, m.false_token_id) == student.config.answer_ids and (folder / m.template).is_file()
    assert all((folder / f).is_file() for f in ("tokenizer.json", "student_config.json", "onnx_manifest.json"))


def test_int8_is_smaller_and_ranks_close(exported, kind):
    student, _, folder = exported[kind]
    m = OnnxManifest.load(folder)
    assert m.models["int8"].bytes < m.models["fp32"].bytes
    int8 = load_onnx(folder, precision="int8")
    assert int8.precision == "int8" and load_onnx(folder).precision == "int8"  # the CPU default when exported
    pairs = PAIRS + MORE
    got, ref = int8.score(pairs), student.score(pairs)
    assert not np.array_equal(got, ref)  # really a different (quantised) graph
    # a random tiny model's score is a small difference of two large logits (T5: spread ~0.4, int8 error ~0.1) or
    # a near-zero logit (BERT: spread ~1e-4): int8's error is judged against the spread of the scores (the same order
    # of pairs, errors well inside the spread), with a floor of 0.01 for scores that are all near zero
    assert np.corrcoef(got, ref)[0, 1] >= 0.8
    assert np.abs(got - ref).mean() <= max(0.01, 0.5 * ref.std())
    assert m.models["int8"].parity.top10_agreement >= 0.5


def test_weight_only_int8_is_closer_than_dynamic_and_smaller(exported, kind, sample, tmp_path):
    """int8 weights with fp32 activations: MatMulNBits in the graph, smaller file, scores closer to PyTorch than dynamic int8."""
    import onnx

    student, src, dynamic_folder = exported[kind]
    m = export_student(src, tmp_path / "wo", ["fp32", "int8"], parity=sample, int8_method="weight-only",
                       tolerances={"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.5)})
    entry = m.models["int8"]
    assert "weight-only" in " ".join(entry.notes)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "wo" / entry.file)).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops
    assert entry.bytes < m.models["fp32"].bytes
    pairs = PAIRS + MORE
    ref = student.score(pairs)
    weight_only = np.abs(load_onnx(tmp_path / "wo", precision="int8").score(pairs) - ref).mean()
    dynamic = np.abs(load_onnx(dynamic_folder, precision="int8").score(pairs) - ref).mean()
    assert 0 < weight_only < dynamic
    with pytest.raises(RerankerError, match="unknown int8 method"):
        export_student(src, tmp_path / "bad", ["fp32", "int8"], parity=sample, int8_method="static")


def test_fp16_for_cross_encoders_only(exported, tmp_path):
    student, _, folder = exported["cross-encoder"]
    fp16 = load_onnx(folder, precision="fp16")
    np.testing.assert_allclose(fp16.score(PAIRS), student.score(PAIRS), rtol=0, atol=0.05)
    assert OnnxManifest.load(folder).models["fp16"].bytes < 0.6 * OnnxManifest.load(folder).models["fp32"].bytes
    with pytest.raises(RerankerError, match="T5 .*fp16"):
        export_student(exported["t5"][1], tmp_path / "t5-fp16", ["fp16"], parity=load_parity_sample(None, 4))
    with pytest.raises(RerankerError, match="no fp16 model exported"):
        load_onnx(exported["t5"][2], precision="fp16")


def test_parity_beyond_the_tolerance_fails_loudly_and_writes_nothing(exported, sample, tmp_path):
    _, src, _ = exported["cross-encoder"]
    impossible = {"fp32": Tolerance(max_abs_diff=-1.0, min_top10_agreement=0.0)}
    with pytest.raises(RerankerError, match=r"fp32 parity check on 48 pairs.*tolerance <= -1"):
        export_student(src, tmp_path / "out", ["fp32"], parity=sample, tolerances=impossible, optimize=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial"))


def test_corrupt_or_missing_model_file_is_named(exported, tmp_path):
    folder = shutil.copytree(exported["cross-encoder"][2], tmp_path / "copy")
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RerankerError, match=r"model\.onnx: checksum mismatch"):
        load_onnx(folder, precision="fp32")
    # garbage whose checksum is recorded: ONNX Runtime's own failure, naming the file
    (folder / "model.onnx").write_bytes(b"not a protobuf" * 100)
    manifest = json.loads((folder / "onnx_manifest.json").read_text())
    from reranker.io.files import sha256

    manifest["models"]["fp32"]["sha256"] = sha256(folder / "model.onnx")
    (folder / "onnx_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RerankerError, match=r"model\.onnx: ONNX Runtime cannot load it"):
        load_onnx(folder, precision="fp32")
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(RerankerError, match=r"model\.int8\.onnx: missing"):
        load_onnx(folder, precision="int8")
    (folder / "onnx_manifest.json").write_text("{not json")
    with pytest.raises(RerankerError, match="onnx_manifest.json: not valid JSON"):
        load_onnx(folder)


def test_manifest_and_tokenizer_mismatch_is_a_clear_error(exported, tmp_path):
    folder = shutil.copytree(exported["cross-encoder"][2], tmp_path / "copy")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).unlink()
    tiny_t5_tokenizer().save_pretrained(folder)  # another model's tokenizer
    with pytest.raises(RerankerError, match="tokenizer does not match onnx_manifest.json: vocabulary size"):
        load_onnx(folder, precision="fp32")
    folder = shutil.copytree(exported["t5"][2], tmp_path / "t5")
    config = json.loads((folder / "student_config.json").read_text())
    config["max_length"] = 64
    (folder / "student_config.json").write_text(json.dumps(config))
    with pytest.raises(RerankerError, match="max_length is 64 but onnx_manifest.json says 48"):
        load_onnx(folder)


def test_load_model_detects_the_onnx_folder(exported, kind):
    folder = exported[kind][2]
    assert detect_backend(folder) == "onnx"
    scorer = load_model(folder, precision="fp32", intra_op_threads=1)
    assert isinstance(scorer, OnnxScorer) and isinstance(scorer, Scorer)
    assert scorer.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(RerankerError, match="not available in this onnxruntime"):
        load_model(folder, providers=["no-such-provider"])


def test_precisions_parse():
    assert parse_precisions(["all"]) == ["fp32", "int8", "fp16"]
    assert parse_precisions(["int8"]) == ["fp32", "int8"]
    with pytest.raises(RerankerError, match="unknown precision"):
        parse_precisions(["int4"])
    assert top_k_agreement(np.arange(12.0), np.arange(12.0)[::-1], [0] * 12, 10) == pytest.approx(8 / 10)


def test_serving_path_runs_without_torch(exported, kind):
    student, _, folder = exported[kind]
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from reranker.onnx_runtime import load_onnx\n"
        f"s = load_onnx({str(folder)!r}, precision='fp32')\n"
        f"print(json.dumps(s.score({PAIRS!r}).tolist()))\n"
        "assert sys.modules['torch'] is None\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(json.loads(res.stdout.strip().splitlines()[-1]), student.score(PAIRS), rtol=0, atol=1e-4)


def test_serving_an_export_imports_neither_torch_nor_teacher_nor_student(exported, kind):
    """With torch installed (this environment), the HTTP app serving an ONNX folder loads none of them: the core's
    scorer, formatting and student config, and the tokenizer class its config names (not AutoTokenizer)."""
    _, _, folder = exported[kind]
    code = (
        "import sys, json\n"
        "from fastapi.testclient import TestClient\n"
        "from reranker.app.server.app import create_app\n"
        "from reranker.app.server.settings import ServerSettings\n"
        f"app = create_app(settings=ServerSettings(model={str(folder)!r}, threads=1))\n"
        "import time\n"
        "with TestClient(app) as client:\n"
        "    deadline = time.monotonic() + 120\n"
        "    while client.get('/ready').status_code != 200 and time.monotonic() < deadline:\n"
        "        time.sleep(0.2)\n"
        "    r = client.post('/rerank', json={'query': 'solar power', 'texts': ['solar panels', 'coal mines']})\n"
        "    assert r.status_code == 200, r.text\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'teacher', 'student'})))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_cli_export_then_rerank_and_triton(exported, tmp_path):
    _, src, _ = exported["cross-encoder"]
    docs = tmp_path / "corpus.jsonl"
    docs.write_text("".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, (_, d) in enumerate(PAIRS + MORE)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, (q, _) in enumerate(PAIRS)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"qid": "q", "query": "solar power", "document": d}) + "\n" for _, d in PAIRS + MORE))
    out = tmp_path / "onnx"
    res = subprocess.run([EXE, "-q", "export", str(src), str(out), "--precision", "fp32", "--parity-data", str(pairs),
                          "--triton", str(tmp_path / "triton")], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fp32:" in res.stdout and "parity on 9 pairs" in res.stdout and "int8" not in res.stdout
    assert "Loading weights" not in res.stderr and "%|" not in res.stderr  # -q: no progress bars, transformers' included
    assert set(OnnxManifest.load(out).models) == {"fp32"}
    config = (tmp_path / "triton" / "reranker" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "dynamic_batching {" in config and "max_batch_size: 64" in config
    assert config.count("data_type: TYPE_INT64") == 3 and config.count("dims: [ -1 ]") == 3 and 'name: "token_type_ids"' in config
    assert 'name: "score"' in config and "TYPE_FP32" in config
    assert (tmp_path / "triton" / "reranker" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()

    run = tmp_path / "bm25.trec"
    res = subprocess.run([EXE, "-q", "retrieve", str(docs), "--queries", str(queries), "-k", "5", "--out", str(run)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    reranked = tmp_path / "onnx.trec"
    res = subprocess.run([EXE, "-q", "rerank", str(docs), "--queries", str(queries), "--model", str(out), "--run", str(run),
                          "--top-k", "5", "--out", str(reranked)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    from reranker.io.trec import read_run

    got = read_run(reranked)
    scorer = load_onnx(out)
    corpus = {f"d{i}": d for i, (_, d) in enumerate(PAIRS + MORE)}
    for qid, (q, _) in zip([f"q{i}" for i in range(len(PAIRS))], PAIRS):
        for hit in got.ranking(qid):
            assert hit.score == pytest.approx(float(scorer.score([(q, corpus[hit.doc_id])])[0]), abs=1e-4)
    res = subprocess.run([EXE, "export", str(src), str(tmp_path / "bad"), "--precision", "int4"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 2 and "unknown precision" in res.stderr and "Traceback" not in res.stderr


def test_hybrid_head_exports_in_the_same_graph(tmp_path, sample):
    """The hybrid head (cosine of mean-pooled states + BM25-shaped term match) is part of the exported graph:
    fp32 ONNX equals PyTorch, batched equals one by one, and the lexical term really moves the scores."""
    torch.manual_seed(0)
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8, head="hybrid",
                                             lexical_buckets=4096).eval()
    with torch.no_grad():
        student.hybrid.idf.copy_(torch.rand(4096) * 4)
        student.hybrid.lex_weight.fill_(2.0)
        student.model.classifier.weight.normal_(0, 30.0)  # a joint pass that counts: it stays in the graph (#25)
    src = student.save_pretrained(tmp_path / "student")
    export_student(src, tmp_path / "onnx", ["fp32", "int8"], parity=sample,
                   tolerances={"int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.5)})
    scorer = load_onnx(tmp_path / "onnx", precision="fp32")
    pairs = PAIRS + MORE
    ref = student.score(pairs)
    np.testing.assert_allclose(scorer.score(pairs), ref, rtol=0, atol=1e-4)
    single = np.array([scorer.score([p])[0] for p in pairs])
    np.testing.assert_allclose(scorer.score(pairs, batch_size=4), single, rtol=0, atol=1e-5)
    with torch.no_grad():
        student.hybrid.lex_weight.fill_(0.0)
    assert np.abs(student.score(pairs) - ref).max() > 0.5  # the exported scores include the lexical term
    manifest = OnnxManifest.load(tmp_path / "onnx")
    assert manifest.models["fp32"].parity.passed and manifest.dropped == []
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids", "query_terms", "doc_terms"]


def test_the_manifest_states_how_far_scores_move_with_their_batch(exported, kind, sample, tmp_path):
    """Every graph is scored alone and batched at export: fp32 is held to rounding, dynamic int8 (activations quantised
    per batch) really depends on its batch mates and its stated bound is twice what was measured."""
    m = OnnxManifest.load(exported[kind][2])
    fp32, int8 = m.models["fp32"].parity, m.models["int8"].parity
    assert fp32.batch_pairs == min(BATCH_PROBE_PAIRS, len(sample.pairs)) and fp32.batch_max_abs_diff <= 1e-4 and fp32.batch_bound == 1e-4
    assert int8.batch_max_abs_diff > 1e-4 and int8.batch_bound == pytest.approx(2 * int8.batch_max_abs_diff)
    with pytest.raises(RerankerError, match=r"alone vs batched differ by .*\(tolerance <= 1e-05\)"):
        export_student(exported[kind][1], tmp_path / "strict", ["fp32", "int8"], parity=sample,
                       tolerances={"int8": Tolerance(min_top10_agreement=0.0, max_batch_diff=1e-5)})
    assert not (tmp_path / "strict").exists()


def test_a_joint_pass_that_does_not_count_is_left_out_of_the_graph(tmp_path, sample):
    """#25: a hybrid student whose classifier weights are 0 (the recipe's fitted start) is exported without its joint
    pass: the manifest says so, the graph is smaller and still scores exactly as the whole student does; a classifier
    that moves the ranking keeps its pass."""
    import onnx

    torch.manual_seed(0)
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8, head="hybrid",
                                             lexical_buckets=4096).eval()
    with torch.no_grad():
        student.hybrid.idf.copy_(torch.rand(4096) * 4)
        student.model.classifier.weight.zero_()
        student.model.classifier.bias.zero_()
    zero = export_student(student.save_pretrained(tmp_path / "zero"), tmp_path / "zero-onnx", ["fp32"], parity=sample, optimize=False)
    assert len(zero.dropped) == 1 and "joint cross-encoder pass" in zero.dropped[0] and "all 0" in zero.dropped[0]
    pairs = PAIRS + MORE
    np.testing.assert_allclose(load_onnx(tmp_path / "zero-onnx", precision="fp32").score(pairs), student.score(pairs), rtol=0, atol=1e-4)
    with torch.no_grad():
        student.model.classifier.weight.normal_(0, 30.0)  # a joint logit that dominates the score
    kept = export_student(student.save_pretrained(tmp_path / "kept"), tmp_path / "kept-onnx", ["fp32"], parity=sample, optimize=False)
    assert kept.dropped == []
    np.testing.assert_allclose(load_onnx(tmp_path / "kept-onnx", precision="fp32").score(pairs), student.score(pairs), rtol=0, atol=1e-3)
    nodes = {name: len(onnx.load(str(tmp_path / name / kept.models["fp32"].file)).graph.node) for name in ("zero-onnx", "kept-onnx")}
    assert nodes["zero-onnx"] < 0.75 * nodes["kept-onnx"]
    assert OnnxManifest.load(tmp_path / "zero-onnx").dropped == zero.dropped  # the manifest on disk says it too
