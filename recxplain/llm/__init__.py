"""One chat interface over three providers: a local Hugging Face model, OpenAI-compatible APIs
and Anthropic.

    from recxplain.llm import load_chat_model
    model = load_chat_model(cfg.teacher.llm, artifacts_dir, cache_path=out / "llm_cache.sqlite")
    outs = model.generate(prompts, sampling, n=2)   # outs[p][i]: sample i of prompt p
    valid = sum(g.valid for samples in outs for g in samples)
    stats["usage"] = model.usage                  # calls, cache_hits, errors, tokens, cost_usd, ...

Prompts are OpenAI-style message lists ({"role": "system"|"user"|"assistant", "content": str}).
A failed prompt comes back as a Generation with `error` set (see chat.py for the policy); only
failures that would hit every prompt (missing key, 401/403/404) raise `ProviderError`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recxplain.config import LLMConfig
from recxplain.llm.cache import ResponseCache
from recxplain.llm.chat import ChatModel, Generation, LLMError, MalformedResponse, ProviderError

__all__ = ["ChatModel", "Generation", "LLMError", "MalformedResponse", "ProviderError", "load_chat_model",
           "release_models"]


def load_chat_model(cfg: LLMConfig, artifacts_dir: Path, cache_path: Path | None = None) -> ChatModel:
    """The model `cfg` describes, answering through the response cache at `cache_path` (None: no cache).

    Nothing is loaded or called yet: a local model loads at the first `generate` that misses
    the cache, and API keys are read from the environment at each `generate`.
    """
    if cfg.provider == "local":
        from recxplain.llm import local as provider

        identity, run = provider.identity(cfg), provider.make_run(cfg, Path(artifacts_dir))
    elif cfg.provider == "openai":
        from recxplain.llm import openai_api as provider

        identity, run = provider.identity(cfg), provider.make_run(cfg)
    elif cfg.provider == "anthropic":
        from recxplain.llm import anthropic_api as provider

        identity, run = provider.identity(cfg), provider.make_run(cfg)
    else:  # unreachable through a validated LLMConfig
        raise ValueError(f"unknown llm.provider {cfg.provider!r}")
    return ChatModel(cfg, identity, run, ResponseCache(cache_path) if cache_path is not None else None)


def release_models() -> int:
    """Give back the memory of every local model this process loaded, so that a stage done with its
    model leaves room for the next one (`local.release_models`; the CUDA cache is emptied too).
    Returns how many were released; 0, importing nothing, when no local model was ever loaded."""
    local = sys.modules.get("recxplain.llm.local")  # not imported: nothing to release, no torch import
    return local.release_models() if local is not None else 0
