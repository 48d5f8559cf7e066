"""`openai` provider: any OpenAI-compatible chat completions endpoint, through the official SDK.

`llm.base_url` picks the server: None for OpenAI itself, or e.g.
`https://generativelanguage.googleapis.com/v1beta/openai/` (Gemini), `http://localhost:8000/v1`
(vLLM), `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1` (llama.cpp server).
Each answer is one request with `n=1`, `seed = sampling.seed + sample index` (OpenAI and vLLM
honour it; others ignore it), `temperature`, `top_p` and `max_tokens`. A `repetition_penalty`
other than 1.0 goes in the body too when `base_url` names a server that takes it (vLLM,
llama.cpp, Ollama: `accepts_repetition_penalty`); OpenAI and Gemini answer HTTP 400 to unknown
parameters. `no_repeat_ngram_size` is never sent (the local provider's alone).

Thinking (`llm.thinking`, `llm.thinking_budget`, `llm.reasoning_effort`; `thinking_options`):
Gemini's OpenAI-compatible endpoint takes its thinking budget in Google's own extra body
(`{"extra_body": {"google": {"thinking_config": {"thinking_budget": N}}}}`, 0 is off); other
configured servers (vLLM, SGLang, llama.cpp serving Qwen3) take `chat_template_kwargs:
{"enable_thinking": ...}`; OpenAI itself only `reasoning_effort`. A budget is added to
`max_tokens` (Gemini counts thinking in it). Reasoning tokens reported in
`usage.completion_tokens_details.reasoning_tokens` become the answer's `thinking_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import openai

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm.chat import Generation, Job, MalformedResponse, ProviderError, Run, Usage, thinking_identity
from recxplain.llm.retry import answer, read_api_key, run_in_threads

DEFAULT_BASE_URL = "https://api.openai.com/v1"
OPENAI_HOST, GEMINI_HOST = "api.openai.com", "generativelanguage.googleapis.com"
# Hosted OpenAI-compatible APIs that reject parameters outside OpenAI's own (HTTP 400).
STRICT_HOSTS = (OPENAI_HOST, GEMINI_HOST)


def identity(cfg: LLMConfig) -> dict:
    """What names this model's answers in the cache (the endpoint matters: same name, other server)."""
    names = {"provider": "openai", "model": cfg.model, "base_url": (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")}
    return names | thinking_identity(cfg)


def accepts_repetition_penalty(base_url: str | None) -> bool:
    """Whether `repetition_penalty` may be sent: a configured server (vLLM, llama.cpp, Ollama) that
    is not one of the STRICT_HOSTS; None is api.openai.com."""
    return base_url is not None and urlsplit(base_url).hostname not in STRICT_HOSTS


def thinking_options(cfg: LLMConfig) -> tuple[dict, dict]:
    """(request parameters, extra body) that carry `cfg`'s thinking settings to its server."""
    host = urlsplit(cfg.base_url).hostname if cfg.base_url else OPENAI_HOST
    params: dict = {}
    body: dict = {}
    if cfg.reasoning_effort is not None:
        params["reasoning_effort"] = cfg.reasoning_effort
    if host == GEMINI_HOST:
        budget = 0 if cfg.thinking == "off" else cfg.thinking_budget
        if budget is not None:
            body["extra_body"] = {"google": {"thinking_config": {"thinking_budget": budget}}}
    elif cfg.thinking_budget is not None:
        raise ProviderError(f"llm.thinking_budget: {host} takes no thinking budget (Gemini's endpoint and "
                            "the anthropic provider do); use llm.thinking or llm.reasoning_effort")
    elif cfg.thinking != "default":
        if host == OPENAI_HOST:
            raise ProviderError("llm.thinking: OpenAI's API has no thinking switch; use llm.reasoning_effort")
        body["chat_template_kwargs"] = {"enable_thinking": cfg.thinking == "on"}
    return params, body


def make_run(cfg: LLMConfig) -> Run:
    def run(jobs: list[Job], sampling: SamplingConfig, usage: Usage) -> Iterator[tuple[int, Generation]]:
        key = read_api_key(cfg)
        # Keyless local servers (vLLM, Ollama, llama.cpp) still need a non-empty key for the SDK.
        client = openai.OpenAI(api_key=key or "unused", base_url=cfg.base_url, timeout=cfg.timeout_s,
                               max_retries=0)

        extra, body = thinking_options(cfg)
        if sampling.repetition_penalty != 1.0 and accepts_repetition_penalty(cfg.base_url):
            body["repetition_penalty"] = sampling.repetition_penalty
        if body:
            extra["extra_body"] = body
        # Reasoning models take max_completion_tokens (reasoning included) and refuse max_tokens.
        length = "max_completion_tokens" if cfg.reasoning_effort is not None else "max_tokens"
        extra[length] = sampling.max_new_tokens + (cfg.thinking_budget or 0)

        def request(job: Job) -> Generation:
            start = time.perf_counter()
            completion = client.chat.completions.create(
                model=cfg.model, messages=job.messages, n=1, temperature=sampling.temperature,
                top_p=sampling.top_p, seed=sampling.seed + job.index, **extra,
            )
            return parse_completion(completion, time.perf_counter() - start)

        try:
            yield from run_in_threads(jobs, lambda job: answer(lambda: request(job), cfg, usage, key),
                                      cfg.max_concurrency)
        finally:
            client.close()

    return run


def parse_completion(completion: object, latency_s: float) -> Generation:
    """A Generation from a ChatCompletion; MalformedResponse if it is not one."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse(f"no choices in the response: {_preview(completion)}")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise MalformedResponse(f"choice 0 has no text content: {_preview(choices[0])}")
    usage = getattr(completion, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if usage is not None and not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
        raise MalformedResponse(f"usage without integer token counts: {_preview(usage)}")
    finish = getattr(choices[0], "finish_reason", None)
    reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
    return Generation(text.strip(), prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0,
                      latency_s=latency_s, finish_reason="length" if finish == "length" else "stop",
                      thinking_tokens=reasoning if isinstance(reasoning, int) else 0)


def _preview(value: object) -> str:
    return repr(value)[:200]
