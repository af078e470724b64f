"""load_dataset: every kind of spec, queries/qrels options, and the errors for bad specs."""

from __future__ import annotations

import json
import zipfile

import pytest

from reranker.errors import RerankerError
from reranker.io.dataset import Dataset, load_dataset
from reranker.io.documents import ChunkConfig
from reranker.records import Corpus, Document, Qrels, Query


def _corpus_jsonl(path, n=4):
    path.write_text("".join(json.dumps({"id": f"d{i}", "contents": f"document number {i}"}) + "\n" for i in range(n)))
    return path


def test_beir_folder(tiny_beir):
    ds = load_dataset(tiny_beir)
    assert ds.name == "tiny/test"
    assert len(ds.corpus) == 6
    assert sorted(ds.queries) == ["q1", "q2"]
    assert ds.qrels.num_entries() == 3


def test_beir_folder_as_string_with_split(tiny_beir):
    ds = load_dataset(str(tiny_beir), split="train")
    assert sorted(ds.queries) == ["q3", "q4"]


def test_beir_folder_with_qrels_option_replaces_split(tiny_beir, tmp_path):
    qrels = tmp_path / "my.qrels"
    qrels.write_text("q5 0 d6 1\nq2 0 d1 0\n")
    ds = load_dataset(tiny_beir, qrels=qrels)
    assert ds.qrels.to_dict() == {"q5": {"d6": 1}, "q2": {"d1": 0}}
    assert sorted(ds.queries) == ["q2", "q5"]  # all queries read, then limited to the judged ones


def test_beir_zip(tiny_beir, tmp_path):
    zpath = tmp_path / "tinyset.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in tiny_beir.rglob("*"):
            if p.is_file():
                zf.write(p, "tinyset/" + p.relative_to(tiny_beir).as_posix())
    ds = load_dataset(zpath)
    assert ds.name == "tinyset/test"
    assert len(ds.corpus) == 6 and sorted(ds.queries) == ["q1", "q2"]
    assert load_dataset(zpath, split=None).qrels is None


def test_corpus_jsonl_alone(tmp_path):
    ds = load_dataset(_corpus_jsonl(tmp_path / "corpus.jsonl"))
    assert ds.name == "corpus"
    assert ds.corpus.ids() == ["d0", "d1", "d2", "d3"]
    assert ds.queries == {} and ds.qrels is None
    with pytest.raises(RerankerError, match=r"has no queries; give a queries file with --queries"):
        ds.require_queries()
    with pytest.raises(RerankerError, match=r"no relevance judgements; give a qrels file with --qrels"):
        ds.require_qrels()


def test_corpus_jsonl_with_jsonl_queries_and_qrels(tmp_path):
    corpus = _corpus_jsonl(tmp_path / "corpus.jsonl")
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(3)))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq2\td3\t2\n")
    ds = load_dataset(corpus, queries=queries, qrels=qrels)
    assert sorted(ds.queries) == ["q0", "q2"]
    assert ds.queries["q2"] == Query("q2", "query 2")
    assert ds.require_qrels().to_dict() == {"q0": {"d0": 1}, "q2": {"d3": 2}}
    assert ds.require_queries() is ds.queries


def test_corpus_jsonl_with_tsv_topics(tmp_path):
    corpus = _corpus_jsonl(tmp_path / "corpus.jsonl")
    topics = tmp_path / "topics.tsv"
    topics.write_text("1\tfirst topic\n2\tsecond topic\n")
    ds = load_dataset(corpus, queries=topics)
    assert ds.queries == {"1": Query("1", "first topic"), "2": Query("2", "second topic")}
    assert ds.qrels is None


def test_qrels_judging_no_given_query_keeps_all_queries(tmp_path):
    corpus = _corpus_jsonl(tmp_path / "corpus.jsonl")
    topics = tmp_path / "topics.tsv"
    topics.write_text("1\tfirst\n2\tsecond\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("99 0 d1 1\n")
    ds = load_dataset(corpus, queries=topics, qrels=qrels)
    assert sorted(ds.queries) == ["1", "2"]


def test_trec_dl_json(tmp_path):
    data = [
        {"query": "q one", "hits": [{"qid": "1", "docid": "p1", "rank": 1, "score": 2.0, "content": "passage one"}]},
        {"query": "q two", "hits": [{"qid": "2", "docid": "p2", "rank": 1, "score": 1.0, "content": "passage two"}]},
    ]
    path = tmp_path / "cands.json"
    path.write_text(json.dumps(data))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("2 0 p2 3\n")
    ds = load_dataset(path)
    assert sorted(ds.queries) == ["1", "2"] and ds.run.to_dict() == {"1": {"p1": 2.0}, "2": {"p2": 1.0}}
    ds = load_dataset(path, qrels=qrels)
    assert list(ds.queries) == ["2"]
    assert ds.qrels.to_dict() == {"2": {"p2": 3}}


@pytest.mark.slow
def test_real_trec_dl_json_with_qrels(trec_dl):
    ds = load_dataset(trec_dl / "bm25-top100.json", queries=trec_dl / "topics.tsv", qrels=trec_dl / "qrels.txt")
    assert len(ds.queries) == 43
    assert ds.run.num_entries() == 4300
    assert set(ds.qrels) == set(ds.queries)


def test_folder_of_documents(tmp_path):
    folder = tmp_path / "handbook"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n" + " ".join(f"w{i}" for i in range(10)), encoding="utf-8")
    (folder / "b.txt").write_text("B\nshort text\n", encoding="utf-8")
    ds = load_dataset(folder, chunking=ChunkConfig(words=4, overlap=1))
    assert ds.name == "handbook"
    assert ds.corpus.ids() == ["a.md#0", "a.md#1", "a.md#2", "b.txt#0"]
    assert ds.queries == {} and ds.qrels is None
    # default chunking: one passage per short file
    assert load_dataset(folder).corpus.ids() == ["a.md#0", "b.txt#0"]


def test_folder_of_documents_with_queries_and_qrels(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\nalpha", encoding="utf-8")
    topics = tmp_path / "t.tsv"
    topics.write_text("x\tabout alpha\ny\tabout beta\n")
    qrels = tmp_path / "q.txt"
    qrels.write_text("x 0 a.md#0 1\n")
    ds = load_dataset(folder, queries=topics, qrels=qrels)
    assert list(ds.queries) == ["x"]


def test_missing_path_with_data_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RerankerError, match=r"nope/corpus\.jsonl: no such file or folder"):
        load_dataset("nope/corpus.jsonl")


def test_missing_relative_path_without_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RerankerError, match="no such file or folder"):
        load_dataset("./nope-folder")


def test_unknown_ir_datasets_id():
    with pytest.raises(RerankerError, match="ir_datasets") as info:
        load_dataset("no-such-dataset-xyz")
    assert "no-such-dataset-xyz" in str(info.value)


def test_irds_prefix_forces_ir_datasets(tiny_beir):
    """With the prefix, even an existing BEIR folder's path is taken as an ir_datasets id."""
    with pytest.raises(RerankerError, match="ir_datasets"):
        load_dataset(f"irds:{tiny_beir}")
    with pytest.raises(RerankerError, match="ir_datasets"):
        load_dataset("irds:no-such-dataset-xyz")


def test_empty_corpus_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n\n")
    with pytest.raises(RerankerError, match="empty"):
        load_dataset(path)


def test_folder_without_supported_files(tmp_path):
    (tmp_path / "scan.pdf").write_bytes(b"%PDF")
    (tmp_path / ".notes.md").write_text("# hidden\ntext\n")
    with pytest.raises(RerankerError, match="empty"):
        load_dataset(tmp_path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("id,text\n1,hello\n")
    with pytest.raises(RerankerError, match=r"unknown data-set format '\.csv'"):
        load_dataset(path)


def test_missing_queries_file_option(tmp_path):
    corpus = _corpus_jsonl(tmp_path / "corpus.jsonl")
    with pytest.raises(RerankerError, match="no such file"):
        load_dataset(corpus, queries=tmp_path / "missing.tsv")


def test_dataset_require_methods():
    ds = Dataset(name="x", corpus=Corpus([Document("d", "t")]), queries={}, qrels=Qrels())
    with pytest.raises(RerankerError, match="'x' has no queries"):
        ds.require_queries()
    with pytest.raises(RerankerError, match="'x' has no relevance judgements"):
        ds.require_qrels()  # an empty Qrels counts as none
    ds.queries = {"q": Query("q", "t")}
    ds.qrels = Qrels({"q": {"d": 1}})
    assert ds.require_queries() == {"q": Query("q", "t")}
    assert ds.require_qrels() is ds.qrels
    assert repr(ds) == "<Dataset 'x': 1 docs, 1 queries, 1 judged queries>"
