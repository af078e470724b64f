"""Explicit registries of named backends, imported only when asked for.

Every pluggable part (retrieval backends, teachers, query generators, scorers) lists its
backends by name with the module, the class and the install extra. A registry names only
modules of its own layer or below: an upper layer adds its backends at start-up with
:meth:`Registry.register` (the application registers the PyTorch student on the core's
model registry). Nothing is imported until a name is looked up; an unknown name lists the
known ones, and a backend whose packages are missing names the extra that brings them.
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

    def __init__(self, kind: str, entries: dict[str, BackendSpec], unregistered: dict[str, str] | None = None):
        self.kind = kind
        self.entries = dict(entries)
        #: the names its own module gave it (the rest were registered by an upper layer at start-up)
        self.own = frozenset(entries)
        #: names an upper layer registers at its start-up -> what to do when one is asked for before that
        self.unregistered = dict(unregistered or {})

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __getitem__(self, name: str) -> BackendSpec:
        return self.entries[name]

    def items(self):
        return self.entries.items()

    def register(self, name: str, spec: BackendSpec) -> None:
        """Add ``name`` (an upper layer's backend, registered at its start-up); the same spec again is a no-op."""
        known = self.entries.get(name)
        if known is not None and known != spec:
            raise RerankerError(f"{self.kind} {name!r} is already registered as {known.module}.{known.cls}")
        self.entries[name] = spec

    def load(self, name: str) -> type:
        spec = self.entries.get(name)
        if spec is None:
            hint = self.unregistered.get(name)
            if hint:
                raise RerankerError(f"the {self.kind} {name!r} is not registered: {hint}")
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
