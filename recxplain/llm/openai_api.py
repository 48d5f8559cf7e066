"""`openai` provider: any OpenAI-compatible chat completions endpoint, through the official SDK.

`llm.base_url` picks the server: None for OpenAI itself, or e.g.
`https://generativelanguage.googleapis.com/v1beta/openai/` (Gemini), `http://localhost:8000/v1`
(vLLM), `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1` (llama.cpp server).
Each answer is one request with `n=1`, `seed = sampling.seed + sample index` (OpenAI and vLLM
honour it; others ignore it), `temperature`, `top_p` and `max_tokens`. A `repetition_penalty`
other than 1.0 goes in the body too when `base_url` names a server that takes it (vLLM,
llama.cpp, Ollama: `accepts_repetition_penalty`); OpenAI and Gemini answer HTTP 400 to unknown
parameters. `no_repeat_ngram_size` is never sent (the local provider's alone).
"""

from __future__ import annotations

import time
from typing import Iterator
from urllib.parse import urlsplit

import openai

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm.chat import Generation, Job, MalformedResponse, Run, Usage
from recxplain.llm.retry import answer, read_api_key, run_in_threads

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Hosted OpenAI-compatible APIs that reject parameters outside OpenAI's own (HTTP 400).
STRICT_HOSTS = ("api.openai.com", "generativelanguage.googleapis.com")


def identity(cfg: LLMConfig) -> dict:
    """What names this model's answers in the cache (the endpoint matters: same name, other server)."""
    return {"provider": "openai", "model": cfg.model, "base_url": (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")}


def accepts_repetition_penalty(base_url: str | None) -> bool:
    """Whether `repetition_penalty` may be sent: a configured server (vLLM, llama.cpp, Ollama) that
    is not one of the STRICT_HOSTS; None is api.openai.com."""
    return base_url is not None and urlsplit(base_url).hostname not in STRICT_HOSTS


def make_run(cfg: LLMConfig) -> Run:
    def run(jobs: list[Job], sampling: SamplingConfig, usage: Usage) -> Iterator[tuple[int, Generation]]:
        key = read_api_key(cfg)
        # Keyless local servers (vLLM, Ollama, llama.cpp) still need a non-empty key for the SDK.
        client = openai.OpenAI(api_key=key or "unused", base_url=cfg.base_url, timeout=cfg.timeout_s,
                               max_retries=0)

        extra = {}
        if sampling.repetition_penalty != 1.0 and accepts_repetition_penalty(cfg.base_url):
            extra["extra_body"] = {"repetition_penalty": sampling.repetition_penalty}

        def request(job: Job) -> Generation:
            start = time.perf_counter()
            completion = client.chat.completions.create(
                model=cfg.model, messages=job.messages, n=1, temperature=sampling.temperature,
                top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, seed=sampling.seed + job.index, **extra,
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
    return Generation(text.strip(), prompt_tokens=prompt_tokens or 0, completion_tokens=completion_tokens or 0,
                      latency_s=latency_s, finish_reason="length" if finish == "length" else "stop")


def _preview(value: object) -> str:
    return repr(value)[:200]
