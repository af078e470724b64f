"""#25: the separated export (encoder graph + score graph) and passage states computed once (in-memory LRU, on-disk store).

A tiny hybrid student whose classifier is 0 (the recipe's fitted start) is exported with the default layout; real
ONNX Runtime sessions, a real ``reranker index --states-model`` and ``reranker rerank`` in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BERT_CONFIG, PAIRS, tiny_bert_tokenizer

from reranker.errors import RerankerError
from reranker.formatting import encode_segments
from reranker.passage_cache import STORE_FILE, PassageStore, StateCache, text_key
from student.heads import pool_segments
from student.models import CrossEncoderStudent

pytest.importorskip("onnx", reason="the 'cpu' extra (onnxruntime, onnx) is needed for ONNX export")
from reranker.onnx_runtime import build_passage_store, load_onnx
from student.export import export_student
from student.parity import load_parity_sample

EXE = str(Path(sys.executable).with_name("reranker"))
DEMO = Path(__file__).resolve().parents[2] / "reranker" / "data" / "demo"
LONG = "wind turbines convert the kinetic energy of moving air " * 12
MORE = [("solar", LONG), ("how do wind turbines work and why are they tall", LONG), ("coal power", "burning coal"),
        ("store energy", "coal releases carbon " * 5), ("batteries", "energy storage in batteries")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hybrid(seed: int = 0) -> CrossEncoderStudent:
    torch.manual_seed(seed)
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8, head="hybrid",
                                             lexical_buckets=4096).eval()
    with torch.no_grad():
        student.hybrid.idf.copy_(torch.rand(4096) * 4)
        student.hybrid.lex_weight.fill_(2.0)
        student.model.classifier.weight.zero_()
        student.model.classifier.bias.zero_()
    return student


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(student without its joint pass, student folder, separated export with fp32 + int8, pair-layout export)."""
    root = tmp_path_factory.mktemp("separated")
    student = _hybrid()
    src = student.save_pretrained(root / "student")
    sample = load_parity_sample(None, 48)
    export_student(src, root / "onnx", ["fp32", "int8"], parity=sample)
    export_student(src, root / "pair", ["fp32"], parity=sample, layout="pair")
    student.drop_joint_pass()
    return student, src, root / "onnx", root / "pair"


def test_a_passage_reads_the_same_whatever_the_query():
    """The document segment of a hybrid pair is cut to a budget of its own: paired with a one-word query or a long
    one, a long passage gets the same states, and they equal the passage encoded alone (what makes caching exact)."""
    student = _hybrid()
    enc = student.encode(["solar", "how do wind turbines work and why are they tall"], [LONG, LONG])
    with torch.inference_mode():
        _, d_vec = pool_segments(student.separate_states(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                                 enc["attention_mask"], enc["token_type_ids"])
        alone = encode_segments(student.tokenizer, student.config, [LONG], "document")
        vec = student.embed(torch.from_numpy(alone["input_ids"]), torch.from_numpy(alone["attention_mask"]))
    assert int(enc["attention_mask"][0].sum()) < int(enc["attention_mask"][1].sum())  # the two pairs differ in length
    torch.testing.assert_close(d_vec[0], d_vec[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(d_vec[0], vec[0], rtol=0, atol=1e-5)


def test_the_separated_export_scores_as_the_student_and_the_pair_graph(exported):
    student, _, folder, pair = exported
    manifest = json.loads((folder / "onnx_manifest.json").read_text())
    assert manifest["layout"] == "separated" and manifest["inputs"] == ["input_ids", "attention_mask"]
    assert manifest["score_graph"]["file"] == "score.onnx" and manifest["hidden_size"] == BERT_CONFIG["hidden_size"]
    assert json.loads((pair / "onnx_manifest.json").read_text())["layout"] == "pair"
    pairs = PAIRS + MORE
    ref = student.score(pairs)
    scorer = load_onnx(folder, precision="fp32")
    np.testing.assert_allclose(scorer.score(pairs), ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(load_onnx(pair, precision="fp32").score(pairs), ref, rtol=0, atol=1e-4)
    assert np.ptp(ref) > 0.1
    int8 = load_onnx(folder, precision="int8")
    assert int8.manifest.models["int8"].parity.passed and np.corrcoef(int8.score(pairs), ref)[0, 1] > 0.9


def test_passages_are_encoded_once_and_the_cache_stays_bounded(exported):
    _, _, folder, _ = exported
    pairs = PAIRS + MORE
    cold = load_onnx(folder, precision="fp32", cache_entries=0).score(pairs)
    scorer = load_onnx(folder, precision="fp32", cache_entries=1000)
    first = scorer.score(pairs)
    docs = len({d for _, d in pairs})
    assert scorer.cache_stats()["misses"] == docs and scorer.cache_stats()["hits"] == 0
    second = scorer.score(pairs, batch_size=3)
    stats = scorer.cache_stats()
    assert stats["hits"] == docs and stats["misses"] == docs and stats["entries"] == docs and stats["bytes"] > 0
    np.testing.assert_allclose(first, cold, rtol=0, atol=1e-6)
    np.testing.assert_allclose(second, cold, rtol=0, atol=1e-6)  # warm and batched differently: the same scores
    single = np.array([scorer.score([p])[0] for p in pairs])
    np.testing.assert_allclose(single, cold, rtol=0, atol=1e-5)
    small = load_onnx(folder, precision="fp32", cache_entries=3)
    small.score(pairs)
    assert small.cache_stats()["entries"] == 3 and small.cache_stats()["capacity"] == 3


def test_the_lru_keeps_the_most_recently_used():
    cache = StateCache(2)
    from reranker.passage_cache import PassageState

    state = PassageState(np.zeros(4, np.float32), np.array([3, 5]))
    a, b, c = (text_key(t) for t in "abc")
    cache.put_many([a, b], [state, state])
    assert cache.get_many([a]) == [state]  # a is now the most recent
    cache.put_many([c], [state])
    assert cache.get_many([b]) == [None] and cache.get_many([a, c]) == [state, state]
    assert cache.stats() == {"hits": 3, "misses": 1, "entries": 2, "capacity": 2, "bytes": 2 * state.nbytes}
    with pytest.raises(RerankerError, match="capacity"):
        StateCache(-1)


def test_an_on_disk_store_resumes_and_is_refused_for_another_model(exported, tmp_path):
    _, _, folder, pair = exported
    scorer = load_onnx(folder, precision="fp32", cache_entries=0)
    docs = [d for _, d in PAIRS + MORE]
    added, total = build_passage_store(scorer, docs[:3], tmp_path / "states", shard_size=2)
    assert (added, total) == (3, 3)
    added, total = build_passage_store(scorer, docs, tmp_path / "states", shard_size=2)  # resumes: only the rest
    assert (added, total) == (len(set(docs)) - 3, len(set(docs)))
    stored = load_onnx(folder, precision="fp32", cache_entries=0, passage_store=tmp_path / "states")
    np.testing.assert_allclose(stored.score(PAIRS + MORE), scorer.score(PAIRS + MORE), rtol=0, atol=1e-6)
    assert stored.cache_stats()["stored"] == len(set(docs))
    # the stored vectors are what is read: overwrite one shard's vectors and the scores move
    shard = tmp_path / "states" / "shard-00000" / "vectors.npy"
    np.save(shard, np.load(shard) * -1)
    moved = load_onnx(folder, precision="fp32", cache_entries=0, passage_store=tmp_path / "states").score(PAIRS[:1] + MORE)
    assert not np.allclose(moved, scorer.score(PAIRS[:1] + MORE), atol=1e-3)
    with pytest.raises(RerankerError, match=rf"{STORE_FILE}: stale passage states, built for model"):
        load_onnx(folder, precision="int8", passage_store=tmp_path / "states")  # another graph, another digest
    with pytest.raises(RerankerError, match="pair-layout export .* no passage states"):
        load_onnx(pair, precision="fp32", passage_store=tmp_path / "states")
    with pytest.raises(RerankerError, match=rf"{STORE_FILE}: missing"):
        load_onnx(folder, precision="fp32", passage_store=tmp_path / "nothing")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RerankerError, match="a-file/sub: the passage-state folder is not writable"):
        PassageStore.open(blocker / "sub", scorer.state_digest, create=True, hidden_size=8)


def test_index_builds_the_states_and_rerank_reads_them(exported, tmp_path):
    """`reranker index --states-model` on the embedded demo corpus, then `reranker rerank` with and without them:
    the same run; a second index run encodes nothing."""
    _, _, folder, _ = exported
    data = ["--queries", str(DEMO / "queries.jsonl"), "--qrels", str(DEMO / "qrels.tsv")]

    def run(*args):
        res = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    out = run("index", str(DEMO / "docs"), "--out", str(tmp_path / "idx"), "--states-model", str(folder), *data)
    assert "passage states:" in out and " encoded," in out
    stored = PassageStore.open(tmp_path / "idx" / "passage_states", load_onnx(folder).state_digest)  # the graph rerank loads
    assert len(stored) > 10
    assert "passage states: 0 encoded" in run("index", str(DEMO / "docs"), "--out", str(tmp_path / "idx"), "--states-model", str(folder),
                                             *data)
    run("retrieve", str(DEMO / "docs"), "--out", str(tmp_path / "bm25.trec"), "--k", "10", *data)
    common = ["rerank", str(DEMO / "docs"), "--model", str(folder), "--run", str(tmp_path / "bm25.trec"), "--top-k", "10", *data]
    run(*common, "--out", str(tmp_path / "plain.trec"))
    run(*common, "--out", str(tmp_path / "stored.trec"), "--passage-states", str(tmp_path / "idx" / "passage_states"))
    runs = []
    for name in ("plain", "stored"):
        rows = [line.split() for line in (tmp_path / f"{name}.trec").read_text().splitlines()]
        runs.append({(r[0], r[2]): float(r[4]) for r in rows})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 20
    # the default graph is dynamic int8, whose activations are quantised per batch: a stored vector was encoded in
    # another batch than in the plain run, so the scores agree within the bound the export states for that
    bound = load_onnx(folder).manifest.models["int8"].parity.batch_bound
    assert max(abs(runs[0][k] - runs[1][k]) for k in runs[0]) <= bound


def test_states_stored_with_the_export_are_read_when_they_match(exported, tmp_path, caplog):
    """The pipeline stores the corpus's states in EXPORT/passage_states: the scorer reads them when they were built for
    the graph it loads, and says why it does not (the file named) when they were built for another."""
    import shutil

    _, _, folder, _ = exported
    export = tmp_path / "export"
    shutil.copytree(folder, export)
    docs = [d for _, d in PAIRS + MORE]
    build_passage_store(load_onnx(export, precision="int8", cache_entries=0), docs, export / "passage_states")
    assert load_onnx(export, precision="int8").cache_stats()["stored"] == len(set(docs))
    with caplog.at_level("WARNING", logger="reranker.onnx_runtime"):
        fp32 = load_onnx(export, precision="fp32")
    assert fp32.store is None and fp32.cache_stats()["stored"] == 0
    assert "not using the export's passage states" in caplog.text and "stale passage states" in caplog.text


def test_the_pipeline_stores_the_corpus_states_with_a_separated_export(exported, tmp_path):
    """The export stage of a pipeline run: a separated export gets the corpus's passage states beside it, for the graph
    the serving scorer loads, which then reads them (no passage of the corpus is encoded again)."""
    import shutil

    from reranker.app.pipeline import PipelineConfig
    from reranker.app.pipeline.runner import Context
    from reranker.app.pipeline.stages import stage_export
    from reranker.io.dataset import demo_data
    from reranker.scoring import load_model

    _, src, _, _ = exported
    cfg = PipelineConfig(name="states", run_dir=str(tmp_path / "run"), corpus={"spec": str(demo_data() / "docs")},
                         export={"precisions": ["fp32", "int8"], "serve": "fp32"})
    ctx = Context(cfg, tmp_path / "run", tmp_path)
    shutil.copytree(src, ctx.path("student", "model"))
    out = stage_export(ctx)
    folder, options = ctx.serving_model()
    assert out["passage_states"]["precision"] == "fp32" and out["passage_states"]["passages"] > 10
    scorer = load_model(folder, **options)
    assert scorer.cache_stats()["stored"] == out["passage_states"]["passages"]
    from reranker.io.dataset import load_dataset

    docs = [d.contents for d in load_dataset(str(demo_data() / "docs")).corpus][:5]
    scorer.score([("quarterly invoices", d) for d in docs] + [("quarterly invoices", "a text not in the corpus")])
    stats = scorer.cache_stats()
    assert stats["store_hits"] == 5 and stats["encoded"] == 1 and stats["entries"] == 6  # read from the store, then kept


def test_the_server_reads_the_store_and_counts_its_cache(exported, tmp_path):
    """A real server on the separated export with a passage store (settings passage_states, cache_entries): the
    scores equal the scorer's, a repeated request is served from the cache, and /metrics says so."""
    import httpx
    from helpers import metric, running

    from reranker.app.server.app import create_app
    from reranker.app.server.settings import ServerSettings

    _, _, folder, _ = exported
    docs = list(dict.fromkeys(d for _, d in PAIRS + MORE))
    build_passage_store(load_onnx(folder, precision="fp32", cache_entries=0), docs[:2], tmp_path / "states")
    settings = ServerSettings(precision="fp32", passage_states=str(tmp_path / "states"), cache_entries=100, warmup=False)
    body = {"query": "how do wind turbines work", "documents": docs, "return_raw_scores": True}
    with running(create_app(str(folder), settings)) as url:
        first = httpx.post(url + "/v1/rerank", json=body, timeout=60).json()
        second = httpx.post(url + "/v1/rerank", json=body, timeout=60).json()
        text = httpx.get(url + "/metrics", timeout=10).text
    want = load_onnx(folder, precision="fp32").score([(body["query"], d) for d in docs])
    got = {r["index"]: r["raw_score"] for r in first["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(docs))], want, rtol=0, atol=1e-5)
    again = {r["index"]: r["raw_score"] for r in second["results"]}
    np.testing.assert_allclose([again[i] for i in range(len(docs))], want, rtol=0, atol=1e-5)
    unique = len(docs)
    assert metric(text, "reranker_passage_store_entries") == 2
    assert metric(text, "reranker_passage_cache_misses_total") == unique and metric(text, "reranker_passage_cache_hits_total") == unique
    assert metric(text, "reranker_passage_cache_capacity") == 100
    assert metric(text, "reranker_passage_store_hits_total") == 2 and metric(text, "reranker_passages_encoded_total") == unique - 2
