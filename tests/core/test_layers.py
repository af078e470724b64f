"""The layers hold at run time too: no import circle anywhere, the core's registries name only core modules, and
the import-linter contracts in pyproject.toml agree with each other."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import tomllib
from pathlib import Path

import pytest

import reranker
from reranker.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("reranker", "teacher", "student")


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _core_modules() -> list[str]:
    """The core: the lower layer of the exhaustive contract over ``reranker``."""
    container = next(c for c in _contracts() if c.get("containers") == ["reranker"])
    assert container.get("exhaustive") is True
    return [f"reranker.{m.strip()}" for m in container["layers"][-1].split(":")]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (module -> modules it imports): its strongly connected components of two or
    more modules, and modules that import themselves (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_circles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere():
    """Every import, lazy ones inside functions included (grimp reads them all); a package importing its own
    submodules (``__init__`` re-exports) is not a circle unless a submodule imports the package back."""
    grimp = pytest.importorskip("grimp")  # comes with import-linter (the dev extra)
    if importlib.util.find_spec("student") is None:
        pytest.skip("student is hidden (tests/without_torch.py); the full suite reads the whole graph")
    g = grimp.build_graph(*PACKAGES)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _cycles(graph) == []


def test_the_core_contract_lists_the_core_of_the_exhaustive_contract():
    core = _core_modules()
    forbidden = next(c for c in _contracts() if c.get("forbidden_modules") == ["teacher", "student"])
    assert sorted(forbidden["source_modules"]) == sorted(core)
    on_disk = {m.name for m in pkgutil.iter_modules(reranker.__path__)} - {"app"}
    assert {m.removeprefix("reranker.") for m in core} == on_disk


def test_the_cores_registries_name_only_core_modules():
    """A registry of the core that named ``student.models`` would let ``load_model`` reach a layer above it."""
    core = _core_modules()
    registries = []
    for name in core:
        module = importlib.import_module(name)
        submodules = [module]
        if hasattr(module, "__path__"):
            submodules += [importlib.import_module(f"{name}.{m.name}") for m in pkgutil.iter_modules(module.__path__)
                           if not m.name.endswith(("_backend", "dense"))]  # backends import their optional packages
        registries += [(f"{m.__name__}.{attr}", value) for m in submodules for attr, value in vars(m).items()
                       if isinstance(value, Registry)]
    assert {name for name, _ in registries} >= {"reranker.scoring.MODEL_BACKENDS", "reranker.retrieval.base.BACKENDS"}
    for name, registry in registries:
        for backend in registry.own:  # what an upper layer registered at its start-up is its own business
            spec = registry[backend]
            assert spec.module.startswith("reranker.") and not spec.module.startswith("reranker.app"), (name, backend, spec)
