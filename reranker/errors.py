"""User-facing errors.

Every problem caused by the user's input (a missing file, a malformed line, an unknown
dataset id) raises :class:`RerankerError` or a subclass. The CLI prints its message and
exits with status 2, without a traceback; library users can catch one class.
"""

from __future__ import annotations

from pathlib import Path


class RerankerError(Exception):
    """An error in the user's input or set-up, with a message that says how to fix it."""


class DataFormatError(RerankerError):
    """A file does not have the expected format. Names the file, the line and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class MissingDependencyError(RerankerError):
    """An optional backend was asked for but its packages are not installed."""

    def __init__(self, what: str, extra: str, cause: BaseException | None = None):
        hint = f'pip install "enterprise-reranker[{extra}]"'
        detail = f" ({cause})" if cause else ""
        super().__init__(f"{what} needs the '{extra}' extra{detail}. Install it with: {hint}")
