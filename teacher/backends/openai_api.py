"""Any OpenAI-compatible server (vLLM, llama.cpp's server, TGI, SGLang, OpenAI) as a teacher and a query generator.

:class:`OpenAITeacher` asks for one token with its ``top_logprobs`` and reads the answer
variants' log-probabilities from them; a variant the server did not return counts as
``-inf`` (so ``top_logprobs`` should be as large as the server allows: OpenAI caps it at 20
for chat and 5 for legacy completions, vLLM at its ``--max-logprobs``, 20 by default).
Requests run concurrently (``max_concurrency`` at a time) on the official ``openai``
client; connection errors, timeouts, 429 and 5xx answers are retried with exponential
backoff, after which the batch fails with a :class:`TeacherError` naming the endpoint.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai
from openai import AsyncOpenAI

from teacher.base import Generated, Pair, QueryGenerator, TeacherError
from teacher.llm import LLMTeacher, pooled_answer_logprobs

T = TypeVar("T")

RETRY_STATUS = {408, 409, 429}




def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1) as pool:  # a loop is running here: use a fresh one in a thread
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


class _Endpoint:
    """Client settings, bounded concurrency and retries shared by the teacher and the generator."""

    backoff = 0.5  # seconds before the first retry; doubled after each, at most backoff_max
    backoff_max = 8.0

    def _init_endpoint(
        self, base_url: str, model: str, api_key: str | None, max_concurrency: int, timeout: float, max_retries: int,
    ) -> None:
        if max_concurrency < 1:
            raise TeacherError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise TeacherError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url, self.model = base_url, model
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries

    @property
    def where(self) -> str:
        return f"the OpenAI-compatible endpoint {self.base_url} (model {self.model!r})"

    def _client(self) -> AsyncOpenAI:
        # the client's own retries are off: ours back off and end in a TeacherError
        return AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0)

    async def _request(self, sem: asyncio.Semaphore, call: Callable[[], Awaitable[T]]) -> T:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                async with sem:
                    return await call()
            except openai.APIConnectionError as exc:  # refused, reset, DNS, timeout (APITimeoutError)
                last = exc
            except openai.APIStatusError as exc:
                if exc.status_code not in RETRY_STATUS and exc.status_code < 500:
                    raise TeacherError(f"{self.where} refused the request: HTTP {exc.status_code}: {exc.message}") from exc
                last = exc
            if attempt < self.max_retries:
                await asyncio.sleep(min(self.backoff_max, self.backoff * 2**attempt))
        detail = f"HTTP {last.status_code}: {last.message}" if isinstance(last, openai.APIStatusError) else f"{type(last).__name__}: {last}"
        raise TeacherError(f"{self.where} failed after {self.max_retries + 1} attempt(s): {detail}") from last

    def _run_all(self, jobs: Sequence[Callable[[AsyncOpenAI, asyncio.Semaphore], Awaitable[T]]]) -> list[T]:
        async def main() -> list[T]:
            sem = asyncio.Semaphore(self.max_concurrency)
            client = self._client()
            try:
                return list(await asyncio.gather(*(job(client, sem) for job in jobs)))
            finally:
                await client.close()

        return run_sync(main)


class OpenAITeacher(_Endpoint, LLMTeacher):
    """Soft labels from an OpenAI-compatible server's ``top_logprobs`` of the next token.

    ``chat`` (default: the template's ``chat`` entry) sends the rendered prompt as the user
    message of a chat completion; otherwise it is a legacy completion prompt (for base
    models and few-shot templates). ``temperature`` divides the answer log-odds; requests
    themselves are greedy. ``api_key`` defaults to ``$OPENAI_API_KEY``, else ``"none"``
    (local servers). Only ``base_url``, ``model``, the prompt, ``temperature``, ``chat``,
    ``top_logprobs`` and ``max_doc_chars`` make up the fingerprint (never the key).
    """

    name = "openai"

    def __init__(
        self, base_url: str, model: str, prompt: str = "relevance-zeroshot", temperature: float = 1.0,
        api_key: str | None = None, chat: bool | None = None, max_concurrency: int = 8, timeout: float = 60,
        max_retries: int = 3, top_logprobs: int = 20, max_doc_chars: int | None = 2000,
    ):
        if top_logprobs < 1:
            raise TeacherError(f"top_logprobs must be >= 1, got {top_logprobs}")
        from teacher.prompts import load_prompt

        self.chat = bool(load_prompt(prompt).meta.get("chat", False)) if chat is None else bool(chat)
        LLMTeacher.__init__(self, prompt, temperature, max_doc_chars, base_url=base_url, model=model, chat=self.chat,
                            top_logprobs=top_logprobs)
        self._init_endpoint(base_url, model, api_key, max_concurrency, timeout, max_retries)
        self.top_logprobs = top_logprobs

    async def _top(self, client: AsyncOpenAI, sem: asyncio.Semaphore, pair: Pair) -> list[tuple[str, float]]:
        """The server's top candidates for the next token: ``(token text, log-probability)``."""
        text = self.render(pair)
        if self.chat:
            resp = await self._request(sem, lambda: client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": text}], max_tokens=1, temperature=0.0,
                logprobs=True, top_logprobs=self.top_logprobs,
            ))
            content = resp.choices[0].logprobs.content if resp.choices and resp.choices[0].logprobs else None
            if not content:
                raise TeacherError(f"{self.where} returned no logprobs; it must support logprobs/top_logprobs")
            entries = [(t.token, t.logprob) for t in content[0].top_logprobs or []]
            if content[0].token not in {tok for tok, _ in entries}:
                entries.append((content[0].token, content[0].logprob))
        else:
            resp = await self._request(sem, lambda: client.completions.create(
                model=self.model, prompt=text, max_tokens=1, temperature=0.0, logprobs=self.top_logprobs,
            ))
            lp = resp.choices[0].logprobs if resp.choices else None
            if lp is None or not lp.top_logprobs or lp.top_logprobs[0] is None:
                raise TeacherError(f"{self.where} returned no logprobs; it must support logprobs on completions")
            entries = list(lp.top_logprobs[0].items())
        return entries

    def logprobs_batch(self, pairs: Sequence[Pair]) -> list[list[list[float]]]:
        """For each pair, the log-probabilities of each answer's variants (``-inf`` where not returned)."""

        def job(pair: Pair):
            async def run(client: AsyncOpenAI, sem: asyncio.Semaphore) -> list[list[float]]:
                return pooled_answer_logprobs(await self._top(client, sem, pair), self.answers)
            return run

        return self._run_all([job(p) for p in pairs])

    def pair_context(self, pair: Pair) -> str:
        return f"{self.where}, pair ({pair.query_id}, {pair.doc_id}) (top_logprobs={self.top_logprobs}; is the prompt right for this model?)"


class OpenAIGenerator(_Endpoint, QueryGenerator):
    """Query generation on an OpenAI-compatible server; ``mean_logprob`` is the mean of the
    generated tokens' log-probabilities as the server reports them (``0.0`` when it reports none).

    ``chat=False`` (the default) sends prompts as legacy completions (base models, few-shot
    prompts such as ``inpars``). The ``n`` samples of a prompt are separate requests, with
    ``seed + i`` as the i-th one's seed when a seed is given.
    """

    name = "openai"

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, chat: bool = False, max_concurrency: int = 8,
        timeout: float = 60, max_retries: int = 3,
    ):
        super().__init__(base_url=base_url, model=model, chat=chat)
        self._init_endpoint(base_url, model, api_key, max_concurrency, timeout, max_retries)
        self.chat = chat

    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
        stop: Sequence[str] = ("\n",), seed: int | None = None,
    ) -> list[list[Generated]]:
        stops = [s for s in stop if s] or None

        def job(prompt: str, i: int):
            async def run(client: AsyncOpenAI, sem: asyncio.Semaphore) -> Generated:
                kw: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature, "stop": stops}
                if seed is not None:
                    kw["seed"] = seed + i
                if self.chat:
                    resp = await self._request(sem, lambda: client.chat.completions.create(
                        messages=[{"role": "user", "content": prompt}], logprobs=True, **kw,
                    ))
                    choice = resp.choices[0]
                    text = choice.message.content or ""
                    lps = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
                else:
                    resp = await self._request(sem, lambda: client.completions.create(prompt=prompt, logprobs=1, **kw))
                    choice = resp.choices[0]
                    text = choice.text or ""
                    lps = list(choice.logprobs.token_logprobs or []) if choice.logprobs else []
                finite = [float(v) for v in lps if v is not None and math.isfinite(v)]
                return Generated(text.strip(), sum(finite) / len(finite) if finite else 0.0)
            return run

        flat = self._run_all([job(p, i) for p in prompts for i in range(n)])
        return [flat[k * n:(k + 1) * n] for k in range(len(prompts))]
