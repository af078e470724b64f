"""Enterprise document folders: word windows, parsing of .md/.txt/.html, stable passage ids, MaxP folding."""

from __future__ import annotations

import logging

import pytest

from reranker.errors import DataFormatError, RerankerError
from reranker.io.documents import ChunkConfig, chunk_words, document_run, parse_file, read_documents
from reranker.records import Run

TEN = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"


def test_chunk_words_exact_windows():
    assert chunk_words(TEN, ChunkConfig(words=4, overlap=1)) == [
        "w0 w1 w2 w3",
        "w3 w4 w5 w6",
        "w6 w7 w8 w9",
    ]


def test_chunk_words_last_window_reaches_the_end():
    text = TEN + " w10"
    chunks = chunk_words(text, ChunkConfig(words=4, overlap=1))
    assert chunks[-1].split()[-1] == "w10"
    assert chunks == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9", "w9 w10"]


def test_chunk_words_no_overlap():
    assert chunk_words(TEN, ChunkConfig(words=5, overlap=0)) == ["w0 w1 w2 w3 w4", "w5 w6 w7 w8 w9"]


def test_chunk_words_text_shorter_than_one_window():
    assert chunk_words("just  three\nwords", ChunkConfig(words=4, overlap=1)) == ["just three words"]


def test_chunk_words_text_exactly_one_window():
    assert chunk_words("a b c d", ChunkConfig(words=4, overlap=3)) == ["a b c d"]


def test_chunk_words_empty_text():
    assert chunk_words("", ChunkConfig(words=4, overlap=1)) == []
    assert chunk_words(" \n\t ", ChunkConfig(words=4, overlap=1)) == []


@pytest.mark.parametrize("words,overlap", [(4, 4), (4, 5), (4, -1), (0, 0)])
def test_chunk_config_rejects_bad_settings(words, overlap):
    with pytest.raises(RerankerError):
        ChunkConfig(words=words, overlap=overlap)


@pytest.fixture
def docs_folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "guide.md").write_text(
        "# Onboarding Guide\n\n"
        "Read the [security policy](https://intranet.example/security) before **starting**.\n\n"
        "## Accounts\n- Ask IT for a laptop\n",
        encoding="utf-8",
    )
    (root / "sub" / "expenses.txt").write_text(
        "Expense Policy\nClaims must be filed within 30 days.\nReceipts are required.\n", encoding="utf-8"
    )
    (root / "sub" / "deeper" / "page.html").write_text(
        "<html><head><title>Holiday Calendar</title>"
        "<style>.secretstyle { color: red }</style>"
        "<script>var secretToken = 'abc123';</script></head>"
        "<body><h1>Holiday Calendar</h1><p>Offices close on <b>December 25</b>.</p></body></html>",
        encoding="utf-8",
    )
    (root / "report.pdf").write_bytes(b"%PDF-1.4 binary \x00\xff")
    (root / "memo.docx").write_bytes(b"PK\x03\x04 not really")
    (root / ".hidden.txt").write_text("Hidden\nhidden secret words\n", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "notes.md").write_text("# Git\nshould not be read\n", encoding="utf-8")
    (root / "my notes.txt").write_text("Team Notes\nalpha beta gamma\n", encoding="utf-8")
    return root


def test_read_documents_folder(docs_folder):
    corpus = read_documents(docs_folder)
    assert corpus.ids() == ["guide.md#0", "my%20notes.txt#0", "sub/deeper/page.html#0", "sub/expenses.txt#0"]
    for doc_id in corpus.ids():
        assert not any(ch.isspace() for ch in doc_id)

    md = corpus["guide.md#0"]
    assert md.title == "Onboarding Guide"
    assert "security policy" in md.text
    assert "https" not in md.text and "intranet.example" not in md.text and "](" not in md.text
    assert "#" not in md.text and "**" not in md.text
    assert "Ask IT for a laptop" in md.text
    assert dict(md.metadata) == {"doc_id": "guide.md", "passage": 0, "path": "guide.md"}

    txt = corpus["sub/expenses.txt#0"]
    assert txt.title == "Expense Policy"
    assert txt.text == "Claims must be filed within 30 days. Receipts are required."

    html = corpus["sub/deeper/page.html#0"]
    assert html.title == "Holiday Calendar"
    assert "December 25" in html.text and "Offices close" in html.text
    assert "secretToken" not in html.text and "abc123" not in html.text
    assert "secretstyle" not in html.text and "color" not in html.text
    assert "Holiday Calendar" not in html.text  # title and matching h1 are not repeated in the body

    spaced = corpus["my%20notes.txt#0"]
    assert spaced.title == "Team Notes"
    assert spaced.metadata["path"] == "my notes.txt"

    all_text = " ".join(d.contents for d in corpus)
    assert "hidden secret" not in all_text and "should not be read" not in all_text


def test_unsupported_files_are_logged_not_read(docs_folder, caplog):
    with caplog.at_level(logging.INFO, logger="reranker.io.documents"):
        read_documents(docs_folder)
    assert "2 files of other types ignored" in caplog.text


def test_title_falls_back_to_file_name(tmp_path):
    (tmp_path / "release-notes_v2.md").write_text("No heading here, just words.\n", encoding="utf-8")
    (tmp_path / "one-line.txt").write_text("single line of text", encoding="utf-8")
    corpus = read_documents(tmp_path)
    assert corpus["release-notes_v2.md#0"].title == "release notes v2"
    assert corpus["one-line.txt#0"].title == "one line"
    assert corpus["one-line.txt#0"].text == "single line of text"


def test_passages_and_ids_are_stable(docs_folder):
    (docs_folder / "long.txt").write_text("Long File\n" + TEN + "\n", encoding="utf-8")
    cfg = ChunkConfig(words=4, overlap=1)
    first = read_documents(docs_folder, cfg)
    second = read_documents(docs_folder, cfg)
    assert first.ids() == second.ids()
    assert [d.text for d in first] == [d.text for d in second]
    long_ids = [i for i in first.ids() if i.startswith("long.txt#")]
    assert long_ids == ["long.txt#0", "long.txt#1", "long.txt#2"]
    assert first["long.txt#1"].text == "w3 w4 w5 w6"
    assert first["long.txt#2"].metadata["passage"] == 2
    assert first["long.txt#2"].title == "Long File"


def test_changing_one_file_does_not_move_other_ids(docs_folder):
    cfg = ChunkConfig(words=4, overlap=1)
    before = {d.id: d for d in read_documents(docs_folder, cfg)}
    guide_before = {i for i in before if i.startswith("guide.md#")}
    (docs_folder / "guide.md").write_text("# Onboarding Guide\n\n" + " ".join(f"x{i}" for i in range(40)), encoding="utf-8")
    (docs_folder / "sub" / "aaa-new.txt").write_text("New\nbrand new file\n", encoding="utf-8")
    after = {d.id: d for d in read_documents(docs_folder, cfg)}
    guide_after = {i for i in after if i.startswith("guide.md#")}
    assert guide_after != guide_before and len(guide_after) > len(guide_before)
    assert "sub/aaa-new.txt#0" in after
    others = {i for i in before if not i.startswith("guide.md#")}
    assert others <= set(after)
    for i in others:
        assert after[i] == before[i]


def test_non_utf8_file_names_it(tmp_path):
    (tmp_path / "ok.txt").write_text("Fine\nok\n", encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\xe9 menu\nna\xefve\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8") as info:
        read_documents(tmp_path)
    assert info.value.path == str(bad)


def test_parse_file_unsupported_type(tmp_path):
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF")
    with pytest.raises(RerankerError, match="unsupported file type"):
        parse_file(path)


def test_missing_folder(tmp_path):
    with pytest.raises(RerankerError, match="no such folder"):
        read_documents(tmp_path / "nope")


def test_empty_file_gives_no_passage(tmp_path):
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    (tmp_path / "full.md").write_text("# T\nbody\n", encoding="utf-8")
    assert read_documents(tmp_path).ids() == ["full.md#0"]


def test_document_run_keeps_best_passage():
    run = Run(
        {
            "q1": {"a.md#0": 1.0, "a.md#1": 3.0, "a.md#2": -2.0, "sub/b.txt#0": 2.0},
            "q2": {"a.md#0": -5.0, "a.md#1": -1.0},
        },
        name="passages",
    )
    docs = document_run(run)
    assert docs.name == "passages"
    assert docs.to_dict() == {"q1": {"a.md": 3.0, "sub/b.txt": 2.0}, "q2": {"a.md": -1.0}}
    assert [h.doc_id for h in docs.ranking("q1")] == ["a.md", "sub/b.txt"]


def test_hash_in_file_name_survives_document_run(tmp_path):
    (tmp_path / "c#1.md").write_text("# C sharp\n" + TEN, encoding="utf-8")
    corpus = read_documents(tmp_path, ChunkConfig(words=4, overlap=1))
    assert corpus.ids() == ["c%231.md#0", "c%231.md#1", "c%231.md#2"]
    run = Run({"q": {pid: float(i) for i, pid in enumerate(corpus.ids())}})
    assert document_run(run).to_dict() == {"q": {"c%231.md": 2.0}}


def test_document_run_with_the_corpus_folds_only_passages():
    """With the corpus, an id that merely contains '#' (a data set's own id) is not cut; passages fold by their doc_id."""
    from reranker.records import Corpus, Document

    corpus = Corpus([Document("PMID#7", "a whole document"), Document("a.md#0", "x", metadata={"doc_id": "a.md"}),
                     Document("a.md#1", "y", metadata={"doc_id": "a.md"})])
    run = Run({"q": {"PMID#7": 1.0, "a.md#0": 0.5, "a.md#1": 2.0}})
    assert document_run(run, corpus).to_dict() == {"q": {"PMID#7": 1.0, "a.md": 2.0}}
    assert document_run(run).to_dict() == {"q": {"PMID": 1.0, "a.md": 2.0}}  # without it, every id is cut at its last '#'
