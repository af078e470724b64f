"""Hugging Face transformers backends: a causal LM as the teacher and as the query generator.

:class:`HFTeacher`: a transformers causal LM as the teacher: P(yes) from the next-token logits after the prompt.

Works with any causal LM by hub id or local folder (bf16 on CUDA, fp32 on CPU; never fp16,
and the logits are read in fp32). Templates marked ``chat: true`` are rendered as the user
turn of the tokenizer's chat template when it has one.

:class:`HFGenerator` runs any ``AutoModelForCausalLM`` (a hub id or a local folder) on the
rendered query-generation prompts of :mod:`teacher.generate` (InPars, Bonifacio et al. 2022;
Promptagator, Dai et al. 2022).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from reranker.errors import MissingDependencyError

from ..base import Generated, Pair, QueryGenerator, TeacherError
from ..llm import LLMTeacher, chat_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GeneratedTokens:
    """A generated text, its mean log-probability and the token ids that were kept for both."""

    text: str
    mean_logprob: float
    token_ids: list[int]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


def kept_prefix_length(decode, ids: Sequence[int], kept: str) -> int:
    """The fewest leading ``ids`` whose decoding starts with ``kept`` (all of them if none does).

    These are the tokens that produced the kept text; tokens after them (the stop string,
    what follows it) do not count towards the log-probability.
    """
    if not kept:
        return 0
    for m in range(1, len(ids) + 1):
        if decode(ids[:m]).startswith(kept):
            return m
    return len(ids)


def load_causal_lm(name: str, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                   adapter: str | None = None):
    """``(model, tokenizer, device, torch dtype)``: the causal LM ``name`` (a hub id or a local folder) in eval mode on
    ``device`` (default CUDA when there is one), bf16 on CUDA and fp32 on CPU unless ``dtype`` names one, with a
    LoRA ``adapter`` applied when given; the tokenizer pads on the left (the last position is the next token's) and
    always has a padding token. The one loader of the query generator and the teacher."""
    try:
        import torch
        import transformers
        from packaging.version import Version
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError("the hf backends", "llm", exc) from exc
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise TeacherError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, **{dtype_key: torch_dtype})
    except OSError as exc:
        raise TeacherError(f"cannot load the causal LM {name!r} (a hub id or a local folder): {exc}") from None
    if adapter:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise MissingDependencyError("LoRA adapters", "llm", exc) from exc
        model = PeftModel.from_pretrained(model, adapter)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None and tokenizer.unk_token is None:
            raise TeacherError(f"the tokenizer of {name!r} has neither a padding, an end-of-sequence nor an unknown token")
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token_id is not None else tokenizer.unk_token
    return model.to(device).eval(), tokenizer, device, torch_dtype


class HFGenerator(QueryGenerator):
    """Any transformers causal LM, by hub id or local folder; batched, left-padded generation.

    Greedy when ``temperature`` is 0, otherwise plain temperature sampling (``top_k`` and
    ``top_p`` off, whatever the model's own generation config says) seeded through
    :func:`torch.manual_seed` inside :func:`torch.random.fork_rng` (``generate`` takes no
    ``torch.Generator``), so the caller's random state is untouched and a seed replays.
    Greedy decoding with ``n > 1`` would repeat one text ``n`` times and is refused.

    ``mean_logprob`` is the mean, over the kept tokens (up to the first stop string; not the
    stop string, the end-of-sequence token or padding), of the model's log-probability of
    each token: log-softmax in fp32 of the raw logits (``output_logits``), i.e. before the
    temperature is applied, as InPars ranks its queries.

    Models load on first use (or :meth:`load`): bf16 on CUDA, fp32 on CPU unless ``dtype``
    says otherwise. ``batch_size`` counts prompts per forward pass (each gives ``n`` rows).
    """

    name: ClassVar[str] = "hf"

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto", batch_size: int = 8,
                 trust_remote_code: bool = False):
        if batch_size < 1:
            raise TeacherError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(model=str(model), device=device, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code)
        self.model = None
        self.tokenizer = None
        self.device = device

    def load(self) -> None:
        """Load the tokenizer and the model now (otherwise at the first :meth:`generate`)."""
        if self.model is not None:
            return
        name = self.params["model"]
        model, tokenizer, device, torch_dtype = load_causal_lm(name, self.device, self.params["dtype"], self.params["trust_remote_code"])
        self.model, self.tokenizer, self.device = model, tokenizer, device
        log.info("loaded %s on %s (%s)", name, device, torch_dtype)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[Generated]]:
        return [
            [Generated(g.text, g.mean_logprob) for g in row]
            for row in self.generate_with_tokens(prompts, n, temperature, max_tokens, stop, seed)
        ]

    def generate_with_tokens(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[GeneratedTokens]]:
        """Like :meth:`generate`, with the ids of the kept tokens of each text."""
        if n < 1:
            raise TeacherError(f"n must be at least 1, got {n}")
        if temperature < 0:
            raise TeacherError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0 and n > 1:
            raise TeacherError(f"greedy decoding (temperature 0) gives one text, not {n}; set a temperature > 0 to sample n")
        if max_tokens < 1:
            raise TeacherError(f"max_tokens must be at least 1, got {max_tokens}")
        if not prompts:
            return []
        import torch

        self.load()
        stop = [s for s in stop if s]
        out: list[list[GeneratedTokens]] = []
        devices = [torch.cuda.current_device()] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            size = self.params["batch_size"]
            for start in range(0, len(prompts), size):
                out.extend(self._generate_batch(list(prompts[start : start + size]), n, temperature, max_tokens, stop))
        return out

    def _generate_batch(self, prompts: list[str], n: int, temperature: float, max_tokens: int,
                        stop: list[str]) -> list[list[GeneratedTokens]]:
        import torch
        from transformers import GenerationConfig

        tok, model = self.tokenizer, self.model
        enc = tok(prompts, return_tensors="pt", padding=True).to(self.device)
        eos = self._eos_ids()
        sampling: dict[str, Any] = {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        config = GenerationConfig(
            max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos) or None, bos_token_id=model.generation_config.bos_token_id,
            return_dict_in_generate=True, output_logits=True, stop_strings=stop or None, **sampling,
        )
        with torch.inference_mode():
            result = model.generate(**enc, generation_config=config, tokenizer=tok)
        generated = result.sequences[:, enc["input_ids"].shape[1] :]
        # per-step log-probabilities of the chosen tokens, in fp32; one step at a time to bound memory
        chosen = torch.stack(
            [torch.log_softmax(step.float(), dim=-1).gather(1, generated[:, t : t + 1]).squeeze(1) for t, step in enumerate(result.logits)],
            dim=1,
        ).cpu()
        rows: list[GeneratedTokens] = []
        for ids, lps in zip(generated.cpu().tolist(), chosen.tolist()):
            end = next((i for i, t in enumerate(ids) if t in eos), len(ids))
            ids = ids[:end]
            kept = cut_at_stop(self._decode(ids), stop)
            m = kept_prefix_length(self._decode, ids, kept)
            mean = sum(lps[:m]) / m if m else 0.0
            if not math.isfinite(mean):
                log.warning("non-finite log-probability for a generated text; stored as -1e9")
                mean = -1e9
            rows.append(GeneratedTokens(kept.strip(), mean, ids[:m]))
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]


class HFTeacher(LLMTeacher):
    name = "hf"

    def __init__(
        self, model: str, prompt: str = "relevance-zeroshot", temperature: float = 1.0, max_length: int = 1024,
        max_doc_chars: int = 2000, batch_size: int = 8, device: str | None = None, adapter: str | None = None,
        dtype: str = "auto", trust_remote_code: bool = False,
    ):
        # dtype and trust_remote_code join the fingerprint only when set, so label stores made before they existed still match
        extra = {k: v for k, v in (("dtype", dtype), ("trust_remote_code", trust_remote_code)) if v not in ("auto", False)}
        super().__init__(prompt, temperature, max_doc_chars, model=model, max_length=max_length, adapter=adapter, **extra)
        self.batch_size = batch_size
        self.device = device
        self.dtype, self.trust_remote_code = dtype, trust_remote_code
        self._model = None
        self._tok = None
        self._answer_ids: list[list[int]] = []

    def warm_up(self) -> None:
        if self._model is not None:
            return
        self._model, self._tok, self._device, dtype = load_causal_lm(
            self.params["model"], self.device, self.dtype, self.trust_remote_code, adapter=self.params["adapter"])
        self._tok.truncation_side = "left"  # an over-long prompt loses its start, never the answer position
        self._chat = bool(self.template.meta.get("chat") and getattr(self._tok, "chat_template", None))
        self._answer_ids = [self._first_token_ids(variants) for variants in self.answers]
        log.info("hf teacher %s on %s (%s), prompt %s", self.params["model"], self._device, dtype, self.prompt_version)

    def _first_token_ids(self, variants: list[str]) -> list[int]:
        """The first token of each variant; a variant that is no single token of the vocabulary is left out."""
        ids = set()
        for v in variants:
            toks = self._tok.encode(v, add_special_tokens=False)
            if len(toks) == 1 and toks[0] != self._tok.unk_token_id:
                ids.add(toks[0])
        if not ids:
            raise TeacherError(
                f"model {self.params['model']!r} has none of the answer strings {variants} as a single token "
                f"(prompt {self.prompt_version}); choose a template whose answers the tokenizer knows"
            )
        return sorted(ids)

    def render(self, pair: Pair) -> str:
        text = super().render(pair)
        return chat_prompt(self._tok, text) if self._chat else text

    def answer_logprobs(self, chunk: Sequence[Pair]):
        """Next-token log-probabilities after each pair's prompt, a ``[len(chunk), vocab]`` fp32 tensor.

        Scoring and LoRA tuning (:mod:`teacher.tune`) both go through here, so the adapter is
        trained on exactly the prompt and answer position that labelling reads. Gradients flow
        unless the caller disables them.
        """
        import torch

        enc = self._tok(
            [self.render(p) for p in chunk], return_tensors="pt", padding=True, truncation=True,
            max_length=self.params["max_length"], add_special_tokens=not self._chat,  # a chat template has its own
        ).to(self._device)
        mask = enc["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        logits = self._model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions).logits
        logits = logits[:, -1, :].float()  # left padding: the last position predicts the next token
        return torch.log_softmax(logits, dim=-1)

    def logprobs_batch(self, pairs: Sequence[Pair]) -> list[list[list[float]]]:
        import torch

        self.warm_up()
        out: list[list[list[float]]] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            with torch.inference_mode():
                logprobs = self.answer_logprobs(chunk).cpu()
            out += [[[float(row[i]) for i in ids] for ids in self._answer_ids] for row in logprobs]
        return out
