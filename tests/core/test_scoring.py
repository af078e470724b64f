"""The model-folder loader: folders are told apart by their files, anything else is a clear error, and the core's
registry loads only the core's backend until the application registers the PyTorch student."""

from __future__ import annotations

import pytest

from reranker.errors import RerankerError
from reranker.scoring import MODEL_BACKENDS, detect_backend, load_model


def test_folders_are_told_apart_by_their_files(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "student_config.json").write_text("{}")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "onnx_manifest.json").write_text("{}")
    assert detect_backend(tmp_path / "student") == "torch"
    assert detect_backend(tmp_path / "export") == "onnx"


def test_a_student_folder_before_the_application_registers_torch_says_how(tmp_path, monkeypatch):
    """The core never imports ``student``: a PyTorch folder asked of the bare core names the way to load it."""
    monkeypatch.delitem(MODEL_BACKENDS.entries, "torch", raising=False)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "student_config.json").write_text("{}")
    with pytest.raises(RerankerError, match=r"'torch' is not registered.*register_backends\(\).*load_student"):
        load_model(tmp_path / "m")


def test_folders_that_hold_no_model_are_named(tmp_path):
    with pytest.raises(RerankerError, match="no such model folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RerankerError, match="not a model folder.*onnx_manifest.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(RerankerError, match="unknown model backend 'tensorflow'"):
        load_model(tmp_path / "empty", backend="tensorflow")


def test_registering_a_backend_twice_differently_is_refused():
    from reranker.registry import BackendSpec

    spec = MODEL_BACKENDS["onnx"]
    MODEL_BACKENDS.register("onnx", spec)  # the same spec again: a no-op
    with pytest.raises(RerankerError, match="already registered"):
        MODEL_BACKENDS.register("onnx", BackendSpec("elsewhere", "load", "cpu", "another"))
    assert MODEL_BACKENDS["onnx"] == spec
