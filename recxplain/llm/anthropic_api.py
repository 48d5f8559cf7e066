"""`anthropic` provider: Claude models through the official `anthropic` SDK (Messages API).

OpenAI-style messages are mapped to the Messages API: system messages are joined into the
`system` parameter, the rest keep their order; `max_new_tokens` becomes `max_tokens`. The SDK
pinned here (anthropic 2.x) no longer exposes `temperature` or `top_p` (current Claude models
sample with their own settings), so those fields of SamplingConfig are not sent, and there is
no seed: sample i of a prompt is reproducible only through the response cache, whose key still
includes the whole SamplingConfig. The Messages API has no repetition_penalty or
no_repeat_ngram_size either; stop_on_repeat applies (`ChatModel` cuts the answers).

Thinking: `llm.thinking: off` sends `thinking: {"type": "disabled"}`; `on` or a `thinking_budget`
sends `{"type": "enabled", "budget_tokens": N}` (1,024 when no budget is set, Anthropic's least)
and adds N to `max_tokens`, which must cover thinking and answer. Thinking blocks are never part
of the text; `usage.output_tokens_details.thinking_tokens` becomes the answer's `thinking_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm.chat import Generation, Job, MalformedResponse, Run, Usage, thinking_identity
from recxplain.llm.retry import answer, read_api_key, run_in_threads

DEFAULT_BASE_URL = "https://api.anthropic.com"
MIN_THINKING_BUDGET = 1024  # the Messages API refuses a smaller budget_tokens


def identity(cfg: LLMConfig) -> dict:
    """What names this model's answers in the cache."""
    names = {"provider": "anthropic", "model": cfg.model, "base_url": (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")}
    return names | thinking_identity(cfg)


def thinking_budget(cfg: LLMConfig) -> int | None:
    """Thinking tokens allowed per answer (None: thinking not enabled by this config)."""
    if cfg.thinking_budget is not None:
        return cfg.thinking_budget
    return MIN_THINKING_BUDGET if cfg.thinking == "on" else None


def make_run(cfg: LLMConfig) -> Run:
    def run(jobs: list[Job], sampling: SamplingConfig, usage: Usage) -> Iterator[tuple[int, Generation]]:
        key = read_api_key(cfg)
        client = anthropic.Anthropic(api_key=key or "unused", base_url=cfg.base_url, timeout=cfg.timeout_s,
                                     max_retries=0)

        budget = thinking_budget(cfg)
        extra: dict = {}
        if budget is not None:
            extra["thinking"] = {"type": "enabled", "budget_tokens": budget}
        elif cfg.thinking == "off":
            extra["thinking"] = {"type": "disabled"}

        def request(job: Job) -> Generation:
            system = "\n\n".join(m["content"] for m in job.messages if m["role"] == "system")
            turns = [{"role": m["role"], "content": m["content"]} for m in job.messages if m["role"] != "system"]
            start = time.perf_counter()
            message = client.messages.create(
                model=cfg.model, messages=turns, max_tokens=sampling.max_new_tokens + (budget or 0),
                **({"system": system} if system else {}), **extra,
            )
            return parse_message(message, time.perf_counter() - start)

        try:
            yield from run_in_threads(jobs, lambda job: answer(lambda: request(job), cfg, usage, key),
                                      cfg.max_concurrency)
        finally:
            client.close()

    return run


def parse_message(message: object, latency_s: float) -> Generation:
    """A Generation from a Messages API response; MalformedResponse if it is not one."""
    blocks = getattr(message, "content", None)
    if not isinstance(blocks, list):
        raise MalformedResponse(f"no content blocks in the response: {repr(message)[:200]}")
    texts = [getattr(block, "text", None) for block in blocks if getattr(block, "type", None) == "text"]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise MalformedResponse(f"no text block in the response content: {repr(blocks)[:200]}")
    usage = getattr(message, "usage", None)
    prompt_tokens = getattr(usage, "input_tokens", None)
    completion_tokens = getattr(usage, "output_tokens", None)
    if usage is not None and not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
        raise MalformedResponse(f"usage without integer token counts: {repr(usage)[:200]}")
    finish = getattr(message, "stop_reason", None)
    thinking = getattr(getattr(usage, "output_tokens_details", None), "thinking_tokens", None)
    return Generation("".join(texts).strip(), prompt_tokens=prompt_tokens or 0,
                      completion_tokens=completion_tokens or 0, latency_s=latency_s,
                      finish_reason="length" if finish == "max_tokens" else "stop",
                      thinking_tokens=thinking if isinstance(thinking, int) else 0)
