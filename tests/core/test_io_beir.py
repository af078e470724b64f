"""BEIR folders and zips: splits, layouts inside a zip, clear errors, and the real SciFact zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from reranker.errors import DataFormatError, RerankerError
from reranker.io.beir import is_beir_folder, load_beir


def _zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return dest


def _check_test_split(ds, name):
    assert ds.name == f"{name}/test"
    assert len(ds.corpus) == 6
    assert ds.corpus.ids() == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert ds.corpus["d1"].title == "Solar power"
    assert ds.corpus["d1"].contents.startswith("Solar power Photovoltaic")
    assert sorted(ds.queries) == ["q1", "q2"]  # only the judged queries of the split
    assert ds.queries["q2"].text == "energy storage"
    assert ds.qrels.to_dict() == {"q1": {"d1": 2, "d4": 0}, "q2": {"d4": 1}}
    assert ds.qrels.name == f"{name}/test"
    assert ds.run is None


def test_is_beir_folder(tiny_beir, tmp_path):
    assert is_beir_folder(tiny_beir)
    assert not is_beir_folder(tmp_path)
    assert not is_beir_folder(tiny_beir / "corpus.jsonl")


def test_folder_test_split(tiny_beir):
    _check_test_split(load_beir(tiny_beir), "tiny")


def test_folder_train_split(tiny_beir):
    ds = load_beir(tiny_beir, split="train")
    assert ds.name == "tiny/train"
    assert sorted(ds.queries) == ["q3", "q4"]
    assert ds.qrels.to_dict() == {"q3": {"d2": 1}, "q4": {"d3": 1, "d1": 0}}


def test_folder_no_split_keeps_all_queries_and_no_qrels(tiny_beir):
    ds = load_beir(tiny_beir, split=None)
    assert ds.name == "tiny"
    assert ds.qrels is None
    assert sorted(ds.queries) == ["q1", "q2", "q3", "q4", "q5"]
    assert len(ds.corpus) == 6


def test_zip_with_files_at_top_level(tiny_beir, tmp_path):
    zpath = _zip_folder(tiny_beir, tmp_path / "flat.zip")
    _check_test_split(load_beir(zpath), "flat")
    assert sorted(load_beir(zpath, split="train").queries) == ["q3", "q4"]


def test_zip_with_files_in_a_subfolder(tiny_beir, tmp_path):
    zpath = _zip_folder(tiny_beir, tmp_path / "nested.zip", prefix="tiny/")
    _check_test_split(load_beir(zpath), "nested")
    ds = load_beir(zpath, split=None)
    assert ds.qrels is None and len(ds.queries) == 5


def test_missing_split_lists_available_splits_folder(tiny_beir):
    with pytest.raises(RerankerError, match=r"no qrels for split 'dev' \(splits here: test, train\)"):
        load_beir(tiny_beir, split="dev")


def test_missing_split_lists_available_splits_zip(tiny_beir, tmp_path):
    zpath = _zip_folder(tiny_beir, tmp_path / "nested.zip", prefix="tiny/")
    with pytest.raises(RerankerError, match=r"tiny/qrels/dev\.tsv: no qrels for split 'dev' \(splits here: test, train\)"):
        load_beir(zpath, split="dev")


def test_missing_split_without_qrels_folder(tiny_beir):
    for p in (tiny_beir / "qrels").iterdir():
        p.unlink()
    (tiny_beir / "qrels").rmdir()
    with pytest.raises(RerankerError, match=r"splits here: none"):
        load_beir(tiny_beir)


def test_zip_without_corpus(tmp_path):
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("data/queries.jsonl", '{"_id": "q1", "text": "x"}\n')
    with pytest.raises(RerankerError, match=r"no corpus\.jsonl inside") as info:
        load_beir(zpath)
    assert str(zpath) in str(info.value)


def test_zip_without_queries(tmp_path):
    zpath = tmp_path / "noq.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("corpus.jsonl", '{"_id": "d1", "text": "x"}\n')
    with pytest.raises(RerankerError, match=r"queries\.jsonl: missing"):
        load_beir(zpath)


def test_corrupt_zip(tmp_path):
    zpath = tmp_path / "corrupt.zip"
    zpath.write_bytes(b"this is not a zip archive at all\n" * 10)
    with pytest.raises(RerankerError, match="not a valid zip file") as info:
        load_beir(zpath)
    assert str(zpath) in str(info.value)


def test_error_inside_zip_names_member_and_line(tiny_beir, tmp_path):
    with (tiny_beir / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write("{broken\n")
    zpath = _zip_folder(tiny_beir, tmp_path / "broken.zip", prefix="tiny/")
    with pytest.raises(DataFormatError, match=r"broken\.zip:tiny/corpus\.jsonl, line 7: not valid JSON"):
        load_beir(zpath)


@pytest.mark.slow
def test_real_scifact_test_split(scifact_zip):
    ds = load_beir(scifact_zip)
    assert ds.name == "scifact/test"
    assert len(ds.corpus) == 5183
    assert len(ds.queries) == 300
    assert len(ds.qrels) == 300
    assert ds.qrels.num_entries() == 339
    assert set(ds.queries) == set(ds.qrels)
    doc = ds.corpus["4983"]
    assert doc.title.startswith("Microstructural development of human newborn cerebral white matter")
    assert doc.text


@pytest.mark.slow
def test_real_scifact_train_split(scifact_zip):
    ds = load_beir(scifact_zip, split="train")
    assert len(ds.queries) == 809
    assert ds.qrels.num_entries() == 919
    assert set(ds.queries) == set(ds.qrels)


def test_missing_path_raises_reranker_error(tmp_path):
    with pytest.raises(RerankerError):
        load_beir(tmp_path / "nope.zip")
