"""LLM teachers on a real model: llama-cpp-python in process, and the openai client against a real
OpenAI-compatible server (llama-cpp-python's, started here on loopback), both on the packaged
Gemma-3-270M base model (Q4_K_M GGUF). Needs the ``gguf`` and ``openai`` extras.

The 270M base model is a weak judge: with the few-shot prompt it puts the relevant passages
below higher on average (mean label ~0.74 against ~0.66 here) but not for every query, so the
quality checks are on the mean and on a majority of the queries, not on each pair.
"""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import time
import urllib.request
from statistics import mean

import pytest

from teacher.backends.llama_cpp import LlamaCppGenerator, LlamaCppTeacher, default_threads, resolve_model
from teacher.backends.openai_api import OpenAIGenerator, OpenAITeacher
from teacher.base import Pair, TeacherError, make_generator, make_teacher
from teacher.llm import judgement_from_logprobs
from teacher.prompts import load_prompt

pytestmark = pytest.mark.slow

N_CTX = 1024

# (query, a passage that answers it, a passage about something else)
TOPICS = [
    ("how do vaccines train the immune system",
     ("Vaccines expose the immune system to a harmless piece or weakened form of a pathogen, so that B cells make "
     "antibodies and memory cells remember it; a later infection is then cleared quickly."),
     ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris and was the tallest structure in the world "
     "for four decades.")),
    ("what is the boiling point of water at sea level",
     ("At sea level, where the air pressure is one atmosphere, pure water boils at 100 degrees Celsius (212 degrees "
     "Fahrenheit)."),
     "Jazz developed in New Orleans in the early twentieth century, blending blues, ragtime and brass band music."),
    ("how to change a flat bicycle tire",
     ("To fix a flat, remove the wheel, lever the tire off the rim, replace or patch the inner tube, refit the tire "
     "and pump it to the pressure printed on its sidewall."),
     "The stock market index closed higher on Friday after the central bank left interest rates unchanged."),
    ("symptoms of iron deficiency anemia",
     ("Iron deficiency anemia causes tiredness, pale skin, shortness of breath, cold hands and feet, and brittle "
     "nails, because the blood carries less oxygen."),
     "Sourdough bread is leavened with a starter of wild yeast and lactic acid bacteria instead of commercial yeast."),
    ("when did the apollo 11 moon landing happen",
     ("Apollo 11 landed on the Moon on July 20, 1969, and Neil Armstrong became the first person to walk on its "
     "surface."),
     ("Photosynthesis in plants converts carbon dioxide and water into glucose, using the energy of sunlight captured "
     "by chlorophyll.")),
    ("how does a refrigerator keep food cold",
     ("A refrigerator pumps a refrigerant through a cycle: it evaporates inside the fridge, absorbing heat from the "
     "food compartment, and condenses in the coils at the back, releasing that heat into the room."),
     "The novel follows a young orphan who travels across Victorian London in search of her lost brother."),
]
REL = [Pair(f"q{i}", f"q{i}-rel", q, rel) for i, (q, rel, _) in enumerate(TOPICS, 1)]
IRR = [Pair(f"q{i}", f"q{i}-irr", q, irr) for i, (q, _, irr) in enumerate(TOPICS, 1)]
PAIRS = [p for group in zip(REL, IRR) for p in group]  # query groups: relevant, then irrelevant


def split(labels: list[float]) -> tuple[list[float], list[float]]:
    return labels[0::2], labels[1::2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gguf() -> str:
    return resolve_model("gemma3-270m")


@pytest.fixture(scope="module")
def teacher(gguf) -> LlamaCppTeacher:
    t = LlamaCppTeacher(n_ctx=N_CTX)
    t.warm_up()
    return t


@pytest.fixture(scope="module")
def local_logprobs(teacher) -> list[list[list[float]]]:
    return teacher.logprobs_batch(PAIRS)


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    """``python -m llama_cpp.server`` on a free loopback port; yields its base URL, always stopped."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    threads = str(default_threads())
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(N_CTX), "--n_threads", threads, "--n_threads_batch", threads]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 90 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- llama-cpp in process --------------------------------------------------------------


def test_llama_teacher_puts_relevant_passages_above_irrelevant_ones(teacher):
    judgements = teacher.score_batch(PAIRS)
    assert teacher.name == "llama-cpp" and teacher.prompt_version == "relevance-fewshot@1"
    for j in judgements:
        assert 0.0 < j.label < 1.0 and math.isfinite(j.score)
        assert j.label == pytest.approx(1 / (1 + math.exp(-j.score)))
    rel, irr = split([j.label for j in judgements])
    # measured on this 270M base model: 0.743 vs 0.663 (5 of the 6 queries ordered right) with an earlier
    # llama-cpp-python, 0.748 vs 0.689 (3 of 6) with 0.3.36: the per-query order moves with the llama.cpp build,
    # the gap in the mean holds; a prompt or answer-token mix-up (labels from the wrong tokens) loses it
    assert mean(rel) - mean(irr) > 0.04


def test_llama_teacher_is_deterministic_and_independent_of_batch_and_cache(teacher, local_logprobs):
    # the same decode calls for a pair whatever the batch holds, so the numbers are the same bit for bit
    assert teacher.logprobs_batch(PAIRS) == local_logprobs
    assert teacher.logprobs_batch(PAIRS[::-1])[::-1] == local_logprobs
    assert [teacher.logprobs_batch([p])[0] for p in PAIRS[:3]] == local_logprobs[:3]
    uncached = LlamaCppTeacher(n_ctx=N_CTX, prefix_cache=False)
    assert uncached.logprobs_batch(PAIRS[:4]) == local_logprobs[:4]
    assert uncached.fingerprint == teacher.fingerprint  # a speed setting, not part of the labels' key
    cached = LlamaCppTeacher(n_ctx=N_CTX)
    cached.score_batch(PAIRS[:4])
    assert cached.cached_tokens > cached.evaluated_tokens / 2  # the few-shot examples came from the cache
    assert uncached.cached_tokens == 0


def test_llama_teacher_truncates_documents_on_a_word_boundary(teacher):
    long_doc = " ".join(["refrigerant"] * 400)
    pair = Pair("q", "long", "how does a fridge work", long_doc)
    short = LlamaCppTeacher(n_ctx=N_CTX, max_doc_chars=100)
    rendered = short.render(pair)
    doc = rendered.split("Document: ")[-1].split("\n")[0]
    assert len(doc) <= 100 and doc.endswith("refrigerant")
    with pytest.raises(TeacherError, match="n_ctx"):
        LlamaCppTeacher(n_ctx=256, max_doc_chars=5000).score_batch([pair])


def test_llama_teacher_graded_template_and_chat_without_a_chat_template(gguf):
    graded = LlamaCppTeacher(prompt="relevance-graded", n_ctx=N_CTX, chat=False)
    for j in graded.score_batch([REL[0], IRR[0]]):
        assert 0.0 <= j.label <= 1.0 and math.isfinite(j.score)
    with pytest.raises(TeacherError, match="no chat template"):  # a base model's GGUF has none
        LlamaCppTeacher(prompt="relevance-zeroshot", n_ctx=N_CTX).warm_up()


def test_answer_strings_missing_from_the_vocabulary_raise(tmp_path, teacher):
    odd = "\u2603\u2603zzqx"
    assert len(teacher._model.tokenize(odd, add_bos=False)) > 1  # no single token: the model cannot answer it
    path = tmp_path / "odd-answers.txt"
    path.write_text(
        'name: odd-answers\nversion: 1\nkind: relevance\nyes: ["\\u2603\\u2603zzqx"]\nno: [" no"]\n---\n'
        "Query: {query}\nDocument: {document}\nRelevant:", encoding="utf-8",
    )
    with pytest.raises(TeacherError, match="lacks the answer tokens"):
        LlamaCppTeacher(prompt=str(path), n_ctx=N_CTX).warm_up()
    with pytest.raises(TeacherError, match="lacks the answer tokens"):  # also without warm_up
        LlamaCppTeacher(prompt=str(path), n_ctx=N_CTX).score_batch(REL[:1])


def test_registry_builds_the_backends():
    assert isinstance(make_teacher("llama-cpp", n_ctx=N_CTX), LlamaCppTeacher)
    assert isinstance(make_generator("llama-cpp", n_ctx=N_CTX), LlamaCppGenerator)
    t = make_teacher("openai", base_url="http://127.0.0.1:9/v1", model="m", api_key="sk-secret")
    assert isinstance(t, OpenAITeacher) and t.prompt_version == "relevance-zeroshot@1" and t.chat
    assert "sk-secret" not in str(t.describe())
    assert isinstance(make_generator("openai", base_url="http://127.0.0.1:9/v1", model="m"), OpenAIGenerator)


def test_llama_generator_writes_queries_with_their_logprob(gguf):
    gen = LlamaCppGenerator(n_ctx=N_CTX)
    tpl = load_prompt("inpars")
    prompts = [tpl.render(document=p.document) for p in REL[:2]]
    greedy = gen.generate(prompts, n=1, temperature=0.0, max_tokens=24, stop=tpl.meta["stop"])
    assert [len(g) for g in greedy] == [1, 1]
    for (g,) in greedy:
        assert g.text and "\n" not in g.text and math.isfinite(g.mean_logprob) and g.mean_logprob < 0
    assert gen.generate(prompts[1:], n=1, temperature=0.0, max_tokens=24) == greedy[1:]
    sampled = gen.generate(prompts, n=2, temperature=0.8, max_tokens=24, seed=3)
    assert all(len(s) == 2 and all(g.text for g in s) for s in sampled)
    assert gen.generate(prompts[::-1], n=2, temperature=0.8, max_tokens=24, seed=3)[::-1] == sampled


# --- openai client against a real OpenAI-compatible server ------------------------------


def test_openai_teacher_agrees_with_the_in_process_model(server, teacher, local_logprobs):
    # one request at a time, in a fixed order: the server's prefix reuse (see below) is then reproducible
    remote = OpenAITeacher(server, model="gemma-3-270m", prompt="relevance-fewshot", max_concurrency=1, timeout=60)
    assert not remote.chat  # completions: the few-shot template has no chat entry
    assert remote.fingerprint != teacher.fingerprint
    remote_lps = remote.logprobs_batch(PAIRS)
    # " yes", " Yes", " no", " No" are all in the server's top 20 here: no truncation to allow for
    assert all(math.isfinite(v) for lps in remote_lps for side in lps for v in side)
    remote_labels = [judgement_from_logprobs(remote.template, lps, 1.0).label for lps in remote_lps]
    local_labels = [judgement_from_logprobs(teacher.template, lps, 1.0).label for lps in local_logprobs]
    diffs = [abs(a - b) for a, b in zip(remote_labels, local_labels)]
    # Same GGUF, same arithmetic, but llama.cpp's CPU kernels are not batch-invariant: the
    # server splits each prompt into decode calls by its own prefix reuse (with the previous
    # request), which moves answer log-probabilities by up to ~0.2 (measured: the server's own
    # answers to the same pairs in reverse order differ that much). Measured here: labels
    # differ by 0.019 on average and 0.069 at most.
    assert mean(diffs) < 0.04 and max(diffs) < 0.12, diffs
    rel, irr = split(remote_labels)
    lrel, lirr = split(local_labels)
    assert mean(rel) > mean(irr) and mean(lrel) > mean(lirr)
    assert abs((mean(rel) - mean(irr)) - (mean(lrel) - mean(lirr))) < 0.04


def test_openai_teacher_chat_mode_and_missing_answers(server, tmp_path):
    # chat completions' top_logprobs, mapped to answer strings this base model does produce there
    path = tmp_path / "chat-probe.txt"
    path.write_text(
        'name: chat-probe\nversion: 1\nkind: relevance\nchat: true\nyes: ["\\n\\n"]\nno: ["\\n"]\n---\n'
        + load_prompt("relevance-zeroshot").body, encoding="utf-8",
    )
    probe = OpenAITeacher(server, model="gemma-3-270m", prompt=str(path))
    assert probe.chat
    for j in probe.score_batch(REL[:2]):  # concurrent requests (max_concurrency 8)
        assert 0.0 < j.label < 1.0
    # the zero-shot prompt's yes/no are not among this base model's top 20: both sides missing
    zeroshot = OpenAITeacher(server, model="gemma-3-270m")
    with pytest.raises(TeacherError, match="neither answer token"):
        zeroshot.score_batch(REL[:1])


def test_openai_teacher_works_inside_a_running_event_loop(server):
    remote = OpenAITeacher(server, model="gemma-3-270m", prompt="relevance-fewshot")

    async def caller():
        return remote.score_batch(IRR[:1])

    (j,) = asyncio.run(caller())
    assert 0.0 < j.label < 1.0


def test_openai_generator_writes_queries_with_their_logprob(server):
    gen = OpenAIGenerator(server, model="gemma-3-270m", timeout=120)
    tpl = load_prompt("inpars")
    ((g,),) = gen.generate([tpl.render(document=REL[2].document)], n=1, temperature=0.0, max_tokens=16,
                           stop=tpl.meta["stop"])
    assert g.text and "\n" not in g.text
    assert math.isfinite(g.mean_logprob) and g.mean_logprob < 0


def test_unreachable_endpoint_fails_fast_with_a_clear_error():
    port = free_port()  # nothing listens there
    remote = OpenAITeacher(f"http://127.0.0.1:{port}/v1", model="m", prompt="relevance-fewshot", max_retries=1, timeout=2)
    start = time.monotonic()
    with pytest.raises(TeacherError, match=rf"127\.0\.0\.1:{port}.*failed after 2 attempt"):
        remote.score_batch(REL[:2])
    assert time.monotonic() - start < 5
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", model="m", max_retries=0, timeout=2)
    with pytest.raises(TeacherError, match="APIConnectionError"):
        gen.generate(["Document: x\nQuery:"])
