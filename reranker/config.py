"""Config files and the data-set spec every config shares: loading, path rules, error wording.

- :func:`load_config_file`: the mapping in a YAML or TOML file, with a clear error for a missing
  or malformed one (the pipeline's, the cascade's and ``reranker distill --config``'s files);
- :func:`validation_problems`: a pydantic error as ``key.path: message; ...``;
- paths: relative paths are read against the config file's folder; ``package:`` paths point into
  the installed ``reranker`` package (the embedded demo corpus) (:func:`resolve_path`,
  :func:`looks_like_path`, :func:`check_paths`);
- :class:`DataSpec`: a data set (:func:`reranker.io.dataset.load_dataset`'s spec plus optional
  queries/qrels files and passage sizes), read by :func:`read_data`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RerankerError
from .io.documents import ChunkConfig


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or TOML file; a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise RerankerError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - both parsers raise their own types
        raise RerankerError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({exc})") from None
    if not isinstance(data, dict):
        raise RerankerError(f"{path}: expected a mapping of options at the top level")
    return data


class DataSpec(BaseModel):
    """A data set spec for :func:`reranker.io.dataset.load_dataset` (plus optional queries/qrels files)."""

    model_config = ConfigDict(extra="forbid")

    spec: str
    queries: str | None = None
    qrels: str | None = None
    split: str = "test"
    passage_words: int = Field(ChunkConfig.words, ge=10)
    passage_overlap: int = Field(ChunkConfig.overlap, ge=0)


def resolve_path(value: str, base: Path) -> Path:
    """``package:demo/docs`` -> inside the installed package; relative paths against ``base``."""
    if value.startswith("package:"):
        return Path(str(resources.files("reranker") / "data" / value[len("package:") :]))
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def looks_like_path(value: str) -> bool:
    return value.startswith(("package:", ".", "/", "~")) or ("/" in value and not value.startswith("irds:")) or Path(value).suffix != ""


def validation_problems(exc: ValidationError | Sequence[dict], top: str = "(top level)", *, skip: Sequence[str] = (),
                        limit: int | None = None) -> str:
    """``key.path: message; ...`` of a pydantic error (or its ``errors()`` list): each problem named by its key
    (``top`` for the whole object), location parts in ``skip`` left out, at most ``limit`` problems and a count of
    the rest. The one wording of schema problems: config files, distill options, the ONNX manifest, the server's 422s."""
    errors = list(exc.errors() if isinstance(exc, ValidationError) else exc)
    shown = errors if limit is None else errors[:limit]
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in skip) or top}: {e.get('msg', 'invalid')}" for e in shown]
    more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    return "; ".join(parts) + more


def json_or_text(value: str) -> Any:
    """A command-line or header value: its JSON value where it parses as JSON (numbers, lists, objects, true/null),
    else the text itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def key_values(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` items (values through :func:`json_or_text`) as a dict; an item without ``=`` is an error."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise RerankerError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = json_or_text(value)
    return out


def check_paths(where: str, paths, base: Path) -> None:
    """A :class:`RerankerError` naming every ``(key, spec)`` of ``paths`` that looks like a path and does not exist."""
    missing = []
    for key, spec in paths:
        if spec is not None and looks_like_path(spec):
            resolved = resolve_path(spec, base)
            if not resolved.exists():
                missing.append(f"{key}: {spec} ({resolved} does not exist)")
    if missing:
        raise RerankerError(f"{where}: missing path{'s' if len(missing) > 1 else ''}: " + "; ".join(missing))


def data_paths(prefix: str, data: DataSpec | None):
    """``(key, value)`` of the files a data spec names, for :func:`check_paths`."""
    if data is not None:
        yield f"{prefix}.spec", data.spec
        yield f"{prefix}.queries", data.queries
        yield f"{prefix}.qrels", data.qrels


def read_data(spec: DataSpec, base: Path):
    """The data set ``spec`` names, its paths read against ``base`` (``package:`` paths inside the package)."""
    from .io.dataset import load_dataset
    from .io.documents import ChunkConfig

    def path(value: str | None) -> str | None:
        return None if value is None else str(resolve_path(value, base)) if looks_like_path(value) else value

    return load_dataset(path(spec.spec), split=spec.split, queries=path(spec.queries), qrels=path(spec.qrels),
                        chunking=ChunkConfig(words=spec.passage_words, overlap=spec.passage_overlap))
