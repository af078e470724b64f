"""Request and response bodies: Cohere's rerank API (v1 and v2) and text-embeddings-inference's ``/rerank``.

Types are strict (a number is not a string, ``"true"`` is not a boolean), so a wrong type is a
422, never a silent coercion. Fields of the originals that the server does not implement
(Cohere's ``rank_fields``, ``max_chunks_per_doc``, ``priority``; TEI's ``truncation_direction``)
are accepted and ignored, as those APIs ignore unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


#: The query of every request: a string (no coercion) with something besides whitespace.
QueryText = Annotated[StrictStr, Field(min_length=1, description="The search query (not empty)."), AfterValidator(_nonblank)]


class TextDocument(BaseModel):
    """A document as an object: Cohere's ``{"text": ...}`` (other keys are ignored)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    text: StrictStr = Field(description="The document's text.")


DocumentInput = Annotated[StrictStr | TextDocument, Field(description="A document: its text, or {\"text\": ...}.")]


class CohereRerankRequest(BaseModel):
    """Cohere's rerank request (``/v1/rerank`` and ``/v2/rerank``)."""

    model: StrictStr | None = Field(None, description="Accepted for compatibility; the server serves one model.")
    query: QueryText
    documents: list[DocumentInput] = Field(min_length=1, description="Documents to rank against the query.")
    top_n: StrictInt | None = Field(None, ge=1, description="Return the best top_n (all when absent; capped at the number of documents).")
    return_documents: StrictBool = Field(False, description="Include each document's text in the results.")
    max_tokens_per_doc: StrictInt | None = Field(None, ge=1, description="Cut each document to this many tokens first.")
    return_raw_scores: StrictBool = Field(
        False, description="Extension (not in Cohere's API): also return the model's raw score (log-odds or logit) as raw_score.")

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ResultDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(ge=0, le=1, description="sigmoid of the model's raw score, in [0, 1].")
    document: ResultDocument | None = Field(None, description="The document, when return_documents is true.")
    raw_score: float | None = Field(None, description="The model's raw score, when return_raw_scores is true.")


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    warnings: list[str] | None = None


class CohereRerankResponse(BaseModel):
    id: str = Field(description="A unique id of this response.")
    results: list[CohereResult] = Field(description="Documents, most relevant first.")
    meta: CohereMeta


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's ``POST /rerank`` request."""

    query: QueryText
    texts: list[StrictStr] = Field(min_length=1, description="Documents to rank against the query.")
    raw_scores: StrictBool = Field(False, description="Return the model's raw scores instead of sigmoid scores in [0, 1].")
    return_text: StrictBool = Field(False, description="Include each text in the results.")
    truncate: StrictBool | None = Field(
        None, description="Accepted for compatibility: long texts are always cut (or windowed) to the model's length, as the server is set.")


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorResponse(BaseModel):
    """Every error: ``message`` (Cohere's key) and ``error`` / ``error_type`` (TEI's keys)."""

    message: str
    error: str
    error_type: str


class Health(BaseModel):
    status: str
    model: str | None = None
    backend: str | None = None
    kind: str | None = None
    cascade: str | None = Field(None, description="The cascade config behind /search, when the server has one.")
    detail: str | None = None


# --- the cascade: POST /search ------------------------------------------------------------------


class SearchRequest(BaseModel):
    """``POST /search``: the server's corpus searched by its cascade (``reranker serve --cascade``)."""

    model_config = ConfigDict(extra="forbid")
    query: QueryText
    top_n: StrictInt = Field(10, ge=1, description="Return the best top_n (capped at the student's depth).")
    return_documents: StrictBool = Field(False, description="Include each document's text (and title).")


class SearchDocument(BaseModel):
    text: str
    title: str | None = None


class SearchResult(BaseModel):
    doc_id: str = Field(description="The document's id (a corpus split into passages answers with each document once).")
    passage_id: str | None = Field(None, description="The document's best passage, for a corpus split into passages (a folder of documents); "
                                   "the scores and `document.text` are that passage's.")
    rank: int = Field(ge=1, description="1 for the best.")
    stage: Literal["teacher", "student"] = Field(description="The stage whose score orders this result.")
    relevance_score: float = Field(ge=0, le=1, description="The teacher's probability (teacher stage) or the sigmoid of the student's raw score.")
    raw_score: float = Field(description="The stage's raw score.")
    document: SearchDocument | None = Field(None, description="The document, when return_documents is true.")


class SearchTimings(BaseModel):
    first_stage: float
    student: float
    teacher: float


class SearchMeta(BaseModel):
    first_stage: str
    student_top_k: int
    teacher_top_k: int
    timings_ms: SearchTimings


class SearchResponse(BaseModel):
    id: str = Field(description="A unique id of this response.")
    results: list[SearchResult] = Field(description="Documents, most relevant first: the teacher's picks, then the student's order.")
    meta: SearchMeta


def error_body(message: str, error_type: str) -> dict[str, Any]:
    return {"message": message, "error": message, "error_type": error_type}
