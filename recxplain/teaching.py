"""What teacher_generate (tasks/teacher.py) and sample_pairs (tasks/pairs.py) share: the chat
model they sample from, with its response cache (`load_sampler`), and the training cases they
explain (`train_cases`).
"""

from __future__ import annotations

from pathlib import Path

from recxplain.config import LLMConfig
from recxplain.llm import load_chat_model
from recxplain.prompts import ChatModel
from recxplain.schemas import Case, read_cases


def load_sampler(cfg: LLMConfig, artifacts_dir: Path, cache_path: Path) -> ChatModel:
    """The chat model of `cfg`, its answers cached in the SQLite file `cache_path`."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return load_chat_model(cfg, Path(artifacts_dir), cache_path)


def train_cases(cases: Path) -> list[Case]:
    """The training cases of a build_cases folder; a missing or empty train.jsonl is an error."""
    path = Path(cases) / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (written by build_cases)")
    found = read_cases(path)
    if not found:
        raise ValueError(f"{path}: no training cases")
    return found
