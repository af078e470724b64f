"""Fixtures of the application tests: the tiny cross-encoder the server tests serve, and its direct scorer."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import save_tiny_ce

from reranker.app import register_backends
from reranker.scoring import load_model


@pytest.fixture(autouse=True, scope="session")
def application_started():
    """The application's start-up, as the CLI and the server run it: the PyTorch student is the ``torch`` backend."""
    register_backends()


@pytest.fixture(scope="module")
def ce_folder(tmp_path_factory) -> Path:
    """The tiny BERT cross-encoder (seeded) saved as a student folder."""
    return save_tiny_ce(tmp_path_factory.mktemp("ce"))


@pytest.fixture(scope="module")
def reference(ce_folder):
    """The served folder loaded directly: what the server's scores must equal."""
    return load_model(ce_folder)
