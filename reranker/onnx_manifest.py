"""The manifest of an exported ONNX folder (``onnx_manifest.json``): what the graph expects and how it was checked.

An export folder is self-describing: the ONNX graph(s), the tokenizer files, the student's
``student_config.json`` and template, and this manifest, which records the formatting (kind,
template, length limits, answer token ids), the graph's inputs and opset, one entry per
precision (file, SHA-256, size, whether the transformer optimiser ran, and the parity figures
against PyTorch with the tolerances they were held to) and the versions that made it.

This module imports neither torch nor onnxruntime: the exporter writes it, the scorer reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import validation_problems
from .errors import RerankerError
from .scoring import ONNX_MANIFEST

FORMAT_VERSION = 1
Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "fp16")
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


class Tolerance(BaseModel):
    """What an export must meet against PyTorch fp32 on the parity sample (``None``: not bounded)."""

    model_config = ConfigDict(extra="forbid")
    max_abs_diff: float | None = Field(None, description="largest |ONNX score - PyTorch score| allowed")
    min_top10_agreement: float = Field(description="smallest mean overlap of each query's top 10 (0..1) allowed")
    max_batch_diff: float | None = Field(None, description="largest |score alone - score in a batch| allowed (None: measured, "
                                                            "and the stated bound is twice the measured figure)")


#: fp32 must match PyTorch to rounding; fp16 closely; int8 is held to ranking agreement only
#: (dynamic int8 quantisation moves raw scores by a few hundredths but should keep the order).
#: An fp32 score must not depend on the other pairs of its batch beyond float rounding; fp16 and int8 (dynamic int8
#: quantises activations per batch) are measured and their bound stated in the manifest instead of fixed in advance.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_diff=1e-3, min_top10_agreement=0.95, max_batch_diff=1e-4),
    "fp16": Tolerance(max_abs_diff=0.05, min_top10_agreement=0.9),
    "int8": Tolerance(max_abs_diff=None, min_top10_agreement=0.8),
}
#: the smallest stated batch bound (float rounding of the padded shapes)
MIN_BATCH_BOUND = 1e-4


class Parity(BaseModel):
    """ONNX Runtime (CPU) against the PyTorch student in fp32 on a sample of real pairs."""

    model_config = ConfigDict(extra="forbid")
    pairs: int
    queries: int
    sample: str = Field(description="where the pairs came from")
    max_abs_diff: float
    mean_abs_diff: float
    top10_agreement: float = Field(description="mean over queries of |top10(onnx) & top10(torch)| / min(10, candidates)")
    batch_max_abs_diff: float | None = Field(None, description="largest |score scored alone - score in the sample's batches| "
                                                                "over the first pairs of the sample (see batch_pairs)")
    batch_pairs: int | None = None
    batch_bound: float | None = Field(None, description="the stated bound: a served score moves with the other pairs of its "
                                                        "batch by at most this (see batch_bound())")
    tolerance: Tolerance
    passed: bool


def batch_bound(measured: float | None, tolerance: Tolerance) -> float | None:
    """How far a graph's scores may move with the other pairs of their batch: the tolerance when it has one, else
    twice the figure measured on the parity sample (at least :data:`MIN_BATCH_BOUND`); ``None`` when not measured."""
    if tolerance.max_batch_diff is not None:
        return tolerance.max_batch_diff
    return None if measured is None else max(2 * measured, MIN_BATCH_BOUND)


class ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    precision: Precision
    sha256: str
    bytes: int
    optimized: bool = Field(description="the ONNX Runtime transformer optimiser's graph (fused ops)")
    notes: list[str] = Field(default_factory=list)
    parity: Parity | None = Field(None, description="always filled by `reranker export`")


class PrecisionCandidate(BaseModel):
    """One graph that ``--precision auto`` measured on the calibration sample (CPU, one process, same threads)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="fp32, int8 (dynamic) or int8 (weight-only)")
    precision: Precision
    int8_method: str | None = None
    pairs_per_second: float = Field(description="best of the timed passes over the sample, after a warm-up batch")
    ndcg_drop: float = Field(description="what the budget is held to: fidelity_drop, or the larger of it and judged_drop")
    fidelity_drop: float = Field(description="nDCG@10 with fp32's ranking as graded truth: fp32's (1 without ties) minus this graph's")
    judged_drop: float | None = Field(None, description="fp32's nDCG@10 minus this graph's on the sample's judgements (None: none)")
    top10_agreement: float = Field(description="mean overlap of each query's top 10 with the fp32 graph's")
    bytes: int
    within_budget: bool


class PrecisionChoice(BaseModel):
    """What ``reranker export --precision auto`` chose and why: the fastest candidate within the nDCG budget.

    Scorers on a CPU load ``precision`` by default when the manifest has a choice."""

    model_config = ConfigDict(extra="forbid")
    precision: Precision = Field(description="the models entry chosen")
    candidate: str = Field(description="the chosen candidate's name")
    max_ndcg_drop: float
    measured_against: str = Field(description="the gains nDCG@10 was computed with: the sample's judgements or fp32's own ranking")
    pairs: int
    queries: int
    sample: str
    threads: int | None = Field(description="ONNX Runtime intra-op threads (None: its default, all cores)")
    candidates: list[PrecisionCandidate]
    reason: str


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(description="len(tokenizer), added tokens included")
    pad_token_id: int | None
    embedding_rows: int = Field(description="rows of the model's input embedding: token ids must stay below it")


class ScoreGraph(BaseModel):
    """A separated export's second graph: the score of (query vector, passage vector, query terms, passage terms)."""

    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    bytes: int
    inputs: list[str]
    output: str = "score"


class OnnxManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    kind: Literal["t5", "cross-encoder"]
    layout: Literal["pair", "separated"] = Field("pair", description="pair: one graph from a pair's token ids to its score; "
                                                 "separated: the models are an encoder (one text's token ids to its pooled "
                                                 "vector, passages cacheable) and score_graph scores vector pairs")
    inputs: list[str] = Field(description="graph inputs, int64 [batch, sequence]")
    output: str = Field("score", description="the graph's output: the score (pair) or the pooled vector (separated)")
    score_graph: ScoreGraph | None = Field(None, description="separated: the graph that scores (query, passage) vector pairs")
    document_tokens: int | None = Field(None, description="separated: tokens of a passage encoded, whatever the query")
    hidden_size: int | None = Field(None, description="separated: the pooled vector's size")
    opset: int
    template: str | None = Field(description="T5: the template file in this folder")
    max_length: int
    query_max_length: int
    true_token_id: int | None = None
    false_token_id: int | None = None
    score: str = Field(description="what the score means (from the student config)")
    tokenizer: TokenizerInfo
    models: dict[str, ModelFile]
    choice: PrecisionChoice | None = Field(None, description="`--precision auto`: the measured candidates and the chosen graph")
    dropped: list[str] = Field(default_factory=list, description="parts of the student left out of the graph, each with why "
                               "(a weight of zero, or an nDCG@10 change on the parity pairs within the export's bound)")
    source: str = Field(description="the student folder exported")
    created: str
    versions: dict[str, str]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / ONNX_MANIFEST
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> OnnxManifest:
        path = Path(folder) / ONNX_MANIFEST
        if not path.is_file():
            raise RerankerError(f"{path}: missing; an ONNX folder from `reranker export` holds {ONNX_MANIFEST}")
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RerankerError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise RerankerError(f"{path}: format_version {data.get('format_version')} is not {FORMAT_VERSION}; re-export the model")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RerankerError(f"{path}: invalid manifest: {validation_problems(exc)}") from None



