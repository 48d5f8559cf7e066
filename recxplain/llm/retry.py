"""What the API providers share: the retry policy, bounded concurrency and the API key.

Retry policy (the SDKs' own retries are switched off with `max_retries=0`, so this is the only
one, and it is the same for both SDKs):
- Retried: timeouts and connection errors, HTTP 408, 409, 429 and every 5xx (Anthropic's 529
  "overloaded" included), at most `llm.max_retries` times after the first attempt.
- Wait before retry r (1-based): the server's `retry-after-ms` or `Retry-After` (seconds or an
  HTTP date) when it sent one, else `retry_base_s * 2**(r-1)` plus up to 25% jitter; either way
  at most `retry_max_s`.
- Not retried: malformed responses (`MalformedResponse`: a server that sends broken bodies
  tends to keep doing so, and each retry costs money) and the other 4xx. HTTP 401/403/404 raise
  `ProviderError` (every prompt would fail the same way); other failures become an error
  Generation for that prompt only.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

import anthropic
import openai
import tenacity

from recxplain.config import LLMConfig
from recxplain.llm.chat import Generation, Job, MalformedResponse, ProviderError, Usage

RETRIED_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}
CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError)  # timeouts included
STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)


def read_api_key(cfg: LLMConfig) -> str | None:
    """The key from the environment variable named by `cfg.api_key_env`, read at call time."""
    if cfg.api_key_env is None:
        return None
    value = os.environ.get(cfg.api_key_env, "")
    if not value.strip():
        raise ProviderError(f"{cfg.provider} model {cfg.model!r}: environment variable {cfg.api_key_env} "
                            "(named by llm.api_key_env) is not set")
    return value.strip()


def is_transient(exc: BaseException) -> bool:
    """Whether a failed request is worth retrying (see the module docstring)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, STATUS_ERRORS):
        return exc.status_code in RETRIED_STATUS or exc.status_code >= 500
    return False


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After`), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return None if parsed is None else max(parsed.timestamp() - time.time(), 0.0)


def backoff_s(retry: int, retry_after: float | None, base_s: float, max_s: float) -> float:
    """Wait before retry number `retry` (1-based): the server's Retry-After, else exponential."""
    if retry_after is not None:
        return min(retry_after, max_s)
    return min(base_s * 2 ** (retry - 1) * (1 + 0.25 * random.random()), max_s)


def with_retries(request: Callable[[], Generation], cfg: LLMConfig, usage: Usage) -> Generation:
    """Run `request` under the retry policy; count retries in `usage`."""

    def wait(state: tenacity.RetryCallState) -> float:
        return backoff_s(state.attempt_number, retry_after_s(state.outcome.exception()),
                         cfg.retry_base_s, cfg.retry_max_s)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(cfg.max_retries + 1),
        retry=tenacity.retry_if_exception(is_transient),
        wait=wait,
        before_sleep=lambda state: usage.add(retries=1),
        reraise=True,
    )
    return retrying(request)


def answer(request: Callable[[], Generation], cfg: LLMConfig, usage: Usage, secret: str | None) -> Generation:
    """One job's Generation: the answer, or an error Generation; raise ProviderError if fatal."""
    start = time.perf_counter()
    try:
        return with_retries(request, cfg, usage)
    except (MalformedResponse, json.JSONDecodeError) as err:  # the SDKs raise JSONDecodeError on non-JSON bodies
        return Generation("", latency_s=time.perf_counter() - start, error=_scrub(f"MalformedResponse: {err}", secret))
    except STATUS_ERRORS as err:
        message = _scrub(f"{type(err).__name__} (HTTP {err.status_code}): {err}", secret)
        if err.status_code in FATAL_STATUS:
            hint = " (check llm.api_key_env, llm.base_url and llm.model)"
            raise ProviderError(f"{cfg.provider} model {cfg.model!r}: {message}{hint}") from None
        return Generation("", latency_s=time.perf_counter() - start, error=message)
    except CONNECTION_ERRORS as err:
        return Generation("", latency_s=time.perf_counter() - start,
                          error=_scrub(f"{type(err).__name__}: {err}", secret))


def run_in_threads(jobs: list[Job], work: Callable[[Job], Generation], max_concurrency: int
                   ) -> Iterator[tuple[int, Generation]]:
    """Yield `(job index, work(job))` as answers arrive, at most `max_concurrency` at a time.

    A raised error (ProviderError) cancels the jobs not yet started and propagates.
    """
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="llm")
    try:
        futures = {pool.submit(work, job): j for j, job in enumerate(jobs)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _scrub(text: str, secret: str | None) -> str:
    """Remove the API key from a message (servers sometimes echo what they were sent)."""
    return text.replace(secret, "***") if secret else text
