"""A folder of enterprise documents (.txt, .md, .html) split into passages.

Each file gives a title (the Markdown ``# heading``, the HTML ``<title>``/``<h1>``, the first
line of a text file, else the file name) and its plain text, cut into overlapping windows
of words. Passage ids are stable: ``<path relative to the folder>#<window number>``, so the
same folder and settings always give the same ids, and ids of one file do not move when
another file changes. :func:`document_run` folds a passage run into a document run
(MaxP: a document scores as its best passage).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import DataFormatError, RerankerError
from ..records import Corpus, Document, Run

log = logging.getLogger(__name__)

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
PASSAGE_SEP = "#"


@dataclass(frozen=True)
class ChunkConfig:
    """Passage windows: ``words`` per passage, ``overlap`` words shared by neighbours. The defaults are every
    command's (the CLI, the pipeline and cascade configs, the demo, the parity sample): 120 words fit a student's
    256-token input with the query beside them."""

    words: int = 120
    overlap: int = 30

    def __post_init__(self):
        if self.words < 1:
            raise RerankerError(f"passage size must be at least 1 word, got {self.words}")
        if not 0 <= self.overlap < self.words:
            raise RerankerError(f"passage overlap must be >= 0 and smaller than the passage size ({self.words}), got {self.overlap}")


def chunk_words(text: str, config: ChunkConfig = ChunkConfig()) -> list[str]:
    """Split ``text`` into windows of ``config.words`` words, each starting ``words - overlap``
    after the last; the last window ends at the text's end and no window lies inside the one before."""
    words = text.split()
    if not words:
        return []
    step = config.words - config.overlap
    chunks = []
    start = 0
    while True:
        chunks.append(" ".join(words[start : start + config.words]))
        if start + config.words >= len(words):
            return chunks
        start += step


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(^|\s)[#>*+-]+\s|[*_`~]{1,3}|^\s*\|?[-:| ]{3,}\|?\s*$", re.MULTILINE)


def _parse_markdown(raw: str) -> tuple[str, str]:
    title = ""
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*#\s+(.+?)\s*#*\s*$", line)
        if m:
            title = m.group(1)
            del lines[i]
            break
        if line.strip():
            break
    body = _MD_LINK.sub(r"\1", "\n".join(lines))
    body = _MD_MARKS.sub(" ", body).replace("|", " ")
    return title, body


def _parse_text(raw: str) -> tuple[str, str]:
    lines = raw.strip().splitlines()
    if len(lines) > 1 and len(lines[0]) <= 200:
        return lines[0].strip(), "\n".join(lines[1:])
    return "", raw


def _parse_html(raw: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    h1 = soup.find("h1")
    if not title and h1:
        title = h1.get_text(" ", strip=True)
    if h1 and h1.get_text(" ", strip=True) == title:
        h1.decompose()
    body = soup.body if soup.body else soup
    return title, body.get_text(" ", strip=True)


_PARSERS = {"text": _parse_text, "markdown": _parse_markdown, "html": _parse_html}


def parse_file(path: Path) -> tuple[str, str]:
    """``(title, plain text)`` of one document file."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise RerankerError(f"{path}: unsupported file type (expected {', '.join(sorted(SUFFIXES))})")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, None, f"not UTF-8 text (byte {exc.start}); convert the file to UTF-8") from None
    title, body = _PARSERS[kind](raw)
    return (title or path.stem.replace("-", " ").replace("_", " ")).strip(), " ".join(body.split())


def document_id(root: Path, path: Path) -> str:
    """The file's path relative to ``root``, with '/' separators and no whitespace (TREC-safe)."""
    return quote(path.relative_to(root).as_posix(), safe="/-_.~+=,@")


def read_documents(folder: str | Path, config: ChunkConfig = ChunkConfig()) -> Corpus:
    """Every supported file under ``folder`` (recursively, in sorted order) as passages."""
    root = Path(folder)
    if not root.is_dir():
        raise RerankerError(f"{root}: no such folder")
    corpus = Corpus()
    skipped = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in SUFFIXES:
            skipped += 1
            continue
        title, text = parse_file(path)
        doc_id = document_id(root, path)
        chunks = chunk_words(text, config)
        if not chunks:
            log.warning("%s: no text, skipped", path)
        for i, chunk in enumerate(chunks):
            meta = {"doc_id": doc_id, "passage": i, "path": rel.as_posix()}
            corpus.add(Document(f"{doc_id}{PASSAGE_SEP}{i}", chunk, title, meta))
    if skipped:
        log.info("%s: %d files of other types ignored", root, skipped)
    return corpus


def document_of(passage_id: str, corpus: Corpus) -> str | None:
    """The document a passage of ``corpus`` belongs to (its ``doc_id`` metadata), or ``None`` for a whole document."""
    doc = corpus.get(passage_id)
    return doc.metadata.get("doc_id") if doc is not None else None


def document_run(run: Run, corpus: Corpus | None = None) -> Run:
    """Fold a passage run (ids ``doc#n``) into a document run: each document keeps its best passage's score.

    With the ``corpus``, a passage's document is its ``doc_id`` metadata and any other id is a
    document of its own (a data set whose ids contain ``#`` stays as it is); without it, every id
    is cut at its last ``#``.
    """
    out = Run(name=run.name)

    def document(pid: str) -> str:
        return pid.rsplit(PASSAGE_SEP, 1)[0] if corpus is None else document_of(pid, corpus) or pid

    for qid, docs in run.items():
        for doc, score in best_per_key((document(pid), score) for pid, score in docs.items()).items():
            out.add(qid, doc, score)
    return out


def best_per_key(scored: Iterable[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """MaxP (Dai & Callan 2019): each key (a document) with the best score of its items (its passages or windows),
    in the order the keys first appear. The one fold from parts to wholes: passage runs into document runs, and the
    server's long-document windows into document scores."""
    best: dict[Hashable, float] = {}
    for key, score in scored:
        if key not in best or score > best[key]:
            best[key] = score
    return best
