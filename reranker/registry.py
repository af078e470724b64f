"""Explicit registries of named backends, imported only when asked for.

Every pluggable part (retrieval backends, teachers, query generators, scorers) lists its
backends by name with the module, the class and the install extra. Nothing is imported
until a name is looked up; an unknown name lists the known ones, and a backend whose
packages are missing names the extra that brings them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import MissingDependencyError, RerankerError


@dataclass(frozen=True)
class BackendSpec:
    module: str
    cls: str
    extra: str
    description: str


class Registry:
    """Names -> :class:`BackendSpec`; ``load(name)`` imports and returns the class."""

    def __init__(self, kind: str, entries: dict[str, BackendSpec]):
        self.kind = kind
        self.entries = entries

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __getitem__(self, name: str) -> BackendSpec:
        return self.entries[name]

    def items(self):
        return self.entries.items()

    def load(self, name: str) -> type:
        spec = self.entries.get(name)
        if spec is None:
            raise RerankerError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.entries)}")
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise MissingDependencyError(f"the {name!r} {self.kind}", spec.extra, exc) from exc
        return getattr(module, spec.cls)

    def create(self, name: str, **params):
        """An instance of the backend ``name``; parameters it does not take are a clear error."""
        cls = self.load(name)
        try:
            return cls(**params)
        except TypeError as exc:
            raise RerankerError(f"{self.kind} {name!r}: {exc}") from None
