"""The vLLM offline engine as a teacher, for GPU machines (tensor parallel over several GPUs).

One forward pass per pair with ``max_tokens=1`` and ``logprobs=top_logprobs``: the answer
variants' log-probabilities are read from the returned top tokens (``-inf`` where a variant
is not among them), exactly as the ``openai`` backend reads a vLLM server's answer. vLLM does
not install on CPU-only machines; where it is not installed the registry names the extra.
Not exercised by this project's CI (no GPU there); the ``openai`` backend against
``vllm serve`` is the tested route to the same engine.

A LoRA adapter from ``reranker teacher-tune`` loads with ``-p adapter=DIR``: the engine starts
with ``enable_lora=True`` (``max_lora_rank`` at least the adapter's rank) and every request
carries ``LoRARequest("teacher", 1, DIR)``. With ``vllm serve``, pass
``--enable-lora --lora-modules teacher=DIR`` and use ``--teacher openai -p model=teacher``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from reranker.errors import MissingDependencyError

from ..base import Judgement, Pair, Teacher, TeacherError
from ..llm import answer_strings, judgement_from_logprobs, logsumexp, truncate_words
from ..prompts import load_prompt

log = logging.getLogger(__name__)


class VLLMTeacher(Teacher):
    name = "vllm"

    def __init__(
        self, model: str, prompt: str = "relevance-zeroshot", temperature: float = 1.0, tensor_parallel_size: int = 1,
        max_model_len: int = 4096, max_doc_chars: int = 2000, top_logprobs: int = 20, gpu_memory_utilization: float = 0.9,
        adapter: str | None = None, max_lora_rank: int = 64,
    ):
        super().__init__(model=model, prompt=prompt, temperature=temperature, max_model_len=max_model_len, max_doc_chars=max_doc_chars,
                         adapter=adapter)
        self.template = load_prompt(prompt)
        self.prompt_version = self.template.key
        self.answers = answer_strings(self.template)
        self.engine_args = {"tensor_parallel_size": tensor_parallel_size, "max_model_len": max_model_len,
                                "gpu_memory_utilization": gpu_memory_utilization, "max_logprobs": top_logprobs, "dtype": "bfloat16"}
        if adapter:
            self.engine_args.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.top_logprobs = top_logprobs
        self._llm = None

    def warm_up(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as exc:
            raise MissingDependencyError("the vllm teacher", "vllm", exc) from exc
        self._llm = LLM(model=self.params["model"], **self.engine_args)
        self._tok = self._llm.get_tokenizer()

    def _render(self, pair: Pair) -> str:
        text = self.template.render(query=pair.query, document=truncate_words(pair.document, self.params["max_doc_chars"]))
        if self.template.meta.get("chat") and getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        from vllm import SamplingParams

        self.warm_up()
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        lora = None
        if self.params["adapter"]:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("teacher", 1, self.params["adapter"])
        outputs = self._llm.generate([self._render(p) for p in pairs], params, use_tqdm=False, lora_request=lora)
        judgements = []
        for pair, out in zip(pairs, outputs):
            steps = out.outputs[0].logprobs if out.outputs else None
            if not steps:
                raise TeacherError(f"vLLM returned no logprobs for pair ({pair.query_id}, {pair.doc_id})")
            pooled: dict[str, list[float]] = {}
            for entry in steps[0].values():
                pooled.setdefault(entry.decoded_token, []).append(float(entry.logprob))
            top = {tok: logsumexp(v) for tok, v in pooled.items()}
            lps = [[top.get(v, -math.inf) for v in side] for side in self.answers]
            judgements.append(judgement_from_logprobs(self.template, lps, self.params["temperature"]))
        return judgements
