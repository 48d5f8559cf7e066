"""Thinking models: the per-model switch reaches each provider, `<think>` blocks are removed before
anything parses an answer, and thinking tokens are counted apart.

The local provider is tested with a tiny random Llama whose tokenizer (SmolLM2's) carries a
Qwen3-style chat template written here; the API providers with their official SDKs against the
loopback server of tests/test_llm_api.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm import Generation, ProviderError, load_chat_model
from recxplain.llm.chat import split_thinking, strip_thinking
from recxplain.llm.local import count_thinking, prompt_token_ids, template_options
from recxplain.llm.openai_api import thinking_options
from tests.test_llm_api import Loopback
from tests.test_llm_local import ARTIFACTS, random_llama

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=4)
ASK = [[{"role": "user", "content": "Why would I like Fargo?"}]]

# What Qwen3's template does with `enable_thinking`, in a few lines: with thinking off, the
# assistant turn opens with an empty thinking block, so the model answers straight away.
QWEN3_STYLE_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def qwen3_style(tmp_path_factory) -> Path:
    folder = random_llama(tmp_path_factory.mktemp("qwen3-style"), initializer_range=0.5)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(qwen3_style):
    return AutoTokenizer.from_pretrained(qwen3_style)


def local_cfg(folder: Path, **changes) -> LLMConfig:
    return LLMConfig(**({"model": str(folder), "dtype": "float32", "device": "cpu"} | changes))


def test_qwen3_style_template_receives_enable_thinking_false(qwen3_style, tokenizer):
    assert template_options(local_cfg(qwen3_style)) == {}  # default: the template's own default
    assert template_options(local_cfg(qwen3_style, thinking="off")) == {"enable_thinking": False}
    assert template_options(local_cfg(qwen3_style, thinking="on")) == {"enable_thinking": True}
    off = tokenizer.decode(
        prompt_token_ids(tokenizer, ASK[0], **template_options(local_cfg(qwen3_style, thinking="off")))
    )
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    default = tokenizer.decode(prompt_token_ids(tokenizer, ASK[0]))
    assert default.endswith("<|im_start|>assistant\n")
    # Through the chat model: the prompt the model read is the one with the empty thinking block.
    [[plain]] = load_chat_model(local_cfg(qwen3_style), ARTIFACTS).generate(ASK, GREEDY)
    [[unthinking]] = load_chat_model(local_cfg(qwen3_style, thinking="off"), ARTIFACTS).generate(ASK, GREEDY)
    block = len(tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    assert unthinking.prompt_tokens == plain.prompt_tokens + block


def test_thinking_setting_names_its_answers_in_the_cache(qwen3_style, tmp_path):
    cache = tmp_path / "cache.sqlite"
    load_chat_model(local_cfg(qwen3_style), ARTIFACTS, cache_path=cache).generate(ASK, GREEDY)
    off = load_chat_model(local_cfg(qwen3_style, thinking="off"), ARTIFACTS, cache_path=cache)
    [[answer]] = off.generate(ASK, GREEDY)
    assert not answer.cached and off.usage["calls"] == 1  # another setting, another answer
    assert "thinking" not in load_chat_model(local_cfg(qwen3_style), ARTIFACTS).identity


def test_local_thinking_tokens_are_counted(tokenizer):
    thought = "The user liked Heat, so a crime film fits."
    generation = Generation(f"<think>{thought}</think>You rated Heat 5/5.", completion_tokens=30)
    counted = count_thinking(tokenizer, generation)
    assert counted.thinking_tokens == len(tokenizer(thought, add_special_tokens=False)["input_ids"])
    assert counted.text == generation.text  # removed by ChatModel, for every provider alike
    assert count_thinking(tokenizer, Generation("No thoughts.")) == Generation("No thoughts.")


@pytest.mark.parametrize("text, answer, thinking", [
    ("<think>Fargo is a crime film.</think>\n\nYou rated Heat 5/5.", "You rated Heat 5/5.", "Fargo is a crime film."),
    ("Fargo is a crime film.\n</think>\n\nYou rated Heat 5/5.", "You rated Heat 5/5.", "Fargo is a crime film."),
    ("<think>Fargo is a crime film, and", "", "Fargo is a crime film, and"),  # cut off while thinking
    ("<think>\n\n</think>\n\nYou rated Heat 5/5.", "You rated Heat 5/5.", ""),
    ("You rated Heat 5/5.", "You rated Heat 5/5.", ""),
])
def test_split_thinking(text, answer, thinking):
    assert split_thinking(text) == (answer, thinking)


def test_strip_thinking_estimates_uncounted_tokens():
    stripped = strip_thinking(Generation("<think>abcdefghij</think>0123456789", completion_tokens=20))
    assert (stripped.text, stripped.thinking_tokens) == ("0123456789", 10)
    counted = strip_thinking(Generation("<think>abc</think>answer", completion_tokens=20, thinking_tokens=7))
    assert (counted.text, counted.thinking_tokens) == ("answer", 7)


@pytest.fixture
def openai_server(monkeypatch):
    monkeypatch.setenv("RECXPLAIN_TEST_KEY", "sk-test")
    loopback = Loopback("openai")
    yield loopback
    loopback.close()


def api_cfg(server: Loopback, **changes) -> LLMConfig:
    fields = dict(provider=server.kind, model="thinker", base_url=server.url, api_key_env="RECXPLAIN_TEST_KEY",
                  max_retries=0, timeout_s=5.0)
    return LLMConfig(**(fields | changes))


def test_openai_answer_loses_its_think_block_and_counts_reasoning_tokens(openai_server, tmp_path):
    body = openai_server.reply("<think>They rated Heat 5/5.</think>You rated Heat 5/5, so try Fargo.")
    body["usage"]["completion_tokens_details"] = {"reasoning_tokens": 6}
    openai_server.script = [{"body": body}]
    cache = tmp_path / "cache.sqlite"
    model = load_chat_model(api_cfg(openai_server), tmp_path, cache_path=cache)
    [[answer]] = model.generate(ASK, GREEDY)
    assert (answer.text, answer.thinking_tokens) == ("You rated Heat 5/5, so try Fargo.", 6)
    assert model.usage["thinking_tokens"] == 6 and model.usage["completion_tokens"] == len(
        "<think>They rated Heat 5/5.</think>You rated Heat 5/5, so try Fargo.".split())
    # The cache keeps the answer as it came; a cached read is stripped the same way.
    [[again]] = load_chat_model(api_cfg(openai_server), tmp_path, cache_path=cache).generate(ASK, GREEDY)
    assert again.cached and (again.text, again.thinking_tokens) == (answer.text, 6)
    assert "thinking_tokens" not in load_chat_model(api_cfg(openai_server), tmp_path).usage  # nothing thought yet


def test_openai_thinking_settings_on_the_wire(openai_server, tmp_path):
    load_chat_model(api_cfg(openai_server, thinking="off"), tmp_path).generate(ASK, GREEDY)
    load_chat_model(api_cfg(openai_server, reasoning_effort="low"), tmp_path).generate(ASK, GREEDY)
    load_chat_model(api_cfg(openai_server), tmp_path).generate(ASK, GREEDY)
    off, effort, plain = (r["body"] for r in openai_server.requests)
    # vLLM, SGLang, llama.cpp
    assert off["chat_template_kwargs"] == {"enable_thinking": False} and off["max_tokens"] == 4
    assert effort["reasoning_effort"] == "low" and effort["max_completion_tokens"] == 4 and "max_tokens" not in effort
    assert not {"chat_template_kwargs", "reasoning_effort", "max_completion_tokens"} & set(plain)


def test_gemini_and_openai_thinking_options():
    gemini = "https://generativelanguage.googleapis.com/v1beta/openai/"
    off = LLMConfig(provider="openai", model="gemini-2.5-flash", base_url=gemini, thinking="off")
    assert thinking_options(off) == ({}, {"extra_body": {"google": {"thinking_config": {"thinking_budget": 0}}}})
    bounded = off.model_copy(update={"thinking": "on", "thinking_budget": 256})
    assert thinking_options(bounded)[1]["extra_body"]["google"]["thinking_config"] == {"thinking_budget": 256}
    assert thinking_options(off.model_copy(update={"thinking": "default"})) == ({}, {})
    with pytest.raises(ProviderError, match="reasoning_effort"):
        thinking_options(LLMConfig(provider="openai", model="o4-mini", thinking="off"))
    assert thinking_options(LLMConfig(provider="openai", model="o4-mini", reasoning_effort="minimal")) == (
        {"reasoning_effort": "minimal"}, {})


def test_thinking_config_errors():
    with pytest.raises(ValueError, match="thinking_budget applies"):
        LLMConfig(provider="local", thinking_budget=100)
    with pytest.raises(ValueError, match="at least 1024"):
        LLMConfig(provider="anthropic", model="claude", thinking_budget=100)
    with pytest.raises(ValueError, match="reasoning_effort applies"):
        LLMConfig(provider="anthropic", model="claude", reasoning_effort="low")


def test_anthropic_thinking_budget_and_thinking_tokens(monkeypatch, tmp_path):
    monkeypatch.setenv("RECXPLAIN_TEST_KEY", "sk-test")
    server = Loopback("anthropic")
    try:
        body = server.reply("You rated Heat 5/5, so try Fargo.")
        body["content"].insert(0, {"type": "thinking", "thinking": "Heat is a crime film.", "signature": "s"})
        body["usage"]["output_tokens_details"] = {"thinking_tokens": 9}
        server.script = [{"body": body}]
        model = load_chat_model(api_cfg(server, thinking_budget=2048), tmp_path)
        [[answer]] = model.generate(ASK, GREEDY)
        load_chat_model(api_cfg(server, thinking="off"), tmp_path).generate(ASK, GREEDY)
    finally:
        server.close()
    bounded, off = (r["body"] for r in server.requests)
    assert bounded["thinking"] == {"type": "enabled", "budget_tokens": 2048} and bounded["max_tokens"] == 2048 + 4
    assert off["thinking"] == {"type": "disabled"} and off["max_tokens"] == 4
    assert (answer.text, answer.thinking_tokens) == ("You rated Heat 5/5, so try Fargo.", 9)
    assert model.usage["thinking_tokens"] == 9
