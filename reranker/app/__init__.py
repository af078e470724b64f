"""The application: the ``reranker`` CLI, the pipeline, the HTTP server, the cascade and the demo.

It is the top layer: it may import ``teacher``, ``student`` and the core (``reranker.*`` outside
``app``); nothing below imports it (``pyproject.toml``'s import-linter contracts). Importing it
has no side effects; its entry points call :func:`register_backends` at start-up.
"""

from __future__ import annotations

from reranker.registry import BackendSpec

#: what the application adds to the core's model registry (:data:`reranker.scoring.MODEL_BACKENDS`)
STUDENT_BACKEND = BackendSpec("student.models", "load_student", "train", "a PyTorch student folder (student_config.json)")


def register_backends() -> None:
    """Register the PyTorch student as the ``torch`` model backend (idempotent; imports nothing heavy)."""
    from reranker.scoring import MODEL_BACKENDS

    MODEL_BACKENDS.register("torch", STUDENT_BACKEND)
