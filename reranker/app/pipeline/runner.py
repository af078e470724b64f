"""Stages in one run folder, with a manifest that makes reruns cheap and crashes harmless.

Each stage has a fingerprint: a hash of its config section and of the checksums of what
the stages before it wrote. A stage is skipped when the manifest records it as done with
the same fingerprint and its outputs still have the recorded checksums. A stage that was
started but not finished (a crash, kill -9) runs again and resumes through its own state
(the label store skips labelled pairs; distillation restarts from its checkpoint); if its
fingerprint changed since it started, its old outputs are removed first. ``--from STAGE``
reruns that stage and every later one.

The manifest (``manifest.json``) also records the config, package versions, timings and
metrics; ``pipeline.log`` in the run folder gets the whole log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reranker.app.pipeline.config import PipelineConfig
from reranker.config import DataSpec, read_data
from reranker.errors import RerankerError
from reranker.io.files import sha256

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class Context:
    """What a stage sees: the config, the run folder, and the folder the config's paths are read against."""

    config: PipelineConfig
    run_dir: Path
    base: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # data sets loaded once per run

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def data(self, spec: DataSpec):
        """The data set ``spec`` names (loaded once per run)."""
        key = json.dumps(spec.model_dump(), sort_keys=True)
        if key not in self.cache:
            self.cache[key] = read_data(spec, self.base)
        return self.cache[key]

    def teacher(self) -> tuple[str, dict[str, Any]]:
        """The teacher (name, parameters) that labelled this run: ``teacher.json`` of the labels stage (an ensemble's
        fitted weights), else the config's."""
        from teacher.base import read_teacher_file

        path = self.path("teacher.json")
        if path.is_file():
            return read_teacher_file(path)
        return self.config.labels.teacher, dict(self.config.labels.params)

    def serving_model(self) -> tuple[Path, dict[str, Any]]:
        """The folder (and load options) that evaluation and promotion use and `serve` should get:
        the ONNX export at ``export.serve`` precision when there is one, else the torch student."""
        e = self.config.export
        if e.enabled and self.path("onnx").is_dir():
            return self.path("onnx"), {} if e.serve == "auto" else {"precision": e.serve}
        return self.path("student", "model"), {}


@dataclass(frozen=True)
class Stage:
    name: str
    outputs: tuple[str, ...]  # files or folders in the run folder
    run: Callable[[Context], dict[str, Any]]  # returns the stage's metrics / facts for the manifest
    section: Callable[[PipelineConfig], Any]  # the part of the config it depends on (its fingerprint's input)
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    inputs: Callable[[Context], dict[str, Any]] = lambda ctx: {}  # files outside the run folder it reads (checksums)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("enterprise-reranker", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "ranx", "bm25s"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Manifest:
    """``manifest.json``: written atomically after every change."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / MANIFEST
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise RerankerError(f"{self.path}: not valid JSON ({exc}); remove it to start the run afresh") from None

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def set_stage(self, name: str, entry: dict[str, Any]) -> None:
        self.data["stages"][name] = entry
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
        tmp.replace(self.path)


def _is_current(entry: dict[str, Any], fingerprint: str, ctx: Context) -> bool:
    if entry.get("status") != "done" or entry.get("fingerprint") != fingerprint:
        return False
    for rel, digest in entry.get("outputs", {}).items():
        p = ctx.path(rel)
        if not p.exists() or sha256(p) != digest:
            return False
    return True


def run_stages(ctx: Context, stages: list[Stage], start_from: str | None = None, progress: Callable[[str], None] | None = None) -> Manifest:
    """Run (or skip) ``stages`` in order; returns the manifest."""
    names = [s.name for s in stages]
    if start_from is not None and start_from not in names:
        raise RerankerError(f"--from {start_from!r}: no such stage; the stages are {', '.join(names)}")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(ctx.run_dir)
    manifest.data.update(name=ctx.config.name, config=_jsonable(ctx.config), versions=versions())
    manifest.save()
    forced = False
    upstream = ""
    say = progress or (lambda msg: log.info("%s", msg))
    for stage in stages:
        forced = forced or stage.name == start_from
        if not stage.enabled(ctx.config):
            manifest.set_stage(stage.name, {"status": "disabled"})
            say(f"{stage.name}: disabled in the config")
            continue
        fingerprint = hashlib.sha256(
            json.dumps({"section": _jsonable(stage.section(ctx.config)), "inputs": stage.inputs(ctx), "upstream": upstream},
                       sort_keys=True).encode()
        ).hexdigest()
        entry = manifest.stage(stage.name)
        if not forced and _is_current(entry, fingerprint, ctx):
            say(f"{stage.name}: up to date, skipped")
            ctx.results[stage.name] = entry.get("metrics", {})
        else:
            if forced or entry.get("fingerprint") not in (None, fingerprint):
                for rel in stage.outputs:  # stale outputs of other inputs: start this stage afresh
                    p = ctx.path(rel)
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            elif entry.get("status") == "running":
                say(f"{stage.name}: resuming an unfinished run")
            manifest.set_stage(stage.name, {"status": "running", "fingerprint": fingerprint, "started": time.time()})
            say(f"{stage.name}: running")
            start = time.perf_counter()
            metrics = stage.run(ctx) or {}
            outputs = {rel: sha256(ctx.path(rel)) for rel in stage.outputs if ctx.path(rel).exists()}
            entry = {"status": "done", "fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 2),
                     "outputs": outputs, "metrics": _jsonable(metrics)}
            manifest.set_stage(stage.name, entry)
            ctx.results[stage.name] = entry["metrics"]
            say(f"{stage.name}: done in {entry['seconds']:.1f} s")
        upstream = hashlib.sha256((upstream + json.dumps(entry.get("outputs", {}), sort_keys=True)).encode()).hexdigest()
    return manifest
