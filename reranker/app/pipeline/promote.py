"""Versioned model folders and the promotion gate.

``models/`` holds ``v0001``, ``v0002``, ... (each the torch student in ``model/``, its
serving export in ``onnx/`` when there is one, and ``version.json``) and a ``CURRENT``
file naming the promoted version. A run's new student is promoted only if it is not
significantly worse than the current one on the run's dev set: both re-rank the dev
groups' candidates, gains are the dev labels (the teacher's soft labels, or the user's
feedback labels where given) on a 0..10 scale, and a paired t-test (ranx) on the chosen
metric must not find the new one worse at ``p < max_p``. Every version stays on disk and
loadable whatever the decision.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from reranker.app.pipeline.runner import Context
from reranker.errors import RerankerError
from reranker.records import Qrels, Run

log = logging.getLogger(__name__)

CURRENT = "CURRENT"


def current_version(models_dir: str | Path) -> Path | None:
    """The promoted version's folder, or None before the first promotion."""
    models_dir = Path(models_dir)
    marker = models_dir / CURRENT
    if not marker.is_file():
        return None
    folder = models_dir / marker.read_text().strip()
    if not folder.is_dir():
        raise RerankerError(f"{marker} names {folder.name!r}, which is not in {models_dir}")
    return folder


def version_model(folder: Path) -> Path:
    """The folder to load of a version: its ONNX export when it has one, else the torch student."""
    return folder / "onnx" if (folder / "onnx").is_dir() else folder / "model"


def dev_run(scorer, groups) -> Run:
    from reranker.rerank import score_pairs

    return score_pairs(scorer, [(g.query_id, c.doc_id, g.query, c.text) for g in groups for c in g.candidates], name="dev")


def promote(ctx: Context) -> dict[str, Any]:
    from reranker.evaluation import compare
    from reranker.io.groups import read_groups
    from reranker.scoring import load_model

    cfg = ctx.config.promote
    models_dir = Path(cfg.models_dir).expanduser()
    models_dir = models_dir if models_dir.is_absolute() else Path.cwd() / models_dir
    candidate, options = ctx.serving_model()
    current = current_version(models_dir)
    decision: dict[str, Any] = {"metric": cfg.metric, "max_p": cfg.max_p, "previous": current.name if current else None}
    if current is None:
        decision.update(promoted=True, reason="no current model")
    else:
        groups = read_groups(ctx.path("dev.jsonl"))
        qrels = Qrels({g.query_id: {c.doc_id: round(10 * c.label) for c in g.candidates} for g in groups}, name="dev")
        new = dev_run(load_model(candidate, **options), groups)
        new.name = "candidate"
        old = dev_run(load_model(version_model(current)), groups)
        old.name = "current"
        cmp = compare(qrels, [old, new], [cfg.metric], max_p=cfg.max_p)
        p = cmp.p_values["candidate"]["current"][cfg.metric]
        p = 1.0 if p != p else p  # NaN: the two rank every dev query alike, no difference to test
        new_score, old_score = cmp.scores["candidate"][cfg.metric], cmp.scores["current"][cfg.metric]
        worse = new_score < old_score and p < cfg.max_p
        decision.update(promoted=not worse, candidate_score=new_score, current_score=old_score, p_value=p,
                        reason=f"significantly worse than {current.name} (p={p:.3g})" if worse else "not significantly worse")
    version = _store_version(ctx, models_dir, candidate, decision)
    decision["version"] = version.name
    if decision["promoted"]:
        (models_dir / CURRENT).write_text(version.name + "\n")
        log.info("promoted %s (%s)", version.name, decision["reason"])
    else:
        log.warning("kept %s: the new student (%s) is %s", decision["previous"], version.name, decision["reason"])
    ctx.path("promotion.json").write_text(json.dumps(decision, indent=2) + "\n")
    return decision


def _store_version(ctx: Context, models_dir: Path, serving: Path, decision: dict[str, Any]) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    taken = sorted(int(p.name[1:]) for p in models_dir.glob("v[0-9]*") if p.name[1:].isdigit())
    folder = models_dir / f"v{(taken[-1] + 1) if taken else 1:04d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ctx.path("student", "model"), tmp / "model")
    if serving != ctx.path("student", "model"):
        shutil.copytree(serving, tmp / "onnx")  # every exported precision; load_model picks int8 on CPU, fp16 on GPU
    info = {"run": str(ctx.run_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": ctx.results.get("evaluate", {}).get("metrics"),
            "distill": ctx.results.get("distill"), "decision": decision}
    (tmp / "version.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.rename(folder)
    return folder
