"""The `openai` and `anthropic` providers: the real SDKs against a loopback HTTP server.

`Loopback` is a small HTTP server on 127.0.0.1 that speaks each provider's wire format (chat
completions, Messages API). By default it answers every request with a text derived from the
request, so the tests can check that answers come back to the right prompt; a test can queue
scripted replies (429 with Retry-After, 500, 529, a slow reply that times out, malformed bodies)
that the next requests receive in order. It records every request it saw. Nothing leaves the
machine.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm import Generation, ProviderError, load_chat_model
from recxplain.llm.openai_api import accepts_repetition_penalty
from recxplain.llm.retry import backoff_s, retry_after_s

KEY = "sk-test-SECRET-0123456789"
SAMPLING = SamplingConfig(temperature=0.5, top_p=0.8, max_new_tokens=32, seed=10)


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


class Loopback:
    """A scripted chat server; `kind` is `openai` or `anthropic`."""

    def __init__(self, kind: str):
        self.kind = kind
        self.requests: list[dict] = []  # {"path", "headers", "body"} per request received
        self.script: list[dict] = []  # replies for the next requests: status, body, headers, delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0  # added to every reply (concurrency test)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    reply = server.script.pop(0) if server.script else {}
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(reply.get("delay", 0.0) + server.delay)
                    status = reply.get("status", 200)
                    payload = reply.get("body", server.default_reply(body) if status == 200 else {"error": "x"})
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in reply.get("headers", {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # clients that timed out hang up
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.httpd.server_address
        self.url = f"http://{host}:{port}" + ("/v1" if kind == "openai" else "")

    def default_reply(self, request: dict) -> dict:
        """Echo the last user message and the sampling parameters; usage 10 + 3 words."""
        text = f"re: {request['messages'][-1]['content']}"
        if self.kind == "openai":
            text += f" t={request['temperature']} seed={request['seed']}"
        return self.reply(text, request["model"])

    def reply(self, text: str, model: str = "test-model", length: bool = False) -> dict:
        """A response body answering `text` (usage: 10 prompt tokens, a token a word); `length`: the
        answer hit max_tokens."""
        if self.kind == "openai":
            return {"id": "c1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "finish_reason": "length" if length else "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 0}}
        return {"id": "m1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens" if length else "end_turn",
                "usage": {"input_tokens": 10, "output_tokens": len(text.split())}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(params=["openai", "anthropic"])
def server(request):
    loopback = Loopback(request.param)
    yield loopback
    loopback.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("RECXPLAIN_TEST_KEY", KEY)


def config(server: Loopback, **changes) -> LLMConfig:
    fields = dict(provider=server.kind, model="test-model", base_url=server.url, api_key_env="RECXPLAIN_TEST_KEY",
                  max_retries=2, retry_base_s=0.01, timeout_s=5.0, price_per_million_input=2.0,
                  price_per_million_output=8.0)
    return LLMConfig(**(fields | changes))


def expected_text(server: Loopback, prompt: str, sample: int) -> str:
    return f"re: {prompt}" + (
        f" t={SAMPLING.temperature} seed={SAMPLING.seed + sample}" if server.kind == "openai" else ""
    )


def test_success_maps_answers_to_prompts_and_counts_usage(server, tmp_path):
    model = load_chat_model(config(server), tmp_path)
    outs = model.generate([ask("one"), ask("two words")], SAMPLING, n=2)
    assert [[g.text for g in samples] for samples in outs] == [
        [expected_text(server, "one", 0), expected_text(server, "one", 1)],
        [expected_text(server, "two words", 0), expected_text(server, "two words", 1)],
    ]
    g = outs[1][0]
    words = len(expected_text(server, "two words", 0).split())
    assert (g.prompt_tokens, g.completion_tokens, g.cached, g.error, g.finish_reason) == (
        10, words, False, None, "stop",
    )
    completion_tokens = sum(len(expected_text(server, p, i).split()) for p in ("one", "two words") for i in (0, 1))
    usage = model.usage
    assert {k: usage[k] for k in ("calls", "cache_hits", "errors", "retries", "prompt_tokens", "completion_tokens")} \
        == {"calls": 4, "cache_hits": 0, "errors": 0, "retries": 0, "prompt_tokens": 40,
            "completion_tokens": completion_tokens}
    assert usage["cost_usd"] == pytest.approx((40 * 2.0 + completion_tokens * 8.0) / 1e6)
    # What went over the wire, in each provider's format.
    assert len(server.requests) == 4
    first = next(r for r in server.requests if r["body"]["messages"][-1]["content"] == "one")
    body, headers = first["body"], {k.lower(): v for k, v in first["headers"].items()}
    assert body["model"] == "test-model" and body["max_tokens"] == 32
    if server.kind == "openai":
        assert first["path"] == "/v1/chat/completions"
        assert headers["authorization"] == f"Bearer {KEY}"
        assert (body["temperature"], body["top_p"], body["n"]) == (0.5, 0.8, 1) and body["messages"] == ask("one")
    else:
        assert first["path"] == "/v1/messages"
        assert headers["authorization"] == f"Bearer {KEY}"  # anthropic 2.x sends the key as a bearer token
        assert body["system"] == "Be brief." and body["messages"] == [{"role": "user", "content": "one"}]
        assert "temperature" not in body and "top_p" not in body  # not in the anthropic 2.x SDK


def test_429_waits_for_retry_after_then_succeeds(server, tmp_path):
    server.script = [{"status": 429, "headers": {"Retry-After": "1"}}]
    model = load_chat_model(config(server), tmp_path)
    start = time.perf_counter()
    [[g]] = model.generate([ask("hello")], SAMPLING)
    assert time.perf_counter() - start >= 1.0  # honoured the header, not the 0.01 s backoff
    assert g.text == expected_text(server, "hello", 0)
    assert len(server.requests) == 2 and model.usage["retries"] == 1 and model.usage["errors"] == 0


def test_500_and_529_are_retried_with_backoff(server, tmp_path):
    server.script = [{"status": 500}, {"status": 529 if server.kind == "anthropic" else 503}]
    model = load_chat_model(config(server), tmp_path)
    [[g]] = model.generate([ask("hello")], SAMPLING)
    assert g.valid and g.text == expected_text(server, "hello", 0)
    assert len(server.requests) == 3 and model.usage["retries"] == 2


def test_timeout_is_retried(server, tmp_path):
    server.script = [{"delay": 1.5}]
    model = load_chat_model(config(server, timeout_s=0.3), tmp_path)
    [[g]] = model.generate([ask("slow")], SAMPLING)
    assert g.valid and g.text == expected_text(server, "slow", 0)
    assert len(server.requests) == 2 and model.usage["retries"] == 1


def test_retries_exhausted_becomes_an_error_generation(server, tmp_path):
    server.script = [{"status": 500}] * 3  # first attempt + max_retries=2
    model = load_chat_model(config(server), tmp_path, cache_path=tmp_path / "cache.sqlite")
    [[g]] = model.generate([ask("doomed")], SAMPLING)
    assert not g.valid and g.text == "" and "HTTP 500" in g.error
    assert len(server.requests) == 3 and model.usage["errors"] == 1 and model.usage["retries"] == 2
    # Errors are not cached: the next run asks again (and now succeeds).
    [[again]] = load_chat_model(config(server), tmp_path, cache_path=tmp_path / "cache.sqlite").generate(
        [ask("doomed")], SAMPLING)
    assert again.valid and len(server.requests) == 4


@pytest.mark.parametrize("body", [b"this is not json", b'{"id": "x"}', b"[1, 2]"])
def test_malformed_body_fails_only_its_prompt(server, tmp_path, body):
    server.script = [{"body": body}]
    model = load_chat_model(config(server, max_concurrency=1), tmp_path)
    outs = model.generate([ask("bad"), ask("good")], SAMPLING)
    bad, good = outs[0][0], outs[1][0]
    assert not bad.valid and bad.error.startswith("MalformedResponse")
    assert good.valid and good.text == expected_text(server, "good", 0)
    assert len(server.requests) == 2  # malformed bodies are not retried
    assert model.usage["errors"] == 1 and model.usage["calls"] == 2


def test_cache_second_run_makes_zero_calls(server, tmp_path):
    cache = tmp_path / "llm.sqlite"
    prompts = [ask("a"), ask("b"), ask("c")]
    first = load_chat_model(config(server), tmp_path, cache_path=cache).generate(prompts, SAMPLING, n=2)
    assert len(server.requests) == 6
    model = load_chat_model(config(server), tmp_path, cache_path=cache)
    second = model.generate(prompts, SAMPLING, n=2)
    assert len(server.requests) == 6  # nothing new reached the server
    assert [[g.text for g in s] for s in second] == [[g.text for g in s] for s in first]
    assert all(g.cached for s in second for g in s)
    assert model.usage["calls"] == 0 and model.usage["cache_hits"] == 6 and model.usage["cost_usd"] == 0
    # A third sample, another model name or other sampling parameters are new answers.
    model.generate(prompts[:1], SAMPLING, n=3)
    assert len(server.requests) == 7
    load_chat_model(config(server, model="other"), tmp_path, cache_path=cache).generate(prompts[:1], SAMPLING)
    load_chat_model(config(server), tmp_path, cache_path=cache).generate(
        prompts[:1], SAMPLING.model_copy(update={"temperature": 0.9}))
    assert len(server.requests) == 9


def test_stop_on_repeat_cuts_a_looping_answer(server, tmp_path):
    """An API answer arrives whole: `stop_on_repeat` cuts it where the local provider stops, fresh or cached."""
    sentence = 'The user recommends the movie "Air Force One" (Action, Thriller) to a user.'
    loop = f"{sentence} {sentence} {sentence} The user"
    server.script = [{"body": server.reply(loop, length=True)}] * 2
    cache = tmp_path / "cache.sqlite"
    stop = SAMPLING.model_copy(update={"stop_on_repeat": True})
    [[g]] = load_chat_model(config(server), tmp_path, cache_path=cache).generate([ask("why?")], stop)
    assert (g.text, g.finish_reason, g.completion_tokens) == (sentence, "stop", len(loop.split()))
    [[again]] = load_chat_model(config(server), tmp_path, cache_path=cache).generate([ask("why?")], stop)
    assert again.cached and (again.text, again.finish_reason) == (sentence, "stop")
    # Without it, the same answer comes back whole (another cache key: a second request).
    [[whole]] = load_chat_model(config(server), tmp_path, cache_path=cache).generate([ask("why?")], SAMPLING)
    assert (whole.text, whole.finish_reason, whole.cached) == (loop, "length", False)
    assert len(server.requests) == 2


def test_repetition_penalty_is_sent_to_compatible_servers_only(server, tmp_path, monkeypatch):
    controls = SAMPLING.model_copy(update={"repetition_penalty": 1.2, "no_repeat_ngram_size": 3})
    load_chat_model(config(server), tmp_path).generate([ask("x")], controls)
    load_chat_model(config(server), tmp_path).generate([ask("x")], SAMPLING)
    with_penalty, without = (r["body"] for r in server.requests)
    assert "no_repeat_ngram_size" not in with_penalty and "repetition_penalty" not in without
    if server.kind == "openai":
        assert with_penalty["repetition_penalty"] == 1.2  # a base_url: vLLM, llama.cpp, Ollama
        # No base_url means api.openai.com, which rejects unknown parameters (the SDK's own
        # OPENAI_BASE_URL still brings this request here).
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        load_chat_model(config(server, base_url=None), tmp_path).generate([ask("x")], controls)
        assert len(server.requests) == 3 and "repetition_penalty" not in server.requests[-1]["body"]
    else:
        assert "repetition_penalty" not in with_penalty  # no such parameter in the Messages API
    assert accepts_repetition_penalty("http://localhost:8000/v1")
    assert not accepts_repetition_penalty("https://generativelanguage.googleapis.com/v1beta/openai/")
    assert not accepts_repetition_penalty("https://api.openai.com/v1") and not accepts_repetition_penalty(None)


def test_bounded_concurrency(server, tmp_path):
    server.delay = 0.15
    model = load_chat_model(config(server, max_concurrency=3), tmp_path)
    outs = model.generate([ask(str(i)) for i in range(9)], SAMPLING)
    assert [s[0].text for s in outs] == [expected_text(server, str(i), 0) for i in range(9)]
    assert server.max_in_flight == 3


def test_api_key_read_at_call_time_and_never_stored(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache.sqlite"
    model = load_chat_model(config(server), tmp_path, cache_path=cache)
    monkeypatch.setenv("RECXPLAIN_TEST_KEY", "sk-rotated")
    model.generate([ask("x")], SAMPLING)
    headers = {k.lower(): v for k, v in server.requests[-1]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-rotated"
    assert b"sk-rotated" not in cache.read_bytes() and KEY not in repr(model)
    rows = sqlite3.connect(cache).execute("SELECT * FROM responses").fetchall()
    assert rows and "sk-rotated" not in repr(rows)
    # A 401 whose body echoes the key fails the whole call, with the key scrubbed.
    server.script = [{"status": 401, "body": {"error": {"message": "bad key sk-rotated"}}}]
    with pytest.raises(ProviderError) as err:
        model.generate([ask("y")], SAMPLING)
    assert "sk-rotated" not in str(err.value) and "401" in str(err.value)
    monkeypatch.delenv("RECXPLAIN_TEST_KEY")
    with pytest.raises(ProviderError, match="RECXPLAIN_TEST_KEY"):
        model.generate([ask("z")], SAMPLING)


def test_bad_request_is_a_per_prompt_error(server, tmp_path):
    server.script = [{"status": 400, "body": {"error": {"message": "prompt too long"}}}]
    model = load_chat_model(config(server, max_concurrency=1), tmp_path)
    outs = model.generate([ask("long"), ask("short")], SAMPLING)
    assert "HTTP 400" in outs[0][0].error and outs[1][0].valid and len(server.requests) == 2


def test_backoff_policy():
    assert backoff_s(1, 7.0, base_s=1.0, max_s=60) == 7.0  # Retry-After wins
    assert backoff_s(1, 120.0, base_s=1.0, max_s=60) == 60  # ... up to the cap
    for retry, low in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        assert low <= backoff_s(retry, None, base_s=1.0, max_s=60) <= low * 1.25
    assert backoff_s(10, None, base_s=1.0, max_s=60) == 60

    class Response:
        def __init__(self, headers):
            self.headers = headers

    class Failure(Exception):
        def __init__(self, headers):
            self.response = Response(headers)

    assert retry_after_s(Failure({"retry-after": "3"})) == 3.0
    assert retry_after_s(Failure({"retry-after-ms": "250", "retry-after": "3"})) == 0.25
    assert retry_after_s(Failure({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # in the past
    assert retry_after_s(Failure({})) is None and retry_after_s(ValueError()) is None


def test_generation_is_the_documented_record():
    g = Generation("hi", prompt_tokens=3, completion_tokens=1)
    assert g.valid and not g.cached and Generation("", error="MalformedResponse: x").valid is False
