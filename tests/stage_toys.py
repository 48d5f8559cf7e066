"""Toy stages for the caching tests (in a module of their own: keys hash a module's source)."""

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel

CALLS: list[str] = []
FAIL_ONCE: set[str] = set()


class Numbers(BaseModel):
    start: int = 1
    factor: int = 2


def make_numbers(out: Path, *, numbers: Numbers) -> None:
    CALLS.append("make_numbers")
    (out / "numbers.json").write_text(json.dumps([numbers.start + i for i in range(3)]))


def scale_numbers(out: Path, *, numbers: Numbers, source: Path) -> None:
    CALLS.append("scale_numbers")
    if "scale_numbers" in FAIL_ONCE:
        FAIL_ONCE.discard("scale_numbers")
        raise RuntimeError("scale_numbers failed on purpose")
    values = json.loads((source / "numbers.json").read_text())
    if os.environ.get("TOY_SLEEP"):  # the kill -9 test kills the process here
        (out / "started").write_text("")
        time.sleep(float(os.environ["TOY_SLEEP"]))
    (out / "scaled.json").write_text(json.dumps([v * numbers.factor for v in values]))
