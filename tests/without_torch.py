"""Run ``tests/core`` with neither torch nor ``student`` importable: the core is the base layer and needs neither.

``python tests/without_torch.py [pytest args]`` (a step of ``make test``): every finder on ``sys.meta_path`` is
wrapped so that it finds neither package, as if they were not installed: ``import torch`` / ``import student`` raise
ModuleNotFoundError and ``importlib.util.find_spec`` answers None, so libraries that probe for torch (transformers,
scipy) see it absent. Tests of core modules that wrap an optional torch library (dense
retrieval through sentence-transformers) skip here and run in the full suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

BLOCKED = ("torch", "student")


class Hidden:
    """A finder that finds what ``finder`` finds, except the blocked packages and their modules."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


def main(argv: list[str]) -> int:
    already = [name for name in BLOCKED if name in sys.modules]
    if already:
        raise SystemExit(f"without_torch: {', '.join(already)} imported before the block")
    sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
    import pytest

    tests = Path(__file__).resolve().parent
    code = pytest.main([str(tests / "core"), "-p", "no:cacheprovider", *argv])
    leaked = [name for name in BLOCKED if name in sys.modules]
    if leaked:
        print(f"without_torch: {', '.join(leaked)} got imported after all", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
