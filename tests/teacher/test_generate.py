"""Synthetic query generation: the extractive and HF generators, seeds and prompts, filters, the whole run."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
from helpers import REPO, TINY_DOCS

from reranker.errors import DataFormatError, RerankerError
from reranker.io.documents import read_documents
from reranker.records import Corpus, Document
from reranker.retrieval import build_index
from teacher.backends.extractive import ExtractiveGenerator, split_sentences
from teacher.base import Generated, QueryGenerator, TeacherError, make_generator
from teacher.generate import (
    FilterConfig,
    SeedPair,
    SyntheticQuery,
    apply_filters,
    build_prompt,
    generate_queries,
    load_seed_pairs,
    positives,
    query_id,
    read_synthetic,
    write_synthetic,
)
from teacher.prompts import load_prompt

pytestmark = pytest.mark.slow

DEMO_DOCS = REPO / "reranker" / "data" / "demo" / "docs"
PASSAGES = [
    (
        "Routine passport renewals take six to eight weeks. Expedited service takes two to three weeks for a fee. "
        "Apply online. You need a recent photo and your old passport to renew it."
    ),
    (
        "Hold the reset button on the router for ten seconds. It restarts with the default admin password printed on its label. "
        "Then log in and choose a new password right away."
    ),
]


@pytest.fixture(scope="module")
def tiny_corpus() -> Corpus:
    return Corpus(Document(d["_id"], d["text"], d["title"]) for d in TINY_DOCS)


@pytest.fixture(scope="module")
def demo_corpus() -> Corpus:
    return read_documents(DEMO_DOCS)


def sq(qid: str, text: str, doc_id: str, lp: float = 0.0) -> SyntheticQuery:
    return SyntheticQuery(qid, text, doc_id, lp, "t@1", "test")


# --- extractive ------------------------------------------------------------------------


def test_extractive_picks_sentences_of_the_passage_deterministically_and_respects_n():
    gen = make_generator("extractive")
    assert isinstance(gen, ExtractiveGenerator) and gen.takes_documents
    out = gen.generate(PASSAGES, n=3, seed=5)
    assert [len(row) for row in out] == [3, 3]
    for passage, row in zip(PASSAGES, out):
        sentences = split_sentences(passage)
        texts = [g.text for g in row]
        assert all(t in sentences for t in texts) and len(set(texts)) == 3
        # "Apply online." (2 words) is never preferred over the 3 sentences of 5-30 words
        assert "Apply online." not in texts
        assert all(g.mean_logprob == 0.0 for g in row)
    assert gen.generate(PASSAGES, n=3, seed=5) == out
    picks = {tuple(g.text for g in gen.generate(PASSAGES, n=1, seed=s)[0]) for s in range(20)}
    assert len(picks) > 1  # the seed changes the choice
    # more picks than sentences: every sentence once, then repeats; max_tokens caps the words
    row = gen.generate([PASSAGES[1]], n=5, seed=0, max_tokens=4)[0]
    assert len(row) == 5 and all(len(g.text.split()) <= 4 for g in row)
    assert len({g.text for g in row}) == 3


# --- the HF generator on a tiny causal LM ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama (hidden 32) and a byte-level BPE tokenizer trained here, saved to a folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [string.printable, load_prompt("inpars").body] + [d["text"] for d in TINY_DOCS] + PASSAGES
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def hf_gen(tiny_lm):
    gen = make_generator("hf", model=str(tiny_lm[0]), batch_size=2)
    gen.load()
    assert gen.device == "cpu" and str(gen.model.dtype) == "torch.float32" and gen.tokenizer.padding_side == "left"
    return gen


PROMPTS = ["Wind turbines convert", "Document: Photovoltaic panels turn sunlight into electricity.\nQuery:", "Dams"]


def recomputed_mean_logprob(model, tokenizer, prompt: str, ids: list[int]) -> float:
    """Mean log P(token) of ``ids`` after ``prompt``, from one unpadded forward pass."""
    import torch

    prompt_ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0].float()
    lps = torch.log_softmax(logits, dim=-1)
    return sum(lps[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(ids)) / len(ids)


def check_logprobs(tiny_lm, prompts, rows):
    _, model, tokenizer = tiny_lm
    for prompt, row in zip(prompts, rows):
        for g in row:
            assert g.token_ids, "the tiny model wrote nothing; pick another seed for it"
            assert math.isfinite(g.mean_logprob) and g.mean_logprob <= 0
            assert g.mean_logprob == pytest.approx(recomputed_mean_logprob(model, tokenizer, prompt, g.token_ids), abs=1e-4)
            assert tokenizer.decode(g.token_ids, skip_special_tokens=True).strip().startswith(g.text)


def test_hf_greedy_is_deterministic_and_mean_logprob_matches_a_forward_pass(tiny_lm, hf_gen):
    rows = hf_gen.generate_with_tokens(PROMPTS, max_tokens=12, stop=())
    assert [len(r) for r in rows] == [1, 1, 1]
    assert hf_gen.generate_with_tokens(PROMPTS, max_tokens=12, stop=()) == rows
    # batched with left padding (prompts of different lengths) = each prompt alone
    assert hf_gen.generate_with_tokens(PROMPTS[2:], max_tokens=12, stop=())[0][0].text == rows[2][0].text
    check_logprobs(tiny_lm, PROMPTS, rows)
    plain = hf_gen.generate(PROMPTS, max_tokens=12, stop=())
    assert [[(g.text, g.mean_logprob) for g in r] for r in plain] == [[(g.text, g.mean_logprob) for g in r] for r in rows]
    assert all(isinstance(g, Generated) for r in plain for g in r)


def test_hf_sampling_returns_n_sequences_reproducibly(tiny_lm, hf_gen):
    rows = hf_gen.generate_with_tokens(PROMPTS, n=3, temperature=0.7, max_tokens=10, stop=(), seed=7)
    assert [len(r) for r in rows] == [3, 3, 3]
    assert hf_gen.generate_with_tokens(PROMPTS, n=3, temperature=0.7, max_tokens=10, stop=(), seed=7) == rows
    other = hf_gen.generate_with_tokens(PROMPTS, n=3, temperature=0.7, max_tokens=10, stop=(), seed=8)
    assert [g.token_ids for r in other for g in r] != [g.token_ids for r in rows for g in r]
    assert len({g.text for g in rows[0]}) > 1
    check_logprobs(tiny_lm, PROMPTS, rows)  # the model's log-probabilities, not the temperature-scaled ones
    with pytest.raises(TeacherError, match="temperature"):
        hf_gen.generate(PROMPTS, n=2, temperature=0.0)


def test_hf_stop_strings_cut_the_text_and_the_scored_tokens(tiny_lm, hf_gen):
    full = hf_gen.generate_with_tokens(PROMPTS, max_tokens=16, stop=())
    for prompt, (whole,) in zip(PROMPTS, full):
        text = whole.text
        assert len(text) >= 6, "the tiny model wrote too little to cut"
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        at = text.find(stop)
        ((cut,),) = hf_gen.generate_with_tokens([prompt], max_tokens=16, stop=[stop])
        assert cut.text == text[:at].strip() and stop not in cut.text
        assert len(cut.token_ids) < len(whole.token_ids)
        if cut.token_ids:
            check_logprobs(tiny_lm, [prompt], [[cut]])


def test_hf_generator_in_a_whole_run_with_the_inpars_prompt(tiny_lm, tiny_corpus):
    gen = make_generator("hf", model=str(tiny_lm[0]))
    loose = FilterConfig(min_words=0, max_words=1000, dedup=False, keep_top_share=1.0, consistency_k=0)
    result = generate_queries(tiny_corpus, gen, "inpars", n_per_passage=2, sample=2, temperature=1.0, max_tokens=6,
                              filters=loose, seed=3)
    assert len(result.queries) == 4 and {q.template_key for q in result.queries} == {"inpars@1"}
    assert {q.generator for q in result.queries} == {f"hf:{tiny_lm[0]}"}
    assert all(q.mean_logprob < 0 and "\n" not in q.text for q in result.queries if q.text)


# --- seeds and prompts -----------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_promptagator_prompt_uses_at_most_max_examples_seed_pairs(tmp_path, tiny_corpus):
    rows = [json.dumps({"query": f"question {i}", "document": f"passage number {i}"}) for i in range(10)]
    rows.append(json.dumps({"query": "by id", "doc_id": "d3"}))
    seeds = load_seed_pairs(write_lines(tmp_path / "seeds.jsonl", rows), tiny_corpus)
    assert len(seeds) == 11 and seeds[-1] == SeedPair("by id", tiny_corpus["d3"].contents, "d3")
    tpl = load_prompt("promptagator")
    fmt, limit = tpl.meta["example_format"], tpl.meta["max_examples"]
    assert limit == 8
    prompt = build_prompt(tpl, "The new passage.", seeds)
    examples = "".join(fmt.format(query=f"question {i}", document=f"passage number {i}") for i in range(8))
    assert prompt == examples + "Document: The new passage.\nQuery:"
    # a seed of this very passage is not shown as an example of itself
    assert "question 0\n" not in build_prompt(tpl, "passage number 0", seeds)
    assert "question 8\n" in build_prompt(tpl, "passage number 0", seeds)
    with pytest.raises(RerankerError, match="seed"):
        build_prompt(tpl, "The new passage.", [])
    with pytest.raises(RerankerError, match="seed"):
        generate_queries(tiny_corpus, EchoGenerator(), "promptagator")
    inpars = build_prompt(load_prompt("inpars"), "The new passage.", seeds)
    assert inpars.endswith("Example 4:\nDocument: The new passage.\nRelevant Query:") and "question" not in inpars


@pytest.mark.parametrize(("lines", "line", "message"), [
    (['{"query": "a", "document": "b"}', '{"query": "a", "document": '], 2, "not valid JSON"),
    (['{"document": "b"}'], 1, "missing seed query"),
    (['{"query": "a", "document": "b"}', '{"query": "  ", "document": "b"}'], 2, "empty"),
    (['{"query": "a"}'], 1, "neither"),
    (['{"query": "a", "document": "b"}', '', '{"query": "a", "doc_id": "nope"}'], 3, "unknown doc_id"),
])
def test_seed_file_errors_name_the_file_and_line(tmp_path, tiny_corpus, lines, line, message):
    path = write_lines(tmp_path / "seeds.jsonl", lines)
    with pytest.raises(DataFormatError, match=message) as err:
        load_seed_pairs(path, tiny_corpus)
    assert err.value.line == line and str(path) in str(err.value)


def test_seed_doc_id_without_a_corpus_and_an_empty_file_are_errors(tmp_path):
    with pytest.raises(DataFormatError, match="no corpus") as err:
        load_seed_pairs(write_lines(tmp_path / "a.jsonl", ['{"query": "a", "doc_id": "d1"}']))
    assert err.value.line == 1
    with pytest.raises(DataFormatError, match="no seed pairs"):
        load_seed_pairs(write_lines(tmp_path / "b.jsonl", [""]))


# --- filters ---------------------------------------------------------------------------


def test_filters_in_order_with_exact_counts(tiny_corpus):
    queries = [
        sq("q0", "too short", "d1", -0.1),
        sq("q1", "how do photovoltaic panels work", "d1", -0.5),
        sq("q2", "How do photovoltaic  panels, work?", "d1", -0.1),  # same as q1 once normalised
        sq("q3", "wind turbines kinetic energy", "d2", -2.0),  # the least likely
        sq("q4", "burning coal carbon dioxide", "d3", -1.0),
        sq("q5", "uranium fission heat steam", "d1", -0.2),  # words of d6 only: inconsistent
        sq("q6", " ".join(["word"] * 33), "d1", -0.1),
    ]
    kept, stats = apply_filters(queries, tiny_corpus, FilterConfig(keep_top_share=0.75))
    assert [q.query_id for q in kept] == ["q1", "q4"]
    assert stats["filters"] == [
        {"filter": "length", "in": 7, "out": 5},
        {"filter": "dedup", "in": 5, "out": 4},
        {"filter": "copy", "in": 4, "out": 4, "skipped": "off"},
        {"filter": "logprob", "in": 4, "out": 3},
        {"filter": "consistency", "in": 3, "out": 2},
    ]
    assert stats["candidates"] == 7 and stats["kept"] == 2 and stats["source_in_bm25_top10"] == 1.0
    # the bounds are inclusive: 3 and 32 words pass
    edge = [sq("a", "one two three", "d1"), sq("b", " ".join(f"w{i}" for i in range(32)), "d1")]
    assert len(apply_filters(edge, tiny_corpus, FilterConfig(consistency_k=0))[0]) == 2


def test_consistency_filter_with_a_given_bm25_index(tiny_corpus):
    index = build_index(tiny_corpus, "bm25s")
    queries = [sq("keep", "photovoltaic panels and sunlight", "d1"), sq("drop", "uranium fission makes steam", "d1"),
               sq("rank2", "electricity from wind turbines", "d1")]
    kept, stats = apply_filters(queries, tiny_corpus, FilterConfig(), retriever=index)
    assert [q.query_id for q in kept] == ["keep", "rank2"]
    assert stats["filters"][-1] == {"filter": "consistency", "in": 3, "out": 2}
    # d2 ranks first for "electricity from wind turbines", d1 second: k=1 drops it
    kept, stats = apply_filters(queries, tiny_corpus, FilterConfig(consistency_k=1), retriever=index)
    assert [q.query_id for q in kept] == ["keep"]
    # off: all kept; the share of sources in BM25's top 10 is still reported
    kept, stats = apply_filters(queries, tiny_corpus, FilterConfig(consistency_k=0), retriever=index)
    assert len(kept) == 3 and stats["source_in_bm25_top10"] == pytest.approx(2 / 3)
    assert stats["filters"][-1]["skipped"] == "off"


def test_logprob_filter_is_skipped_without_scores_and_copy_filter_catches_verbatim_spans(tiny_corpus):
    flat = [sq(f"q{i}", f"photovoltaic panels question {i}", "d1") for i in range(5)]
    kept, stats = apply_filters(flat, tiny_corpus, FilterConfig(keep_top_share=0.2))
    assert len(kept) == 5 and stats["filters"][3]["skipped"].startswith("no log-probabilities")
    scored = [sq(f"q{i}", f"photovoltaic panels question {i}", "d1", -float(i)) for i in range(5)]
    kept, _ = apply_filters(scored, tiny_corpus, FilterConfig(keep_top_share=0.4))
    assert [q.query_id for q in kept] == ["q0", "q1"]
    copies = [sq("copy", "Panels turn sunlight into power", "d1", -1.0), sq("own", "solar panels and power", "d1", -1.0)]
    config = FilterConfig(max_copied_words=4, keep_top_share=1.0, consistency_k=0)
    assert [q.query_id for q in apply_filters(copies, tiny_corpus, config)[0]] == ["own"]
    assert len(apply_filters(copies, tiny_corpus, config, extractive=True)[0]) == 2
    with pytest.raises(RerankerError):
        FilterConfig(keep_top_share=0)


# --- the whole run ---------------------------------------------------------------------


class EchoGenerator(QueryGenerator):
    """Records its prompts and answers with the last words of each, with decreasing log-probabilities."""

    name = "echo"

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, stop=("\n",), seed=None):
        self.calls.append((list(prompts), tuple(stop)))
        return [[Generated(f"echo {i} " + " ".join(p.split()[-6:-2]), -1.0 - i) for i in range(n)] for p in prompts]


def test_llm_generators_get_rendered_prompts(tiny_corpus):
    gen = EchoGenerator()
    result = generate_queries(tiny_corpus, gen, "inpars", n_per_passage=2, batch_size=4,
                              filters=FilterConfig(consistency_k=0, keep_top_share=0.5))
    prompts = [p for batch, _ in gen.calls for p in batch]
    assert [len(batch) for batch, _ in gen.calls] == [4, 2] and {stop for _, stop in gen.calls} == {("\n",)}
    assert prompts[0].endswith(f"Document: {tiny_corpus['d1'].contents}\nRelevant Query:")
    assert [q.query_id for q in result.queries] == [f"gen-d{i}-0" for i in range(1, 7)]  # the -1.0 half
    assert result.stats["template"] == "inpars@1" and result.stats["filters"][3] == {"filter": "logprob", "in": 12, "out": 6}


def test_generate_queries_end_to_end_on_the_demo_corpus(demo_corpus, tmp_path):
    def run(seed):
        return generate_queries(demo_corpus, ExtractiveGenerator(), n_per_passage=2, sample=40, seed=seed)

    result = run(11)
    again = run(11)
    assert result.queries == again.queries and result.stats == again.stats
    ids = [q.query_id for q in result.queries]
    assert len(ids) == len(set(ids)) > 40
    assert all(not any(c.isspace() for c in i) for i in ids)
    assert len({q.doc_id for q in result.queries}) <= 40
    for q in result.queries:
        assert q.doc_id in demo_corpus and q.text in demo_corpus[q.doc_id].text
        assert q.query_id.startswith(f"gen-{q.doc_id}-") and q.template_key == "-" and q.generator == "extractive"
    assert {q.doc_id for q in run(12).queries} != {q.doc_id for q in result.queries}
    stats = result.stats
    assert stats["passages"] == 40 and stats["candidates"] == 80 and stats["kept"] == len(result.queries)
    assert [f["filter"] for f in stats["filters"]] == ["length", "dedup", "copy", "logprob", "consistency"]
    assert 0.9 <= stats["source_in_bm25_top10"] <= 1.0
    path = tmp_path / "out" / "synthetic.jsonl"
    assert write_synthetic(path, result) == len(result.queries)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"_id", "text", "doc_id", "mean_logprob", "template", "generator"}
    assert read_synthetic(path) == result.queries
    assert positives(result) == {q.query_id: q.doc_id for q in result.queries} and len(positives(result)) == len(ids)


def test_query_ids_are_trec_safe_and_unique():
    assert query_id("a b", 0) == "gen-a%20b-0" and query_id("a%20b", 0) != query_id("a b", 0)
    assert query_id("x#1", 2) == "gen-x#1-2"


def test_read_synthetic_rejects_duplicate_ids_and_missing_fields(tmp_path):
    row = {"_id": "q", "text": "t", "doc_id": "d"}
    with pytest.raises(DataFormatError, match="appears twice") as err:
        read_synthetic(write_lines(tmp_path / "a.jsonl", [json.dumps(row)] * 2))
    assert err.value.line == 2
    with pytest.raises(DataFormatError, match="doc_id"):
        read_synthetic(write_lines(tmp_path / "b.jsonl", [json.dumps({"_id": "q", "text": "t"})]))
