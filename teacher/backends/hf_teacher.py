"""A transformers causal LM as the teacher: P(yes) from the next-token logits after the prompt.

Works with any causal LM by hub id or local folder (bf16 on CUDA, fp32 on CPU; never fp16,
and the logits are read in fp32). Templates marked ``chat: true`` are rendered as the user
turn of the tokenizer's chat template when it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reranker.errors import MissingDependencyError, RerankerError

from ..base import Judgement, Pair, Teacher, TeacherError
from ..llm import answer_strings, judgement_from_logprobs, truncate_words
from ..prompts import load_prompt

log = logging.getLogger(__name__)


class HFTeacher(Teacher):
    name = "hf"

    def __init__(
        self, model: str, prompt: str = "relevance-zeroshot", temperature: float = 1.0, max_length: int = 1024,
        max_doc_chars: int = 2000, batch_size: int = 8, device: str | None = None, adapter: str | None = None,
    ):
        super().__init__(model=model, prompt=prompt, temperature=temperature, max_length=max_length, max_doc_chars=max_doc_chars, adapter=adapter)
        self.template = load_prompt(prompt)
        self.prompt_version = self.template.key
        self.answers = answer_strings(self.template)
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._tok = None
        self._answer_ids: list[list[int]] = []

    def warm_up(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError("the hf teacher", "llm", exc) from exc
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            self._tok = AutoTokenizer.from_pretrained(self.params["model"])
            model = AutoModelForCausalLM.from_pretrained(self.params["model"], dtype=dtype)
        except OSError as exc:
            raise RerankerError(f"could not load the hf teacher model {self.params['model']!r}: {exc}") from None
        if self.params["adapter"]:
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise MissingDependencyError("LoRA adapters", "llm", exc) from exc
            model = PeftModel.from_pretrained(model, self.params["adapter"])
        self._model = model.to(device).eval()
        self._device = device
        self._tok.padding_side = "left"
        self._tok.truncation_side = "left"  # an over-long prompt loses its start, never the answer position
        self._chat = bool(self.template.meta.get("chat") and getattr(self._tok, "chat_template", None))
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
        self._answer_ids = [self._first_token_ids(variants) for variants in self.answers]
        log.info("hf teacher %s on %s (%s), prompt %s", self.params["model"], device, dtype, self.prompt_version)

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
        text = self.template.render(query=pair.query, document=truncate_words(pair.document, self.params["max_doc_chars"]))
        if self._chat:
            return self._tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

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

    def score_batch(self, pairs: Sequence[Pair]) -> list[Judgement]:
        import torch

        self.warm_up()
        out: list[Judgement] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            with torch.inference_mode():
                logprobs = self.answer_logprobs(chunk).cpu()
            for row in logprobs:
                per_answer = [[float(row[i]) for i in ids] for ids in self._answer_ids]
                out.append(judgement_from_logprobs(self.template, per_answer, self.params["temperature"]))
        return out
