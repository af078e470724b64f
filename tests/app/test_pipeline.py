"""`reranker pipeline run`: the whole loop on the embedded corpus with a tiny student, through the real CLI.

Killed with SIGKILL in the middle of labelling and rerun, a run ends with the same artifacts
as one that was never interrupted; an unchanged rerun skips every stage; feedback reruns the
loop and a second model version is stored and gated; broken configs fail before any work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import BERT_CONFIG, EXE, REPO, cli, kill_mid_labelling, labels_in, ok, tiny_bert_tokenizer, user_error

from reranker.app.cascade import load_cascade_config
from reranker.app.pipeline.evaluate import cascade_run
from reranker.io.dataset import demo_data
from reranker.records import Run
from reranker.scoring import load_model
from teacher.base import make_teacher

pytestmark = pytest.mark.integration


def tiny_config(tmp: Path, name: str) -> Path:
    tok = tmp / "tokenizer"
    if not tok.is_dir():
        tiny_bert_tokenizer().save_pretrained(tok)
    demo = demo_data()
    cfg = {
        "name": name, "run_dir": str(tmp / name), "seed": 0, "feedback": str(tmp / "feedback.jsonl"),
        "corpus": {"spec": str(demo / "docs")},
        "queries": {"sample": 40, "consistency_k": 0},
        "candidates": {"depth": 6},
        "labels": {"teacher": "ensemble", "batch_pairs": 6, "dev_share": 0.5},  # 20 dev groups: enough to fit the weights
        "distill": {"student": "cross-encoder", "model_config_overrides": dict(BERT_CONFIG, initializer_range=0.2),
                    "tokenizer": str(tok), "max_length": 64, "query_max_length": 16, "group_size": 4, "batch_queries": 4,
                    "max_steps": 12, "lr": 1e-3, "warmup_ratio": 0.0, "eval_every": 6},
        "export": {"precisions": ["fp32", "int8"], "serve": "int8"},
        "evaluate": {"data": {"spec": str(demo / "docs"), "queries": str(demo / "queries.jsonl"), "qrels": str(demo / "qrels.tsv")},
                     "top_k": 8, "cascade": {"enabled": True, "student_top_k": 8, "teacher_top_k": 3}},
        "promote": {"models_dir": str(tmp / "models")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and one killed in labelling and resumed."""
    tmp = tmp_path_factory.mktemp("pipeline")
    whole = ok("pipeline", "run", tiny_config(tmp, "whole"), cwd=tmp)
    killed_cfg = tiny_config(tmp, "killed")
    store = tmp / "killed" / "labels.sqlite"
    kill_mid_labelling([str(EXE), "pipeline", "run", str(killed_cfg)], store, cwd=tmp)
    at_kill = labels_in(store)
    resumed = ok("pipeline", "run", killed_cfg, cwd=tmp)
    # the tests that only read the runs read these copies: the rerun scenario changes the live run folders
    for name in ("whole", "killed"):
        shutil.copytree(tmp / name, tmp / "snapshot" / name)
    return {"tmp": tmp, "whole": tmp / "whole", "killed": tmp / "killed", "at_kill": at_kill, "snapshot": tmp / "snapshot",
            "whole_out": whole, "resumed_out": resumed}


def test_a_killed_run_resumes_to_the_same_artifacts(runs):
    a, b = runs["snapshot"] / "whole", runs["snapshot"] / "killed"
    total = sum(1 for line in (a / "candidates.trec").read_text().splitlines() if line.strip())
    assert 30 <= runs["at_kill"] < total  # killed in the middle of labelling
    log = runs["resumed_out"].stderr
    assert "queries: up to date, skipped" in log and "candidates: up to date, skipped" in log
    assert "labels: resuming an unfinished run" in log
    labels = json.loads((b / "manifest.json").read_text())["stages"]["labels"]["metrics"]
    assert labels["pairs_resumed"] == runs["at_kill"] and labels["pairs_labelled"] == total - runs["at_kill"]
    for name in ("queries.jsonl", "candidates.trec"):
        assert (a / name).read_text() == (b / name).read_text(), name

    def groups(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    # labels of resumed batches agree to float rounding (batch boundaries differ), so compare with a tolerance
    for name in ("groups.jsonl", "train.jsonl", "dev.jsonl"):
        x, y = groups(a / name), groups(b / name)
        assert [g["query_id"] for g in x] == [g["query_id"] for g in y], name
        for gx, gy in zip(x, y):
            lx = {c["doc_id"]: c["label"] for c in gx["candidates"]}
            ly = {c["doc_id"]: c["label"] for c in gy["candidates"]}
            assert lx.keys() == ly.keys() and [lx[d] for d in lx] == pytest.approx([ly[d] for d in lx], abs=1e-5), name
    ga = groups(a / "groups.jsonl")
    # the students trained on those labels agree to training noise (float sums in another order)
    pairs = [(g["query"], c["text"]) for g in ga[:5] for c in g["candidates"]]
    for folder in ("student/model", "onnx"):
        assert load_model(a / folder).score(pairs) == pytest.approx(load_model(b / folder).score(pairs), abs=1e-2), folder
    ma, mb = (json.loads((r / "evaluation" / "report.json").read_text())["metrics"] for r in (a, b))
    assert ma.keys() == mb.keys()
    for run in ma:
        assert ma[run] == pytest.approx(mb[run], abs=0.02)
    assert set(ma) == {"bm25s", "student", "teacher", "cascade"}
    # the printed report ends with how to serve the model
    assert f"reranker serve {runs['whole'] / 'onnx'}" in runs["whole_out"].stdout
    assert "| student |" in runs["whole_out"].stdout


def test_the_evaluation_writes_the_cascade_for_serve(runs, tmp_path, monkeypatch):
    a = runs["whole"]
    monkeypatch.chdir(tmp_path)  # the file holds no path relative to the run
    cfg = load_cascade_config(a / "cascade.yaml")
    assert (cfg.first_stage, cfg.student_top_k, cfg.teacher, cfg.teacher_top_k) == ("bm25s", 8, "ensemble", 3)
    # the cascade's teacher is the one that labelled the run: the ensemble with the weights fitted on the dev groups
    labels = json.loads((a / "manifest.json").read_text())["stages"]["labels"]["metrics"]
    fit = json.loads((a / "teacher.json").read_text())["fit"]
    assert fit["groups"] == labels["fit_groups"] == labels["dev_groups"] == 20 and fit["masked"] == 20
    assert labels["weights"] == fit["weights"] == (fit["fitted"] if fit["adopted"] else [1.0, 1.0]) and labels["fit_adopted"] == fit["adopted"]
    assert [m["weight"] for m in cfg.teacher_params["members"]] == fit["weights"] and sum(fit["fitted"]) == pytest.approx(2.0, abs=1e-3)
    teacher = make_teacher(cfg.teacher, **cfg.teacher_params)
    assert teacher.fingerprint == labels["teacher"] and (teacher.fingerprint != make_teacher("ensemble").fingerprint) == fit["adopted"]
    assert Path(cfg.corpus.spec) == (demo_data() / "docs").resolve() and cfg.corpus.passage_words == 120
    assert f"reranker serve {a / 'onnx'} --cascade {a / 'cascade.yaml'}" in runs["whole_out"].stdout
    entry = json.loads((a / "manifest.json").read_text())["stages"]["evaluate"]
    assert "cascade.yaml" in entry["outputs"]  # an edited or deleted file reruns the evaluation


def test_reruns_skip_what_is_current_and_follow_changed_inputs(runs):
    """One scenario on the live run, in this order (each step's expectation depends on the steps before it, so they
    are one test, not several that share state): an unchanged rerun skips every stage; --from reruns that stage and
    the later ones; a changed output reruns its stage; new feedback reruns the loop and promotes a new version."""
    tmp, a = runs["tmp"], runs["whole"]
    manifest = json.loads((a / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["queries", "candidates", "labels", "distill", "export", "evaluate", "promote"]
    for name, entry in manifest["stages"].items():
        assert entry["status"] == "done" and entry["seconds"] >= 0 and entry["outputs"], name
    assert manifest["config"]["distill"]["max_steps"] == 12 and "torch" in manifest["versions"]
    assert (a / "pipeline.log").read_text().count("labelled") >= 1
    again = ok("pipeline", "run", tmp / "whole.yaml", cwd=tmp)
    assert again.stderr.count("up to date, skipped") == 7, again.stderr
    assert json.loads((a / "manifest.json").read_text())["stages"] == manifest["stages"]
    # --from reruns that stage and the later ones only
    part = ok("pipeline", "run", tmp / "whole.yaml", "--from", "evaluate", cwd=tmp)
    assert part.stderr.count("up to date, skipped") == 5 and "evaluate: running" in part.stderr
    # a changed output file is noticed: its stage runs again, the earlier ones stay skipped
    (a / "promotion.json").write_text((a / "promotion.json").read_text() + "\n")
    rerun = ok("pipeline", "run", tmp / "whole.yaml", cwd=tmp)
    assert "promote: running" in rerun.stderr and rerun.stderr.count("up to date, skipped") == 6, rerun.stderr

    # new feedback is a new input: the loop reruns and a new version is promoted or kept beside the current one
    models = tmp / "models"
    before = sorted(p.name for p in models.glob("v*"))
    group = json.loads((a / "groups.jsonl").read_text().splitlines()[0])
    worst = group["candidates"][-1]
    ok("feedback", "add", "--file", tmp / "feedback.jsonl", "--query", group["query"], "--doc-id", worst["doc_id"],
       "--label", 3, "--grade-max", 3)
    assert user_error("feedback", "add", "--file", tmp / "feedback.jsonl", "--query", "q", "--doc-id", "d", "--label", 2,
                      match="outside [0, 1]")
    res = ok("pipeline", "run", tmp / "whole.yaml", cwd=tmp)
    assert "queries: running" in res.stderr
    labels = json.loads((a / "manifest.json").read_text())["stages"]["labels"]["metrics"]
    assert labels["feedback_labels"] >= 1
    fb_groups = [json.loads(line) for line in (a / "groups.jsonl").read_text().splitlines()]
    judged = [c["label"] for g in fb_groups for c in g["candidates"] if c["doc_id"] == worst["doc_id"] and g["query"] == group["query"]]
    assert judged == [1.0]
    versions = sorted(p.name for p in models.glob("v*"))
    assert len(versions) == len(before) + 1 and (models / "CURRENT").read_text().strip() in versions
    decision = json.loads((a / "promotion.json").read_text())
    assert decision["previous"] is not None and 0.0 <= decision["p_value"] <= 1.0
    for v in versions:  # every version stays loadable, whatever the gate decided
        info = json.loads((models / v / "version.json").read_text())
        assert "decision" in info
        assert load_model(models / v / "onnx").score([("invoice", "expense claims")]).shape == (1,)


def test_fit_weights_false_keeps_the_configured_teacher(runs):
    """labels.fit_weights: false labels with the configured ensemble (no check, no fit in teacher.json). (Whether the
    queries rerun too depends on the shared feedback file, which the rerun scenario may have changed before.)"""
    tmp = runs["tmp"]
    cfg = yaml.safe_load((tmp / "killed.yaml").read_text())  # the killed run's live folder: the other tests read its snapshot
    cfg["labels"]["fit_weights"] = False
    (tmp / "nofit.yaml").write_text(yaml.safe_dump(cfg))
    res = ok("pipeline", "run", tmp / "nofit.yaml", cwd=tmp)
    assert "labels: running" in res.stderr
    spec = json.loads((runs["killed"] / "teacher.json").read_text())
    assert spec == {"teacher": "ensemble", "params": {}, "fit": None}
    labels = json.loads((runs["killed"] / "manifest.json").read_text())["stages"]["labels"]["metrics"]
    assert "weights" not in labels and labels["teacher"] == make_teacher("ensemble").fingerprint


def test_broken_configs_are_rejected_before_any_work(tmp_path):
    good = yaml.safe_load(tiny_config(tmp_path, "x").read_text())
    cases = [
        ({"distill": {**good["distill"], "learning_rate": 0.1}}, "learning_rate: Extra inputs are not permitted"),
        ({"candidates": {"depth": "many"}}, "candidates.depth: Input should be a valid integer"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"corpus": {"spec": str(tmp_path / "nope")}}, "corpus.spec"),
        ({"evaluate": {"data": {"spec": str(tmp_path / "docs"), "qrels": "./missing.tsv"}}}, "evaluate.data.qrels"),
        ({"distill": {**good["distill"], "output_dir": "x"}}, "output_dir are set by the pipeline"),
    ]
    for change, message in cases:
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump({**good, **change}))
        user_error("pipeline", "run", path, match=message)
    assert not (tmp_path / "x").exists()  # nothing ran
    user_error("pipeline", "run", tmp_path / "x.yaml", "--from", "training", match="no stage 'training'")
    res = cli("pipeline", "run", tmp_path / "missing.yaml")
    assert res.returncode == 2 and "no such config file" in res.stderr


def test_cascade_puts_the_teachers_picks_first():
    first = Run({"q": {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0}})
    student = Run({"q": {"a": 0.1, "b": 0.9, "c": 0.8, "d": 0.3, "e": 0.95}})
    teacher = Run({"q": {"b": 0.2, "c": 0.7}})
    out = cascade_run(first, student, teacher, student_top_k=4, teacher_top_k=2)
    # e is outside the first stage's top 4; the student's top 2 (b, c) are re-ordered by the teacher
    assert [h.doc_id for h in out.ranking("q")] == ["c", "b", "d", "a"]


@pytest.mark.parametrize("name", ["pipeline-gpu-t5-base.yaml", "pipeline-openai-teacher.yaml"])
def test_shipped_configs_are_valid(name):
    from reranker.app.pipeline import DEFAULT_CONFIG, PipelineConfig, load_pipeline_config

    cfg = PipelineConfig(**yaml.safe_load((REPO / "configs" / name).read_text()))
    assert cfg.evaluate.data is not None and cfg.promote.enabled
    default, _ = load_pipeline_config(DEFAULT_CONFIG)  # the embedded default's paths all resolve
    assert default.export.precisions == ["auto"] and default.export.serve == "auto" and default.evaluate.cascade.enabled


def test_distill_fingerprint_covers_defaults_and_the_recipe(tmp_path, monkeypatch):
    """A run made by older code or under other defaults is not 'up to date': the distill stage's fingerprint input
    holds every resolved setting and the training code's recipe version, not only the options the config names."""
    import student.distill_config
    from reranker.app.pipeline import PipelineConfig
    from reranker.app.pipeline.stages import STAGE_LIST

    cfg = PipelineConfig(**yaml.safe_load(tiny_config(tmp_path, "fp").read_text()))
    distill = next(s for s in STAGE_LIST if s.name == "distill")
    section = distill.section(cfg)
    assert section["max_pairs"] == student.distill_config.DistillConfig.model_fields["max_pairs"].default  # a default, not in the yaml
    assert section["recipe"] == student.distill_config.RECIPE_VERSION and "train" not in section
    monkeypatch.setattr(student.distill_config, "RECIPE_VERSION", "a later recipe")
    assert distill.section(cfg) != section


def test_export_stage_defaults_to_auto_on_the_runs_own_dev_pairs(runs, tmp_path):
    """The pipeline's default export measures fp32 and both int8 graphs on the run's held-out synthetic pairs
    (no judgements: fidelity to fp32), keeps the fastest within max_ndcg_drop, and evaluation loads that one."""
    from reranker.app.pipeline import PipelineConfig
    from reranker.app.pipeline.runner import Context
    from reranker.app.pipeline.stages import stage_export

    data = yaml.safe_load(tiny_config(tmp_path, "auto").read_text())
    del data["export"]
    cfg = PipelineConfig(**data)
    assert cfg.export.precisions == ["auto"] and cfg.export.serve == "auto" and cfg.export.max_ndcg_drop == 0.005
    ctx = Context(cfg, tmp_path / "auto", tmp_path)
    shutil.copytree(runs["snapshot"] / "whole" / "student" / "model", ctx.path("student", "model"))
    shutil.copyfile(runs["snapshot"] / "whole" / "dev.jsonl", ctx.path("dev.jsonl"))
    choice = stage_export(ctx)["choice"]
    assert "dev.jsonl (labelled groups" in choice["sample"] and "no judgements" in choice["measured_against"]
    assert choice["max_ndcg_drop"] == 0.005 and len(choice["candidates"]) >= 1
    chosen = next(c for c in choice["candidates"] if c["name"] == choice["candidate"])
    assert chosen["within_budget"] and chosen["ndcg_drop"] <= 0.005
    folder, options = ctx.serving_model()
    assert folder == ctx.path("onnx") and options == {}
    assert load_model(folder, **options).precision == choice["precision"]


def test_the_evaluations_teacher_scores_whole_query_groups():
    """The teacher re-ranks each query's whole candidate list in one call (the ensemble's z-scores are per query): batches
    smaller than a group must not split it, or each part is normalised on its own."""
    from reranker.app.pipeline.evaluate import _teacher_rerank
    from reranker.io.dataset import load_dataset
    from reranker.retrieval import build_index
    from teacher.base import Pair

    ds = load_dataset(demo_data() / "docs", queries=demo_data() / "queries.jsonl", qrels=demo_data() / "qrels.tsv")
    queries = dict(list(ds.require_queries().items())[:3])
    first = build_index(ds.corpus, "bm25s").search({q: v.text for q, v in queries.items()}, k=10)
    ens = make_teacher("ensemble", members=[{"name": "bm25"}])
    ens.prepare(ds.corpus)
    run, _ = _teacher_rerank(ens, queries, ds.corpus, first, top_k=10, batch_pairs=4)
    for qid in first:
        group = [Pair(qid, h.doc_id, queries[qid].text, ds.corpus[h.doc_id].contents) for h in first.ranking(qid)]
        whole = {p.doc_id: j.score for p, j in zip(group, ens.score_batch(group))}
        assert len(group) == 10 and dict(run[qid]) == pytest.approx(whole, abs=1e-9)
