"""The ONNX Runtime scorer: an exported folder (``reranker export``) as a :class:`~reranker.scoring.Scorer`.

Pairs are formatted and truncated by :func:`reranker.formatting.encode_pairs`, the function
training and export use, with NumPy outputs; this module never imports torch, so a serving
machine needs only ``onnxruntime`` (or ``onnxruntime-gpu``) and ``transformers``/``tokenizers``.

Execution providers, in order: TensorRT (only when asked for and installed), CUDA (when
``onnxruntime-gpu`` sees a GPU), CPU. On CUDA, inputs and the output are bound with IO binding.
Batches are formed from pairs sorted by length (less padding); thread counts are options.

The folder is checked on load: the model file's SHA-256 against the manifest (a corrupt or
replaced file is named), the session's inputs against the manifest, and the tokenizer against
the manifest (vocabulary size, pad id, answer tokens): a mismatch is a :class:`RerankerError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError, RerankerError
from .io.files import sha256
from .lexical import pad_ids
from .onnx_manifest import OnnxManifest
from .passage_cache import DEFAULT_CACHE_ENTRIES, STORE_DIR, STORE_FILE, PassageState, PassageStore, StateCache, text_key
from .scoring import ONNX_MANIFEST, STUDENT_CONFIG, PairScoring

__all__ = ["ONNX_MANIFEST", "OnnxScorer", "build_passage_store", "load_onnx", "resolve_providers"]

log = logging.getLogger(__name__)

#: pairs per run of a separated export's score graph
SCORE_CHUNK = 1024

PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("the ONNX scorer", "cpu", exc) from exc  # or the 'gpu' extra
    return onnxruntime


def resolve_providers(providers: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use, best first.

    ``None``: CUDA when available, then CPU (TensorRT only when named: its engines take minutes
    to build). Names may be short (``"cuda"``, ``"cpu"``, ``"tensorrt"``); one that this
    onnxruntime build lacks is an error listing what it has.
    """
    available = _ort().get_available_providers()
    if providers is None:
        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    else:
        wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise RerankerError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"(available: {', '.join(available)}); CUDA needs the 'gpu' extra (onnxruntime-gpu) instead of 'cpu'"
            )
        wanted = sorted(dict.fromkeys(wanted), key=lambda p: PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else len(PROVIDER_ORDER))
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")  # the fallback for any node the others cannot run
    return wanted


class OnnxScorer(PairScoring):
    """Scores ``(query, document)`` pairs with an exported ONNX graph (see :func:`load_onnx`).

    Attributes: ``kind`` (``"t5"`` / ``"cross-encoder"``), ``folder``, ``manifest``
    (:class:`~reranker.onnx_manifest.OnnxManifest`), ``precision``, ``providers`` (the session's,
    best first), ``config`` (the student config used for formatting), ``tokenizer``, ``session``.
    """

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, precision: str | None = None, cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 passage_store: str | Path | None = None):
        from reranker.student_config import StudentConfig

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RerankerError(f"{self.folder}: no such ONNX model folder")
        self.manifest = manifest = OnnxManifest.load(self.folder)
        self.kind = manifest.kind
        wanted = resolve_providers(providers)
        self.precision = precision or self._default_precision(wanted)
        if self.precision not in manifest.models:
            raise RerankerError(f"{self.folder}: no {self.precision} model exported (have: {', '.join(manifest.models)}); "
                                "re-export with --precision " + self.precision)
        entry = manifest.models[self.precision]
        path = self.folder / entry.file
        if not path.is_file():
            raise RerankerError(f"{path}: missing; the manifest lists it as the {self.precision} model")
        if entry.parity is not None and not entry.parity.passed:
            log.warning("%s: the %s model failed its parity check (see %s)", self.folder, self.precision, ONNX_MANIFEST)
        digest = sha256(path)
        if digest != entry.sha256:
            raise RerankerError(f"{path}: checksum mismatch (sha256 {digest[:12]}…, manifest {entry.sha256[:12]}…): "
                                "the file is corrupt or was replaced; export the model again")
        self.config = StudentConfig.load(self.folder / STUDENT_CONFIG)
        if self.kind == "t5" and self.config.template != manifest.template:
            raise RerankerError(f"{self.folder / STUDENT_CONFIG}: template {self.config.template!r} but {ONNX_MANIFEST} says "
                                f"{manifest.template!r}; the files do not belong to the same export")
        if self.kind == "t5" and not (self.folder / self.config.template).is_file():
            raise RerankerError(f"{self.folder / self.config.template}: missing; the export's template file")
        if self.config.template and (self.folder / self.config.template).is_file():
            self.config = dataclasses.replace(self.config, template=str((self.folder / self.config.template).resolve()))
        self._check_config()
        self.tokenizer = self._load_tokenizer()
        self.session = self._session(path, wanted, intra_op_threads, inter_op_threads)
        self.providers = list(self.session.get_providers())
        names = [i.name for i in self.session.get_inputs()]
        if names != manifest.inputs:
            raise RerankerError(f"{path}: the graph's inputs {names} are not the manifest's {manifest.inputs}")
        self._io_binding = "CUDAExecutionProvider" in self.providers[:1] or (
            self.providers[:1] == ["TensorrtExecutionProvider"] and "CUDAExecutionProvider" in self.providers)
        self.separated = manifest.layout == "separated"
        self.cache = StateCache(cache_entries if self.separated else 0)
        self.store: PassageStore | None = None
        self._store_hits = self._encoded = 0
        if self.separated:
            self._score_session, self.state_digest = self._score_graph(entry.sha256, intra_op_threads)
            if passage_store is not None:
                self.store = PassageStore.open(passage_store, self.state_digest, describe=self.describe())
                log.info("passage states: %d passages from %s", len(self.store), passage_store)
            elif (self.folder / STORE_DIR / STORE_FILE).is_file():  # stored with the export (the pipeline does)
                try:
                    self.store = PassageStore.open(self.folder / STORE_DIR, self.state_digest, describe=self.describe())
                    log.info("passage states: %d passages from %s", len(self.store), self.folder / STORE_DIR)
                except RerankerError as exc:
                    log.warning("not using the export's passage states: %s", exc)
        elif passage_store is not None:
            raise RerankerError(f"{self.folder}: a {manifest.layout}-layout export scores each pair in one graph and has no "
                                "passage states to read; export a hybrid student with --layout separated (the default) to use them")
        log.info("ONNX %s scorer (%s) from %s on %s", self.kind, self.precision, self.folder, ", ".join(self.providers))

    # --- loading ------------------------------------------------------------------------

    def _default_precision(self, providers: list[str]) -> str:
        """GPU: fp16 when exported, else fp32; CPU: the graph ``--precision auto`` chose (the manifest's
        ``choice``), else int8 when exported, else fp32."""
        models = self.manifest.models
        gpu = providers[0] != "CPUExecutionProvider"
        choice = self.manifest.choice
        if not gpu and choice is not None and choice.precision in models:
            return choice.precision
        preferred = "fp16" if gpu else "int8"
        return preferred if preferred in models else "fp32" if "fp32" in models else next(iter(models))

    def _check_config(self) -> None:
        m, c, where = self.manifest, self.config, self.folder / STUDENT_CONFIG
        for key in ("kind", "max_length", "query_max_length", "true_token_id", "false_token_id"):
            if getattr(c, key) != getattr(m, key):
                raise RerankerError(f"{where}: {key} is {getattr(c, key)!r} but {ONNX_MANIFEST} says {getattr(m, key)!r}; "
                                    "the files do not belong to the same export")

    def _load_tokenizer(self) -> Any:
        try:
            import transformers
        except ImportError as exc:
            raise MissingDependencyError("the ONNX scorer's tokenizer", "cpu", exc) from exc
        try:
            tokenizer = _tokenizer_class(transformers, self.folder).from_pretrained(str(self.folder))
        except (OSError, ValueError) as exc:
            raise RerankerError(f"{self.folder}: could not load the tokenizer ({exc})") from None
        info = self.manifest.tokenizer
        problems = []
        if len(tokenizer) != info.vocab_size:
            problems.append(f"vocabulary size {len(tokenizer)} (manifest: {info.vocab_size})")
        if tokenizer.pad_token_id != info.pad_token_id:
            problems.append(f"pad id {tokenizer.pad_token_id} (manifest: {info.pad_token_id})")
        if len(tokenizer) > info.embedding_rows:
            problems.append(f"{len(tokenizer)} tokens for a model with {info.embedding_rows} embeddings")
        if problems:
            raise RerankerError(f"{self.folder}: the tokenizer does not match {ONNX_MANIFEST}: {'; '.join(problems)}; "
                                "it belongs to another model (copy the exported tokenizer files back or export again)")
        if self.kind == "t5":
            self.config.resolve_tokens(tokenizer)  # answer ids stored in the config must be the tokenizer's
        return tokenizer

    @staticmethod
    def _session(path: Path, providers: list[str], intra: int | None, inter: int | None):
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Batches change shape with every request: memory patterns planned per shape would be kept for
        # each new one and the server's memory would creep; without them it stays flat at the same speed.
        options.enable_mem_pattern = False
        if intra is not None:
            options.intra_op_num_threads = intra
        if inter is not None:
            options.inter_op_num_threads = inter
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if inter > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 (onnxruntime raises its own types: InvalidProtobuf, Fail, ...)
            raise RerankerError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:300]}); "
                                "the file is corrupt or not an export of this project") from None

    def _score_graph(self, encoder_sha256: str, threads: int | None) -> tuple[Any, str]:
        """The separated layout's score graph (checked like the encoder; CPU: a few element-wise operations) and the
        digest passage states are valid for: both graphs' SHA-256 and the formatting that made the inputs."""
        graph = self.manifest.score_graph
        if graph is None or self.manifest.document_tokens is None or self.manifest.hidden_size is None:
            raise RerankerError(f"{self.folder / ONNX_MANIFEST}: a separated export without its score graph, document_tokens or "
                                "hidden_size; export the model again")
        path = self.folder / graph.file
        if not path.is_file():
            raise RerankerError(f"{path}: missing; the manifest lists it as the score graph")
        digest = sha256(path)
        if digest != graph.sha256:
            raise RerankerError(f"{path}: checksum mismatch (sha256 {digest[:12]}…, manifest {graph.sha256[:12]}…): "
                                "the file is corrupt or was replaced; export the model again")
        session = self._session(path, ["CPUExecutionProvider"], threads, None)
        c = self.config
        parts = [encoder_sha256, graph.sha256, str(self.manifest.document_tokens), str(c.max_length), str(c.lexical_buckets),
                 c.lexical_language, str(len(self.tokenizer))]
        return session, hashlib.sha256("|".join(parts).encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.folder.resolve()}, {self.precision}"

    def cache_stats(self) -> dict[str, int]:
        """The in-memory passage cache's ``hits``, ``misses``, ``entries``, ``capacity`` and ``bytes`` (all 0 for a
        pair-layout export, which has none); ``stored``: passages in the on-disk store, ``store_hits``: misses found
        there; ``encoded``: passages encoded (found in neither)."""
        return {**self.cache.stats(), "stored": len(self.store) if self.store is not None else 0, "store_hits": self._store_hits,
                "encoded": self._encoded}

    # --- scoring ------------------------------------------------------------------------

    def encode(self, queries: Sequence[str], documents: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's inputs: :func:`reranker.formatting.encode_pairs` with NumPy arrays."""
        from reranker.formatting import encode_pairs

        arrays = encode_pairs(self.tokenizer, self.config, queries, documents, return_tensors="np")
        missing = [n for n in self.manifest.inputs if n not in arrays]
        if missing:
            raise RerankerError(f"{self.folder}: the tokenizer does not produce the graph input(s) {missing}")
        return {n: arrays[n] for n in self.manifest.inputs}

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if not self._io_binding:
            return self.session.run([self.manifest.output], inputs)[0]
        ort = _ort()
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0))
        binding.bind_output(self.manifest.output, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """float32 scores in input order; batches of pairs sorted by length, longest first. Separated layout: each
        distinct query and passage is encoded once (passages from the cache or the store when there), then the pairs
        are scored from their vectors."""
        pairs = list(pairs)
        if batch_size < 1:
            raise RerankerError(f"batch_size must be at least 1, got {batch_size}")
        if self.separated:
            return self._score_separated(pairs, batch_size)
        scores = np.empty(len(pairs), dtype=np.float32)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out = self._run(self.encode([pairs[i][0] for i in idx], [pairs[i][1] for i in idx]))
            scores[idx] = np.asarray(out, dtype=np.float32).reshape(-1)
        return scores

    def _score_separated(self, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
        if not pairs:
            return np.empty(0, dtype=np.float32)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        documents = list(dict.fromkeys(d for _, d in pairs))
        q_states = dict(zip(queries, self.encode_texts(queries, "query", batch_size)))
        d_states = dict(zip(documents, self.passage_states(documents, batch_size)))
        scores = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), SCORE_CHUNK):
            chunk = pairs[start : start + SCORE_CHUNK]
            qs, ds = [q_states[q] for q, _ in chunk], [d_states[d] for _, d in chunk]
            feeds = {"query_vector": np.stack([s.vector for s in qs]), "doc_vector": np.stack([s.vector for s in ds]),
                     "query_terms": pad_ids([s.terms for s in qs]), "doc_terms": pad_ids([s.terms for s in ds])}
            scores[start : start + len(chunk)] = np.asarray(self._score_session.run(["score"], feeds)[0], np.float32).reshape(-1)
        return scores

    def passage_states(self, documents: Sequence[str], batch_size: int = 32) -> list[PassageState]:
        """Each passage's state: from the in-memory cache, else the on-disk store, else encoded now (and cached)."""
        keys = [text_key(d) for d in documents]
        states = self.cache.get_many(keys)
        if self.store is not None:
            todo = [i for i, s in enumerate(states) if s is None]
            for i, s in zip(todo, self.store.get_many([keys[i] for i in todo])):
                states[i] = s
                self._store_hits += s is not None
            self.cache.put_many([keys[i] for i in todo if states[i] is not None], [states[i] for i in todo if states[i] is not None])
        todo = [i for i, s in enumerate(states) if s is None]
        if todo:
            fresh = self.encode_texts([documents[i] for i in todo], "document", batch_size)
            self._encoded += len(todo)
            for i, s in zip(todo, fresh):
                states[i] = s
            self.cache.put_many([keys[i] for i in todo], fresh)
        return states  # type: ignore[return-value]

    def encode_texts(self, texts: Sequence[str], side: str, batch_size: int = 32) -> list[PassageState]:
        """Vectors and term ids of ``texts`` encoded alone (``side``: ``"query"`` or ``"document"``), batched by length."""
        from reranker.formatting import encode_segments

        texts = list(texts)
        out: list[PassageState | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            arrays = encode_segments(self.tokenizer, self.config, [texts[i] for i in idx], side)
            vectors = np.asarray(self._run({n: arrays[n] for n in self.manifest.inputs}), dtype=np.float32)
            for row, i in enumerate(idx):
                terms = arrays["terms"][row]
                out[i] = PassageState(vectors[row].copy(), terms[terms > 0].copy())
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"OnnxScorer({str(self.folder)!r}, kind={self.kind!r}, precision={self.precision!r}, providers={self.providers})"


def _tokenizer_class(transformers: Any, folder: Path) -> Any:
    """The tokenizer class that ``tokenizer_config.json`` names, as ``AutoTokenizer`` would pick it, but without
    ``AutoTokenizer``'s model registry, which imports torch when it is installed: serving stays free of torch."""
    import json

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError):
        name = None
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    return cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoTokenizer


def build_passage_store(scorer: OnnxScorer, texts: Sequence[str], folder: str | Path, batch_size: int = 32,
                        shard_size: int = 4096) -> tuple[int, int]:
    """Encode the passages ``texts`` with a separated export and store their states in ``folder`` (shards of
    ``shard_size``; a stopped build resumes with the passages not yet stored). Returns (encoded now, stored in all)."""
    from tqdm.auto import tqdm

    if not scorer.separated:
        raise RerankerError(f"{scorer.folder}: a {scorer.manifest.layout}-layout export has no passage states; export the "
                            "student with --layout separated (the default for a hybrid student without its joint pass)")
    store = PassageStore.open(folder, scorer.state_digest, create=True, hidden_size=int(scorer.manifest.hidden_size or 0),
                              describe=scorer.describe())
    unique = list(dict.fromkeys(texts))
    keys = [text_key(t) for t in unique]
    todo = store.missing(keys)
    if len(todo) < len(unique):
        log.info("passage states: %d of %d already in %s", len(unique) - len(todo), len(unique), folder)
    with tqdm(total=len(todo), desc="passage states", unit="passage", disable=not todo) as bar:
        for start in range(0, len(todo), shard_size):
            idx = todo[start : start + shard_size]
            states = scorer.encode_texts([unique[i] for i in idx], "document", batch_size)
            store.add([keys[i] for i in idx], states)
            bar.update(len(idx))
    return len(todo), len(store)


def load_onnx(folder: str | Path, providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
              inter_op_threads: int | None = None, precision: str | None = None, cache_entries: int | None = None,
              passage_store: str | Path | None = None, **unused: Any) -> OnnxScorer:
    """The scorer of an exported folder.

    ``providers``: execution providers (default CUDA if available, then CPU; ``["tensorrt", "cuda"]``
    for TensorRT); ``intra_op_threads`` / ``inter_op_threads``: ONNX Runtime's thread pools
    (default: ONNX Runtime's own choice; ``RERANKER_ORT_THREADS`` sets the intra-op count);
    ``precision``: ``"fp32"``, ``"int8"`` or ``"fp16"`` (default: fp16 on GPU when exported; on CPU the
    graph that ``--precision auto`` chose, else int8 when exported; else fp32).
    Separated exports: ``cache_entries`` bounds the in-memory passage cache (default
    :data:`~reranker.passage_cache.DEFAULT_CACHE_ENTRIES`, env ``RERANKER_CACHE_ENTRIES``; 0: none);
    ``passage_store``: a folder of passage states built for this model (env ``RERANKER_PASSAGE_STATES``).
    """
    if unused:
        raise RerankerError(f"load_onnx: unknown option(s) {', '.join(sorted(unused))} (it takes providers, intra_op_threads, "
                            "inter_op_threads, precision, cache_entries, passage_store)")
    if intra_op_threads is None and os.environ.get("RERANKER_ORT_THREADS"):
        intra_op_threads = int(os.environ["RERANKER_ORT_THREADS"])
    if cache_entries is None:
        cache_entries = _int_env("RERANKER_CACHE_ENTRIES", DEFAULT_CACHE_ENTRIES)
    if passage_store is None and os.environ.get("RERANKER_PASSAGE_STATES"):
        passage_store = os.environ["RERANKER_PASSAGE_STATES"]
    return OnnxScorer(folder, providers, intra_op_threads, inter_op_threads, precision, cache_entries, passage_store)


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise RerankerError(f"{name}={value!r}: expected a whole number") from None
