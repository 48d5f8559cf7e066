"""The provider-independent half of the chat interface: answers, errors, cache and accounting.

`ChatModel.generate(prompts, sampling, n)` expands every prompt into `n` jobs (sample index
0..n-1), answers what it can from the response cache, hands the rest to the provider's `run`
function, and writes each fresh answer to the cache as soon as it arrives, so a crash loses no
paid call and a rerun makes none. With `sampling.stop_on_repeat` every answer, fresh or cached,
comes back cut at its first repeated sentence (`recxplain.text.cut_at_repeated_sentence`); the
cache keeps what the provider returned. A thinking model's `<think>...</think>` block is removed
from every answer before anything reads it (`strip_thinking`), whatever `llm.thinking` says.

A provider is two things (see local.py, openai_api.py, anthropic_api.py):
- `identity`: a dict that, with the messages, sampling parameters and sample index, names an
  answer in the cache (provider, model, endpoint, adapter content hash, ...). No secret in it.
- `run(jobs, sampling, usage)`: yields `(job_index, Generation)` in any order as answers arrive.

Failure policy: one prompt's failure never sinks the batch. A malformed response, a refused
request (HTTP 400/413/422) or a transient error that outlived its retries becomes a Generation
with `error` set and empty text (`valid` is False, `usage["errors"]` counts it); it is not
cached, so the next run asks again. Errors that would fail every prompt alike (a missing API key,
HTTP 401/403/404: wrong key, no access, unknown model or endpoint) raise `ProviderError` at once;
answers received before that are already in the cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

from tqdm.auto import tqdm

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm.cache import ResponseCache, cache_key
from recxplain.text import cut_at_repeated_sentence


class LLMError(Exception):
    """Base of the errors this package raises."""


class ProviderError(LLMError):
    """A failure that would hit every prompt alike (configuration, key, access, unknown model)."""


class MalformedResponse(LLMError):
    """The provider answered, but not with a usable chat completion (bad JSON, missing fields)."""


@dataclass(frozen=True)
class Generation:
    """One answer to one prompt.

    Attributes:
        text: the assistant's answer ("" when `error` is set).
        prompt_tokens: tokens in the prompt as the provider counted them.
        completion_tokens: tokens generated (up to and including the stop token).
        latency_s: seconds from request to answer (local: the wall time of its batch; cached:
            the latency of the original call).
        cached: True when read from the response cache (no call made).
        error: None for a usable answer; otherwise why there is none (`MalformedResponse: ...`,
            `RateLimitError: ...` after the last retry, ...). Never contains the API key.
        finish_reason: `stop` (the model ended its answer) or `length` (hit max_new_tokens);
            None when unknown.
        thinking_tokens: of `completion_tokens`, those the model spent thinking: as the API
            reports them (OpenAI's `reasoning_tokens`, Anthropic's `thinking_tokens`), counted by
            the local provider, or estimated from the removed `<think>` block's share of the
            text when a server returns it inline without a count.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None
    finish_reason: str | None = None
    thinking_tokens: int = 0

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Job:
    """One answer to produce: sample `index` of `messages`."""

    messages: list[dict]
    index: int


class Usage:
    """Thread-safe counters behind `ChatModel.usage` (the API providers count from worker threads).

    calls: answers requested from the provider (cache misses); retries: extra attempts after a
    transient error; errors: answers that ended as an error Generation; cache_hits: answers
    read from the cache; prompt_tokens / completion_tokens / cost_usd: of fresh calls only (what
    this run paid); thinking_tokens: of completion_tokens, those spent thinking (in the dict only
    when a model thought, so the stats of models that do not think keep their shape); seconds:
    wall time spent inside `generate`.
    """

    FIELDS = ("calls", "cache_hits", "errors", "retries", "prompt_tokens", "completion_tokens",
              "thinking_tokens", "cost_usd", "seconds")

    def __init__(self, cfg: LLMConfig):
        self._cfg = cfg
        self._lock = threading.Lock()
        self._counts: dict[str, float] = {name: 0 for name in self.FIELDS}
        self._counts["cost_usd"] = 0.0
        self._counts["seconds"] = 0.0

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, amount in counts.items():
                self._counts[name] += amount

    def add_generation(self, generation: Generation) -> None:
        """Count one fresh answer: tokens, cost at the configured prices, or an error."""
        if generation.error is not None:
            self.add(errors=1)
            return
        cost = (generation.prompt_tokens * self._cfg.price_per_million_input
                + generation.completion_tokens * self._cfg.price_per_million_output) / 1e6
        self.add(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                 thinking_tokens=generation.thinking_tokens, cost_usd=cost)

    def as_dict(self) -> dict:
        with self._lock:
            out = dict(self._counts)
        for name in self.FIELDS:
            if name not in ("cost_usd", "seconds"):
                out[name] = int(out[name])
        if not out["thinking_tokens"]:
            del out["thinking_tokens"]
        out["cost_usd"] = round(out["cost_usd"], 8)
        out["seconds"] = round(out["seconds"], 3)
        return out


Run = Callable[[list[Job], SamplingConfig, Usage], Iterator[tuple[int, Generation]]]


class ChatModel:
    """A chat model behind one provider, with a persistent response cache and usage counters.

    Build it with `recxplain.llm.load_chat_model`. `generate` is the whole interface; `usage`
    is a dict of counters since the model was built (write it to the stage's stats).
    """

    def __init__(self, cfg: LLMConfig, identity: dict, run: Run, cache: ResponseCache | None):
        self.cfg = cfg
        self.identity = identity
        self._run = run
        self._cache = cache
        self._usage = Usage(cfg)

    def __repr__(self) -> str:
        return f"ChatModel(provider={self.cfg.provider!r}, model={self.cfg.model!r}, cache={self._cache})"

    @property
    def usage(self) -> dict:
        return self._usage.as_dict()

    def generate(self, prompts: list[list[dict]], sampling: SamplingConfig, n: int = 1) -> list[list[Generation]]:
        """Answer every prompt `n` times: `out[p][i]` is sample i of prompt p.

        Sample i is reproducible: it depends only on the prompt, `sampling` (its seed included)
        and i, not on the other prompts in the call, so it is also what the cache stores.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        for p, messages in enumerate(prompts):
            _check_messages(messages, p)
        start = time.perf_counter()
        jobs = [Job(messages, i) for messages in prompts for i in range(n)]
        results: list[Generation | None] = [None] * len(jobs)
        keys = [cache_key(self.identity, job.messages, sampling, job.index) for job in jobs]
        if self._cache is not None:
            for j, hit in self._cache.get_many(keys).items():
                results[j] = strip_thinking(Generation(**hit, cached=True))
        self._usage.add(cache_hits=sum(r is not None for r in results))
        missing = [j for j, r in enumerate(results) if r is None]
        try:
            if missing:
                self._usage.add(calls=len(missing))
                # Answers and their rate on a terminal (disable=None: off when stderr is no TTY, as in logs and tests).
                with tqdm(total=len(missing), desc=f"{self.cfg.provider} {self.cfg.model}", unit="answer",
                          leave=False, disable=None) as progress:
                    for m, generation in self._run([jobs[j] for j in missing], sampling, self._usage):
                        progress.update()
                        j = missing[m]
                        results[j] = strip_thinking(generation)
                        self._usage.add_generation(results[j])
                        if generation.error is None and self._cache is not None:
                            fields = asdict(generation)  # as the provider returned it, thinking included
                            del fields["cached"], fields["error"]
                            if not fields["thinking_tokens"]:  # rows of models that do not think keep their shape
                                del fields["thinking_tokens"]
                            self._cache.put(keys[j], fields, self.identity)
        finally:
            self._usage.add(seconds=time.perf_counter() - start)
        if any(r is None for r in results):  # a provider bug, not a failed call
            raise LLMError(f"{self.cfg.provider} provider returned no answer for some jobs")
        if sampling.stop_on_repeat:
            # API answers arrive whole (and cached ones were stored whole), so the rule that stops the
            # local provider's decoding is applied here, to every provider alike.
            results = [_cut_repeat(r) for r in results]
        return [results[p * n:(p + 1) * n] for p in range(len(prompts))]


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def thinking_identity(cfg: LLMConfig) -> dict:
    """The thinking settings of `cfg` that differ from the default, for a provider's identity: they
    change the answers, and the answers of models run with the default keep their cache keys."""
    return {name: getattr(cfg, name) for name, default in
            (("thinking", "default"), ("thinking_budget", None), ("reasoning_effort", None))
            if getattr(cfg, name) != default}


def split_thinking(text: str) -> tuple[str, str]:
    """(answer, thinking) of a text that may hold a `<think>...</think>` block.

    The answer is what follows the last `</think>` (and any text before the first `<think>`).
    A `</think>` with no `<think>` ends a block the chat template opened in the prompt
    (DeepSeek-R1, Qwen3-Thinking): everything before it is thinking. A `<think>` that never
    closes is an answer cut off while thinking: from it on, all is thinking.
    """
    if THINK_CLOSE in text:
        head, _, answer = text.rpartition(THINK_CLOSE)
        before, opened, thinking = head.partition(THINK_OPEN)
        if not opened:
            before, thinking = "", head
        return " ".join(part for part in (before.strip(), answer.strip()) if part), thinking.strip()
    before, opened, thinking = text.partition(THINK_OPEN)
    return (before.strip(), thinking.strip()) if opened else (text, "")


def strip_thinking(generation: Generation) -> Generation:
    """`generation` without its thinking block; its thinking tokens estimated from the block's share
    of the text when the provider did not count them."""
    if THINK_OPEN not in generation.text and THINK_CLOSE not in generation.text:
        return generation
    answer, thinking = split_thinking(generation.text)
    tokens = generation.thinking_tokens
    if not tokens and thinking:
        tokens = round(generation.completion_tokens * len(thinking) / max(len(thinking) + len(answer), 1))
    return replace(generation, text=answer, thinking_tokens=tokens)


def _cut_repeat(generation: Generation) -> Generation:
    """`generation` cut at its first repeated sentence (`stop_on_repeat`), which makes it a `stop`."""
    text = cut_at_repeated_sentence(generation.text)
    return generation if text == generation.text else replace(generation, text=text, finish_reason="stop")


def _check_messages(messages: list[dict], p: int) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"prompt {p}: expected a non-empty list of message dicts, got {type(messages).__name__}")
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"prompt {p}, message {m}: expected {{'role': 'system'|'user'|'assistant', "
                             f"'content': str}}, got {message!r:.200}")
