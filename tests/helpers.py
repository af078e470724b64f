"""Helpers shared by the test modules: the CLI as a user runs it, tiny models built from configs, a real
server on a loopback port, and label-store probes. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

#: the repository root
REPO = Path(__file__).resolve().parents[1]

#: the documents of the tiny BEIR folder (conftest's ``tiny_beir``)
TINY_DOCS = [
    {"_id": "d1", "title": "Solar power", "text": "Photovoltaic panels turn sunlight into electricity."},
    {"_id": "d2", "title": "Wind power", "text": "Wind turbines convert kinetic energy of air into electricity."},
    {"_id": "d3", "title": "Coal", "text": "Burning coal releases carbon dioxide."},
    {"_id": "d4", "title": "Batteries", "text": "Lithium-ion batteries store energy for later use."},
    {"_id": "d5", "title": "Hydro", "text": "Dams use falling water to drive generators."},
    {"_id": "d6", "title": "Nuclear", "text": "Fission of uranium releases heat that makes steam."},
]


EXE = Path(sys.executable).with_name("reranker")


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def ok(*args, **kw) -> subprocess.CompletedProcess:
    res = cli(*args, **kw)
    assert res.returncode == 0, res.stderr
    return res


def user_error(*args, match: str) -> str:
    """The command fails with status 2 and one clear line, no traceback."""
    res = cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "error:" in res.stderr and match in res.stderr, res.stderr
    return res.stderr


WORDS = ["how", "do", "solar", "panels", "work", "energy", "storage", "wind", "turbines", "convert", "power", "batteries", "store", "coal", "burning", "releases", "carbon"]


PAIRS = [
    ("how do solar panels work", "solar panels convert sunlight into power"),
    ("energy storage", "batteries store energy"),
    ("wind power", "wind turbines convert the kinetic energy of moving air into power " * 3),  # longer: padding
    ("coal", "burning coal releases carbon dioxide"),
]


T5_CONFIG = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
             "relative_attention_num_buckets": 8, "dropout_rate": 0.0}


BERT_CONFIG = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0}


def tiny_t5_tokenizer(answers: bool = True):
    """A T5 (Unigram, SentencePiece-style) tokenizer: words of the template and texts, then single characters."""
    from transformers import T5Tokenizer

    words = ["▁Query", "▁Document", "▁Relevant", *(f"▁{w}" for w in WORDS)] + (["▁true", "▁false"] if answers else [])
    chars = [f"▁{c}" for c in string.ascii_letters] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(w, -2.0) for w in words] + [(c, -5.0) for c in dict.fromkeys(chars)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_bert_tokenizer():
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *string.ascii_lowercase]
    tokens += [f"##{c}" for c in string.ascii_lowercase] + list(string.punctuation + string.digits)
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(dict.fromkeys(tokens))})


QUERY = "how do solar panels work"


DOCS = [
    "solar panels convert sunlight into power",
    "batteries store energy",
    "wind turbines convert the kinetic energy of moving air into power",
    "burning coal releases carbon dioxide",
    "solar energy storage",
    "how wind power works",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, wait: str = "/ready", timeout: float = 60) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL; always stops."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, wait, timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(url: str, path: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url}{path} not 200 after {timeout} s")
        time.sleep(0.05)


def save_tiny_ce(root: Path) -> Path:
    """The tiny BERT cross-encoder (seeded) saved as a student folder, ``root/model``."""
    import torch

    from student.models import CrossEncoderStudent

    torch.manual_seed(0)
    student = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8)
    return student.save_pretrained(root / "model")


def direct(scorer, query: str, docs: list[str]) -> np.ndarray:
    return scorer.score([(query, d) for d in docs]).astype(np.float64)


SETTINGS = {"max_documents": 20, "max_chars": 500, "max_wait_ms": 20}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def labels_in(path: Path) -> int:
    """Rows in a label store (0 while it does not exist yet)."""
    try:
        with sqlite3.connect(path, timeout=5) as con:
            return con.execute("SELECT count(*) FROM labels").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_mid_labelling(cmd: list[str], store: Path, at: int = 30, cwd: Path | None = None) -> None:
    """Start ``cmd`` and SIGKILL its process group once ``store`` holds ``at`` labels (it must still be running)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while labels_in(store) < at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished labelling before it could be killed; give it more work"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


TEXTS = [
    "how do solar panels work", "Photovoltaic solar panels turn sunlight into electricity.",
    "Burning coal releases carbon dioxide.", "wind turbines make power from moving air",
]


def build_tiny_lm(folder, with_answers: bool = True):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from teacher.prompts import load_prompt

    template = load_prompt("relevance-fewshot").body
    words = sorted(set(" ".join([template, *TEXTS]).replace("{", " ").replace("}", " ").split()) | {"yes", "Yes", "no", "No"})
    if not with_answers:
        words = [w for w in words if w.lower() not in ("yes", "no")]
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
