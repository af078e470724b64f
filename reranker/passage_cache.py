"""Passage states computed once: an in-memory LRU and an on-disk store, both keyed by the SHA-256 of the passage text.

A separated export (:mod:`student.export`) scores a pair from each side's pooled vector and term ids; a passage's
state (:class:`PassageState`) does not depend on the query, so it is computed once per text and model (the
ColBERT / PreTTR idea: passage representations at index time, only the query at query time):

- :class:`StateCache`: bounded in memory (least recently used out first), what the server keeps between requests;
  its hits and misses are counted (``/metrics``);
- :class:`PassageStore`: a folder written by ``reranker index --states-model`` (or the pipeline) for a corpus, read by
  the scorer (``load_onnx(..., passage_store=DIR)``); it records the digest of the model it was built with
  (:attr:`reranker.onnx_runtime.OnnxScorer.state_digest`: the encoder graph's and the score graph's SHA-256 and the
  formatting), and a store built for another model is refused with the file named, never silently used.

No torch: the serving path uses this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RerankerError

log = logging.getLogger(__name__)

STORE_FILE = "passage_states.json"
#: the folder name of a store inside an export (the pipeline writes it) or an index (``reranker index --states-model``)
STORE_DIR = "passage_states"
STORE_FORMAT = 1
#: the default bound of the in-memory cache, in passages (a 384-d vector and up to 256 term ids: about 2.5 KB each)
DEFAULT_CACHE_ENTRIES = 50_000


def text_key(text: str) -> bytes:
    """The cache key of a passage: the SHA-256 of its UTF-8 text (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class PassageState:
    """What a separated scorer needs of a passage: its pooled vector (float32 ``[hidden]``) and its term ids
    (int64, no padding)."""

    vector: np.ndarray
    terms: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.vector.nbytes + self.terms.nbytes)


class StateCache:
    """An LRU of :class:`PassageState` s by text key, at most ``capacity`` entries (0: nothing is kept). Thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CACHE_ENTRIES):
        if capacity < 0:
            raise RerankerError(f"the passage cache's capacity must be 0 or more, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[bytes, PassageState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self._bytes = 0

    def get_many(self, keys: Sequence[bytes]) -> list[PassageState | None]:
        out: list[PassageState | None] = []
        with self._lock:
            for key in keys:
                state = self._items.get(key)
                if state is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    self._items.move_to_end(key)
                out.append(state)
        return out

    def put_many(self, keys: Sequence[bytes], states: Sequence[PassageState]) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            for key, state in zip(keys, states):
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._items[key] = state
                self._bytes += state.nbytes
            while len(self._items) > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses`` (lookups since start), ``entries``, ``capacity`` and ``bytes`` (the states' arrays)."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._items), "capacity": self.capacity,
                    "bytes": self._bytes}


class PassageStore:
    """Passage states on disk for one model: ``passage_states.json`` (model digest, vector size, shards) and one
    folder of NumPy arrays per shard (keys, vectors, term ids and their offsets). Shards are written whole and then
    listed, so a build that stops loses at most the shard it was writing; :meth:`missing` tells a resumed build what is
    left. Opened for reading, it loads the keys and memory-maps the vectors."""

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        self.meta = meta
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for number, shard in enumerate(meta["shards"]):
            self._load_shard(number, shard["name"])

    # --- opening -----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, digest: str, *, create: bool = False, hidden_size: int | None = None,
             describe: str = "") -> PassageStore:
        """The store in ``folder`` built for the model ``digest``; ``create``: make an empty one when there is none
        (the folder must be writable). A store of another model, or a corrupt one, is a :class:`RerankerError`."""
        folder = Path(folder)
        path = folder / STORE_FILE
        if not path.is_file():
            if not create:
                raise RerankerError(f"{path}: missing; build the passage states with `reranker index DATASET --out DIR "
                                    "--states-model MODEL_DIR` first")
            if hidden_size is None:
                raise RerankerError("PassageStore.open(create=True) needs the vector size")
            _check_writable(folder)
            meta = {"format_version": STORE_FORMAT, "model_digest": digest, "model": describe, "hidden_size": hidden_size,
                    "passages": 0, "shards": []}
            _write_json(path, meta)
            return cls(folder, meta)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RerankerError(f"{path}: not a readable passage-state file ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format_version") != STORE_FORMAT or not isinstance(meta.get("shards"), list):
            raise RerankerError(f"{path}: not a passage-state file of format {STORE_FORMAT}; build it again")
        if meta.get("model_digest") != digest:
            raise RerankerError(
                f"{path}: stale passage states, built for model {str(meta.get('model_digest'))[:12]}… ({meta.get('model', '?')}), "
                f"but the model now served is {digest[:12]}… ({describe}); its vectors would be wrong for it. Build them "
                "again for this model (`reranker index ... --states-model MODEL_DIR` into a new folder) or serve without them")
        if create:
            _check_writable(folder)
        return cls(folder, meta)

    def _load_shard(self, number: int, name: str) -> None:
        where = self.folder / name
        try:
            keys = np.load(where / "keys.npy")
            vectors = np.load(where / "vectors.npy", mmap_mode="r")
            terms = np.load(where / "terms.npy", mmap_mode="r")
            offsets = np.load(where / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise RerankerError(f"{where}: a shard of the passage states cannot be read ({exc}); build the states again") from None
        if keys.ndim != 2 or keys.shape[1] != 32 or vectors.shape != (len(keys), self.meta["hidden_size"]) or len(offsets) != len(keys) + 1:
            raise RerankerError(f"{where}: a shard of the passage states has inconsistent arrays (keys {keys.shape}, vectors "
                                f"{vectors.shape}, offsets {offsets.shape}); build the states again")
        self._shards.append((vectors, terms, offsets))
        for row, key in enumerate(keys):
            self._index[key.tobytes()] = (number, row)

    # --- reading -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def get_many(self, keys: Sequence[bytes]) -> list[PassageState | None]:
        out: list[PassageState | None] = []
        for key in keys:
            where = self._index.get(key)
            if where is None:
                out.append(None)
                continue
            vectors, terms, offsets = self._shards[where[0]]
            row = where[1]
            out.append(PassageState(np.array(vectors[row], dtype=np.float32), np.array(terms[offsets[row] : offsets[row + 1]])))
        return out

    def missing(self, keys: Sequence[bytes]) -> list[int]:
        """Positions of ``keys`` not in the store."""
        return [i for i, k in enumerate(keys) if k not in self._index]

    # --- writing -----------------------------------------------------------------------------------------------------
    def add(self, keys: Sequence[bytes], states: Sequence[PassageState]) -> None:
        """Write one shard with ``states`` (keys already stored are skipped) and list it in the store's file."""
        new = [(k, s) for k, s in zip(keys, states) if k not in self._index]
        if not new:
            return
        number = len(self.meta["shards"])
        name = f"shard-{number:05d}"
        tmp = self.folder / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.folder / name, ignore_errors=True)  # an orphan from a build that stopped before listing it
        try:
            tmp.mkdir(parents=True)
            lengths = [len(s.terms) for _, s in new]
            np.save(tmp / "keys.npy", np.frombuffer(b"".join(k for k, _ in new), dtype=np.uint8).reshape(len(new), 32))
            np.save(tmp / "vectors.npy", np.stack([s.vector for _, s in new]).astype(np.float32))
            np.save(tmp / "terms.npy", np.concatenate([s.terms for _, s in new]).astype(np.int64) if sum(lengths) else np.zeros(0, np.int64))
            np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            tmp.rename(self.folder / name)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RerankerError(f"{self.folder / name}: cannot write passage states ({exc})") from None
        self.meta["shards"].append({"name": name, "count": len(new)})
        self.meta["passages"] = int(self.meta.get("passages", 0)) + len(new)
        _write_json(self.folder / STORE_FILE, self.meta)
        self._load_shard(number, name)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RerankerError(f"{folder}: the passage-state folder is not writable ({exc.strerror or exc}); choose another --out") from None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise RerankerError(f"{path}: cannot write ({exc.strerror or exc})") from None
