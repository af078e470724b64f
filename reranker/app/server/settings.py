"""Every option of the re-rank server, each also an environment variable ``RERANKER_<NAME>``.

``reranker serve`` flags override the environment; the environment overrides the defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from reranker.io.documents import ChunkConfig


class ServerSettings(BaseSettings):
    """Options of :func:`reranker.app.server.app.create_app` and ``reranker serve``."""

    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore", validate_default=True)

    # --- the model --------------------------------------------------------------------------
    model: str | None = Field(None, description="Model folder: a student (`reranker distill`) or an ONNX export (`reranker export`).")
    backend: str = Field("auto", description="auto (by the folder's files), torch or onnx.")
    device: str | None = Field(None, description="torch backend: device to run on (cpu, cuda, cuda:1); default cpu.")
    threads: int | None = Field(None, ge=1, description="Intra-op CPU threads (torch.set_num_threads, or ONNX Runtime's intra_op_num_threads).")
    precision: Literal["fp32", "int8", "fp16"] | None = Field(
        None, description="ONNX: which exported graph (default int8 on CPU, fp16 on GPU, when exported). int8 quantises "
        "activations per batch, so its scores move slightly with batching; fp32 scores do not.")
    model_name: str | None = Field(None, description="Name reported by the API (default: the model folder's name).")
    passage_states: str | None = Field(None, description="ONNX separated export: passage states built for it (`reranker index "
                                       "--states-model`); default: the export's own passage_states folder when it matches.")
    cache_entries: int | None = Field(None, ge=0, description="ONNX separated export: passages kept in the in-memory cache "
                                      "(default 50000, about 2.5 KB each; 0: none).")
    warmup: bool = Field(True, description="Score a few pairs before reporting ready.")
    cascade: str | None = Field(
        None, description="Cascade config (YAML/JSON, e.g. a pipeline run's cascade.yaml): serve POST /search, first stage -> "
        "this student -> teacher over its corpus, loaded before ready.")

    # --- HTTP -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port.")
    api_key: SecretStr | None = Field(None, description="When set, rerank requests need 'Authorization: Bearer <key>'.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS (off when empty; '*' for any).")
    log_level: str = Field("info", description="uvicorn log level.")
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM (or Ctrl-C): /ready answers 503 and new requests 503 at once; requests already "
        "admitted are scored and answered for at most this long, then the rest get 503 with Retry-After and the server exits.")

    # --- dynamic batching -------------------------------------------------------------------
    max_batch_tokens: int = Field(16384, ge=1, description="Token budget of one model batch (pairs x padded length).")
    max_batch_pairs: int = Field(256, ge=1, description="Most pairs in one model batch.")
    max_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits for more pairs before it runs.")
    max_queue_pairs: int = Field(8192, ge=1, description="Pairs waiting for the model; beyond it requests get 429 with Retry-After.")

    # --- limits -----------------------------------------------------------------------------
    max_documents: int = Field(1000, ge=1, description="Most documents in one request (413 beyond).")
    max_chars: int = Field(100_000, ge=1, description="Most characters in the query and in each document (413 beyond).")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body (413 beyond).")

    # --- long documents ---------------------------------------------------------------------
    long_docs: Literal["truncate", "window"] = Field(
        "truncate", description="truncate: cut to the model's length; window: score overlapping word windows, keep the max.")
    # the windows default to the passages' own (ChunkConfig): a long document is cut as the corpus was at index time
    window_words: int = Field(ChunkConfig.words, ge=1, description="long_docs=window: words per window.")
    window_overlap: int = Field(ChunkConfig.overlap, ge=0, description="long_docs=window: words shared by neighbouring windows.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.window_overlap >= self.window_words:
            raise ValueError(f"window_overlap ({self.window_overlap}) must be smaller than window_words ({self.window_words})")
        if self.long_docs == "truncate" and self.max_documents > self.max_queue_pairs:
            raise ValueError(f"max_documents ({self.max_documents}) exceeds max_queue_pairs ({self.max_queue_pairs}): "
                             "a full request could never be queued")
        return self

    def display(self) -> dict:
        """The settings for a log line, the API key masked."""
        out = self.model_dump()
        out["api_key"] = "***" if self.api_key else None
        return out
