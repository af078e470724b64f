"""Distillation end to end on tiny models: the same labels train a T5 and a BERT student."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BERT_CONFIG, REPO, T5_CONFIG, WORDS, tiny_bert_tokenizer, tiny_t5_tokenizer

from reranker.errors import DataFormatError, RerankerError
from reranker.records import Corpus, Document, Query
from student.models import load_student
from student.train import distill, load_config
from teacher.store import LabelStore

TOPICS = [("solar", "panels"), ("wind", "turbines"), ("coal", "burning"), ("batteries", "storage"), ("energy", "power")]


def write_groups(folder: Path) -> tuple[Path, Path]:
    """Labelled groups through the real label store: the teacher prefers the document that shares the query's words."""
    docs = {f"d{i}": f"{a} {b} convert store work" for i, (a, b) in enumerate(TOPICS)}
    corpus = Corpus(Document(k, v) for k, v in docs.items())
    queries = {f"q{i}-{r}": Query(f"q{i}-{r}", f"how do {a} {b} work" if r else f"{a} {b}") for i, (a, b) in enumerate(TOPICS) for r in range(4)}
    with LabelStore(folder / "labels.sqlite") as store:
        rows = []
        for qid in queries:
            i = int(qid[1:].split("-")[0])
            for d in docs:
                good = d == f"d{i}"
                rows.append((qid, d, 4.0 if good else -1.0 - 0.1 * int(d[1:]), 0.95 if good else 0.1))
        store.add_batch("toy:1", "-", rows)
        positives = {qid: f"d{int(qid[1:].split('-')[0])}" for qid in queries}
        train = {q: v for q, v in queries.items() if not q.endswith("-3")}
        dev = {q: v for q, v in queries.items() if q.endswith("-3")}
        store.export_groups(folder / "all.jsonl", "toy:1", "-", queries, corpus, positives)
    lines = (folder / "all.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["query_id"] in train) + "\n")
    (folder / "dev.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["query_id"] in dev) + "\n")
    return folder / "train.jsonl", folder / "dev.jsonl"


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # one intra-op thread, restored after the module


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    return write_groups(tmp_path_factory.mktemp("groups"))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tiny_t5_tokenizer().save_pretrained(root / "t5")
    tiny_bert_tokenizer().save_pretrained(root / "bert")
    return {"t5": root / "t5", "cross-encoder": root / "bert"}


def options(kind, groups, tokenizers, out, **extra):
    train, dev = groups
    base = dict(
        train=train, dev=dev, output_dir=out, student=kind, tokenizer=str(tokenizers[kind]),
        # a tiny BERT with the usual 0.02 init starts with nearly equal scores for every pair and learns slowly
        model_config_overrides=T5_CONFIG if kind == "t5" else dict(BERT_CONFIG, initializer_range=0.2),
        max_length=32, query_max_length=8, group_size=5, batch_queries=4, lr=3e-3 if kind == "t5" else 1e-3,
        warmup_ratio=0.0, eval_every=10, patience=10, seed=0, bf16=False,
    )
    base.update(extra)
    return base


@pytest.mark.parametrize("kind", ["t5", "cross-encoder"])
def test_the_same_labels_train_both_students_and_the_loss_falls(kind, groups, tokenizers, tmp_path):
    # the plain classifier head: a fitted hybrid head starts next to the teacher and leaves the loss little to lose
    head = {"head": "classifier"} if kind == "cross-encoder" else {}
    summary = distill(load_config(**options(kind, groups, tokenizers, tmp_path / kind, max_steps=40, losses={"listwise_kl": 1.0, "margin_mse": 0.1},
                                            **head)), progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    # the dev queries are other wordings of the train topics: the student agrees with its teacher there
    best, before = summary["best_metrics"], summary["initial_metrics"]
    assert best["teacher_kl"] < 0.85 * before["teacher_kl"]  # model selection reads the dev KL
    assert best["teacher_ndcg@10"] > max(0.8, before["teacher_ndcg@10"] + 0.05)
    student = load_student(tmp_path / kind / "model")
    scores = student.score([("solar panels", WORDS[2] + " panels convert store work"), ("solar panels", "coal burning convert store work")])
    assert scores[0] > scores[1]
    card = (tmp_path / kind / "model" / "README.md").read_text()
    assert "listwise_kl x 1.0" in card and "15 query groups" in card


def test_an_interrupted_run_resumes_from_its_checkpoint(groups, tokenizers, tmp_path):
    out = tmp_path / "run"
    first = distill(load_config(**options("cross-encoder", groups, tokenizers, out, max_steps=4, eval_every=2)), progress=False)
    assert first["steps"] == 4 and (out / "checkpoint" / "trainer_state.json").is_file()
    trained_before = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["seconds_before"]
    assert 0 < trained_before <= first["seconds"]
    resumed = distill(load_config(**options("cross-encoder", groups, tokenizers, out, max_steps=7, eval_every=2)), progress=False)
    assert resumed["steps"] == 7
    assert resumed["seconds"] > trained_before  # training time adds up across resumes
    assert [h["step"] for h in resumed["history"]] == list(range(1, 8))  # the first 4 come from the checkpoint
    assert resumed["history"][:4] == first["history"]
    with pytest.raises(RerankerError, match="exists; resume it"):
        distill(load_config(**options("cross-encoder", groups, tokenizers, out, max_steps=8, resume=False)), progress=False)


def test_a_run_split_by_stop_after_and_resumed_equals_the_uninterrupted_run(groups, tokenizers, tmp_path):
    """stop_after ends an invocation (checkpointed) without changing the schedule; resuming restores the
    weights, optimiser, scheduler, RNGs and the candidate sampler, so the two halves make the same model."""
    # dropout on, group_size below the group's length: both random streams must be restored
    opts = dict(max_steps=6, eval_every=4, group_size=3, warmup_ratio=0.3, model_config_overrides=dict(BERT_CONFIG, initializer_range=0.2, hidden_dropout_prob=0.1))
    whole = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "whole", **opts)), progress=False)
    half = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "split", stop_after=3, **opts)), progress=False)
    assert (half["steps"], half["total_steps"]) == (3, 6)  # stopped at 3 of a 6-step schedule
    assert "Steps: 3 of 6" in (tmp_path / "split" / "model" / "README.md").read_text()
    assert load_student(tmp_path / "split" / "model") is not None  # stopped before the first evaluation: the weights are saved
    again = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "split", stop_after=3, **opts)), progress=False)
    assert again["steps"] == 3 and again["history"] == half["history"]  # already there: nothing more is trained
    rest = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "split", **opts)), progress=False)
    assert rest["steps"] == 6
    assert [h["loss"] for h in rest["history"]] == pytest.approx([h["loss"] for h in whole["history"]], abs=1e-6)
    assert rest["best_step"] == whole["best_step"] and rest["best_metrics"] == pytest.approx(whole["best_metrics"], abs=1e-6)
    from safetensors.torch import load_file

    w1, w2 = (load_file(tmp_path / run / "checkpoint" / "model.safetensors") for run in ("whole", "split"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5


def test_configuration_and_data_errors(groups, tokenizers, tmp_path):
    with pytest.raises(RerankerError, match="unknown loss kl_div"):
        distill(load_config(**options("t5", groups, tokenizers, tmp_path / "a", max_steps=1, losses={"kl_div": 1.0})), progress=False)
    with pytest.raises(RerankerError, match="batch_sise: Extra inputs are not permitted"):
        load_config(**options("t5", groups, tokenizers, tmp_path / "b", batch_sise=3))
    with pytest.raises(RerankerError, match="group_size: Input should be a valid integer"):
        load_config(**options("t5", groups, tokenizers, tmp_path / "b", group_size="many"))
    bad = tmp_path / "bad.jsonl"
    lines = groups[0].read_text().splitlines()
    bad.write_text("\n".join([lines[0], '{"query_id": "x", "query": ', *lines[1:3]]) + "\n")
    with pytest.raises(DataFormatError, match="bad.jsonl, line 2"):
        distill(load_config(**options("t5", groups, tokenizers, tmp_path / "c", max_steps=1, train=bad)), progress=False)
    textless = tmp_path / "textless.jsonl"
    rows = [json.loads(line) for line in groups[0].read_text().splitlines()]
    for row in rows:
        for c in row["candidates"]:
            c.pop("text")
    textless.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RerankerError, match="candidates without text"):
        distill(load_config(**options("t5", groups, tokenizers, tmp_path / "e", max_steps=1, train=textless)), progress=False)
    with pytest.raises(RerankerError, match="could not load|no-such-checkpoint"):
        distill(load_config(train=groups[0], output_dir=tmp_path / "d", student="t5", base_model=str(tmp_path / "no-such-checkpoint"), max_steps=1), progress=False)


def test_distill_cli_reads_a_config_file_and_flags(groups, tokenizers, tmp_path):
    import yaml

    cfg = options("cross-encoder", groups, tokenizers, tmp_path / "cli", max_steps=50)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(cfg))
    exe = str(Path(sys.executable).with_name("reranker"))
    res = subprocess.run([exe, "-q", "distill", str(tmp_path / "distill.yaml"), "--max-steps", "3", "--eval-every=3"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    assert "trained 3 steps" in res.stdout and (tmp_path / "cli" / "model" / "student_config.json").is_file()
    res = subprocess.run([exe, "distill", str(tmp_path / "distill.yaml"), "--no-such-option", "1"], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 2 and "no_such_option" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("distill-*.yaml")))
def test_shipped_configs_are_valid(config):
    cfg = load_config(config)
    assert cfg.output_dir.parts[0] == "runs" and cfg.losses


def test_the_new_head_trains_at_its_own_learning_rate(groups, tokenizers):
    from student.train import build_student, parameter_groups

    cfg = load_config(**options("cross-encoder", groups, tokenizers, "unused", lr=2e-5, head_lr=1e-3))
    student = build_student(cfg)
    groups_ = parameter_groups(student, cfg)
    head = {id(p) for n, p in student.named_parameters() if "classifier." in n or "pooler." in n or "hybrid." in n}
    assert head, "a BERT sequence classifier has a pooler and a classifier"
    for group in groups_:
        ids = {id(p) for p in group["params"]}
        assert ids <= head or not ids & head  # a group is all head or all backbone
        assert group["lr"] == (1e-3 if ids <= head else 2e-5)
    assert sum(len(g["params"]) for g in groups_) == len(list(student.parameters()))
    assert all(g["weight_decay"] == 0.0 for g in groups_ if any(p.ndim == 1 for p in g["params"]))
    # without head_lr the head follows lr; T5 has no new head at all
    assert {g["lr"] for g in parameter_groups(student, load_config(**options("cross-encoder", groups, tokenizers, "unused", lr=2e-5)))} == {2e-5}


def test_the_lexical_language_reaches_the_student(groups, tokenizers):
    from student.train import build_student

    student = build_student(load_config(**options("cross-encoder", groups, tokenizers, "unused", lexical_language="german")))
    assert student.config.lexical_language == "german"
    enc = student.encode(["Häuser"], ["ein Haus und die Häuser"])
    assert set(enc["query_terms"][0].tolist()) <= set(enc["doc_terms"][0].tolist())  # German stems, stop words dropped
    assert (enc["doc_terms"][0] > 0).sum() == 2
    with pytest.raises(RerankerError, match="no stemmer"):
        build_student(load_config(**options("cross-encoder", groups, tokenizers, "unused", lexical_language="klingon")))


def test_the_hybrid_head_starts_from_the_teacher(groups, tokenizers, tmp_path):
    """head: hybrid fits its cosine and term-match weights to the teacher before the first step: the untrained
    student already agrees with the teacher far better than the classifier head does, and than that head after training."""
    runs = {}
    for head in ("classifier", "hybrid"):
        runs[head] = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / head, head=head, max_steps=20,
                                                   eval_every=20)), progress=False)
    hybrid, plain = runs["hybrid"], runs["classifier"]
    assert plain["head_init"] is None and hybrid["head_init"]["lex_weight"] > 0 and hybrid["head_init"]["passages"] == 5
    assert hybrid["initial_metrics"]["teacher_ndcg@10"] > plain["initial_metrics"]["teacher_ndcg@10"] + 0.1
    assert hybrid["initial_metrics"]["teacher_ndcg@10"] > 0.9  # the teacher prefers documents that share the query's words
    assert hybrid["initial_metrics"]["teacher_kl"] < 0.1 * plain["best_metrics"]["teacher_kl"]
    # selection keeps the lowest dev KL of every candidate (the start and each evaluation), and the saved student is it
    candidates = [hybrid["initial_metrics"]["teacher_kl"]] + [h["teacher_kl"] for h in hybrid["history"] if "teacher_kl" in h]
    assert len(candidates) >= 2 and hybrid["best_metrics"]["teacher_kl"] == min(candidates)
    student = load_student(tmp_path / "hybrid" / "model")
    from reranker.io.groups import read_groups
    from student.train import evaluate_groups

    again = evaluate_groups(student.eval(), read_groups(groups[1]), temperature=1.0)
    assert again["teacher_kl"] == pytest.approx(hybrid["best_metrics"]["teacher_kl"], rel=1e-4, abs=1e-6)
    assert student.config.head == "hybrid" and student.hybrid.lex_weight.item() > 0
    with pytest.raises(RerankerError, match="for cross-encoder students"):
        distill(load_config(**options("t5", groups, tokenizers, tmp_path / "t5", head="hybrid", max_steps=1)), progress=False)


def test_bf16_is_chosen_by_the_hardware_and_refused_where_it_is_missing(groups, tokenizers, tmp_path, monkeypatch):
    import student.distill_config as train

    assert train.resolve_bf16(False) is False
    assert train.resolve_bf16(None) is train.bf16_supported()[0]
    monkeypatch.setattr(train, "bf16_supported", lambda: (False, "this CPU (AVX2)"))
    assert train.resolve_bf16(None) is False  # unset: fp32 where bf16 is missing, no error
    with pytest.raises(RerankerError, match=r"bf16 was asked for .* CPU \(AVX2\) has no bf16 support"):
        distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "bf16", bf16=True, max_steps=1)), progress=False)
    monkeypatch.setattr(train, "bf16_supported", lambda: (True, "CPU (AVX512)"))
    summary = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "on", bf16=None, max_steps=2)), progress=False)
    assert summary["bf16"] is True and summary["steps"] == 2  # autocast runs (emulated where the CPU lacks it)


def test_model_selection_keeps_the_starting_point_when_training_only_makes_it_worse(groups, tokenizers, tmp_path):
    """The fitted starting point is the first candidate of model selection: a run whose steps do not raise the
    agreement with the teacher (a learning rate far too high) returns the student it began with."""
    summary = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "w", head="hybrid", lr=5.0, head_lr=5.0,
                                            max_steps=4, eval_every=2, patience=1)), progress=False)
    evals = [h["teacher_kl"] for h in summary["history"] if "teacher_kl" in h]
    assert evals and min(evals) >= summary["initial_metrics"]["teacher_kl"]  # training did not improve on it
    assert summary["best_step"] == 0 and summary["best_metrics"] == summary["initial_metrics"]
    assert summary["steps"] == 2  # patience 1: stopped after the first evaluation that did not improve
    assert "(best at 0)" in (tmp_path / "w" / "model" / "README.md").read_text()


def test_the_pair_budget_bounds_a_run_whatever_the_corpus_size(groups, tokenizers, tmp_path):
    """max_pairs ends the run at whichever of epochs and the budget comes first; max_steps overrides both."""
    # 15 train groups, 4 per step: 4 steps an epoch; 10 epochs = 40 steps, but 60 pairs of 20 per step = 3 steps
    budget = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "b", epochs=10, max_pairs=60, eval_every=50)),
                     progress=False)
    assert budget["steps"] == budget["total_steps"] == 3
    epochs = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "e", epochs=1, max_pairs=10_000, eval_every=50)),
                     progress=False)
    assert epochs["total_steps"] == 4
    steps = distill(load_config(**options("cross-encoder", groups, tokenizers, tmp_path / "s", max_pairs=20, max_steps=5, eval_every=50)),
                    progress=False)
    assert steps["total_steps"] == 5


def test_a_checkpoint_that_selected_on_teacher_ndcg_resumes_with_selection_anew(groups, tokenizers, tmp_path):
    """Checkpoints of the version that selected on teacher-nDCG keep a best on another scale (higher is better,
    near 1): resumed, the next evaluation decides the best model instead of comparing -KL with it."""
    out = tmp_path / "old"
    opts = dict(head="classifier", max_steps=4, eval_every=2)
    distill(load_config(**options("cross-encoder", groups, tokenizers, out, stop_after=2, **opts)), progress=False)
    state_file = out / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(best=0.99, best_step=2, best_metrics={"teacher_ndcg@10": 0.99})
    state_file.write_text(json.dumps(state))
    summary = distill(load_config(**options("cross-encoder", groups, tokenizers, out, **opts)), progress=False)
    assert summary["best_step"] == 4 and "teacher_kl" in summary["best_metrics"]


def test_on_evaluate_sees_the_student_at_the_start_and_at_every_evaluation_point(groups, tokenizers, tmp_path):
    """Benchmarks measure a student along training through ``on_evaluate``: it is called at step 0 (after the head
    fit) and at each evaluation point, with the student in eval mode, whose scores change as it trains; a run
    without a dev set calls it too."""
    seen = []

    def probe(step, student):
        assert not student.training
        seen.append((step, student.score([("solar panels", "solar panels convert store work")])[0]))

    train, _ = groups
    opts = options("cross-encoder", groups, tokenizers, tmp_path / "w", head="hybrid", max_steps=5, eval_every=2)
    opts.pop("dev")
    summary = distill(load_config(**opts), progress=False, on_evaluate=probe)
    assert [s for s, _ in seen] == [0, 2, 4, 5]
    assert summary["steps"] == 5
    assert len({round(float(v), 6) for _, v in seen}) > 1  # the probe saw the weights move
