"""Schema-based fuzzing of the running server with schemathesis (its CLI, against /openapi.json).

Bounded: at most ``MAX_EXAMPLES`` generated cases per operation (valid and invalid bodies), plus
the schema's examples and its coverage phase (boundary values, wrong types, missing fields).
Checks: no 5xx, status codes and content types that the spec documents, and bodies that match
the spec's response schemas; invalid bodies are rejected with a 4xx.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import BERT_CONFIG, running, tiny_bert_tokenizer

from reranker.app.server.app import create_app
from reranker.app.server.settings import ServerSettings
from student.models import CrossEncoderStudent

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 50
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection"


def st_command() -> list[str]:
    exe = Path(sys.executable).with_name("st")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (the dev extra brings it)")
    return [found]


def test_fuzz_the_openapi_spec(tmp_path, one_torch_thread):
    command = st_command()
    torch.manual_seed(0)
    folder = CrossEncoderStudent.from_config(BERT_CONFIG, tiny_bert_tokenizer(), max_length=40, query_max_length=8).save_pretrained(tmp_path / "m")
    # Small limits, so that the fuzzer reaches the 413 paths too; a roomy queue, so that no 429 comes up.
    settings = ServerSettings(max_documents=50, max_chars=2000, max_wait_ms=0)
    with running(create_app(str(folder), settings)) as url:
        res = subprocess.run(
            [*command, "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
             "--phases", "examples,coverage,fuzzing", "--generation-database", "none", "--workers", "1", "--no-color",
             "--request-timeout", "30", "--report", "junit", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=400, check=False, cwd=tmp_path,
        )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) >= 6 * 20, out[-3000:]
    assert "No issues found" in out, out[-3000:]
