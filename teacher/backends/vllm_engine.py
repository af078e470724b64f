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
from collections.abc import Sequence

from reranker.errors import MissingDependencyError

from ..base import Pair, TeacherError
from ..llm import LLMTeacher, chat_prompt, pooled_answer_logprobs

log = logging.getLogger(__name__)


class VLLMTeacher(LLMTeacher):
    name = "vllm"

    def __init__(
        self, model: str, prompt: str = "relevance-zeroshot", temperature: float = 1.0, tensor_parallel_size: int = 1,
        max_model_len: int = 4096, max_doc_chars: int = 2000, top_logprobs: int = 20, gpu_memory_utilization: float = 0.9,
        adapter: str | None = None, max_lora_rank: int = 64,
    ):
        super().__init__(prompt, temperature, max_doc_chars, model=model, max_model_len=max_model_len, adapter=adapter)
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

    def render(self, pair: Pair) -> str:
        text = super().render(pair)
        return chat_prompt(self._tok, text) if self.template.meta.get("chat") and getattr(self._tok, "chat_template", None) else text

    def logprobs_batch(self, pairs: Sequence[Pair]) -> list[list[list[float]]]:
        from vllm import SamplingParams

        self.warm_up()
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        lora = None
        if self.params["adapter"]:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("teacher", 1, self.params["adapter"])
        outputs = self._llm.generate([self.render(p) for p in pairs], params, use_tqdm=False, lora_request=lora)
        out = []
        for pair, result in zip(pairs, outputs):
            steps = result.outputs[0].logprobs if result.outputs else None
            if not steps:
                raise TeacherError(f"vLLM returned no logprobs for pair ({pair.query_id}, {pair.doc_id})")
            out.append(pooled_answer_logprobs([(e.decoded_token, e.logprob) for e in steps[0].values()], self.answers))
        return out
