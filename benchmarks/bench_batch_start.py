"""The students' explanation prompts with and without reading the batch's common start once.

Every prompt of a stage starts with the same system message and the template's first words. The
teacher's prompts also share the worked example, a large enough share of each prompt for
`shared_prefixes` to group them; the students' prompts (no example) share ~31 of ~171 tokens,
too small a share to group them, so `generate_batch` reads the start common to the whole batch
once in a one-row first read (`recxplain.llm.local.BATCH_START_TOKENS`). This script renders the
real template (`configs/prompts/explain_seed.j2`, without the example) for `--prompts` cases
(movies and facts drawn from bench_generate.py's list) and generates greedy answers with that
read on and off, `--repeats` times alternately in one process. Prints the times, the ratio and
whether the answers are the same (they must be, up to float noise).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_batch_start.py [--prompts 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import MOVIES  # noqa: E402

from recxplain.config import LLMConfig, SamplingConfig  # noqa: E402
from recxplain.llm import load_chat_model, local  # noqa: E402
from recxplain.prompts import explain_messages  # noqa: E402
from recxplain.schemas import Case, Movie, PathEvidence, RatedMovie  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cases(n: int, seed: int = 0) -> list[Case]:
    """Cases shaped like build_cases' output: a recommended movie and three facts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        picked = rng.sample(MOVIES, 4)
        (title, year, genres), rated = picked[0], picked[1:]
        item = Movie(item_id=i, title=title, year=year, genres=genres.split(", "))
        history = [RatedMovie(item_id=100 + j, title=t, year=y, genres=g.split(", "), rating=rng.randint(3, 5),
                              timestamp=j) for j, (t, y, g) in enumerate(rated)]
        first, second = history[0], history[1]
        facts = [f"You rated {first.title} ({first.year}) {int(first.rating)}/5; people who liked it also liked "
                 f"{title} ({year}).",
                 f"You rated {second.title} ({second.year}) 5/5; {title} ({year}) shares the genre "
                 f"{item.genres[0]} with it."]
        paths = [PathEvidence(pattern="p", steps=[], text=text, score=1.0) for text in facts]
        out.append(Case(case_id=f"{i}-{i}", split="eval", user_id=i, history=history, item=item, rank=1, score=1.0,
                        paths=paths))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    args = parser.parse_args()
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=64)
    prompts = [explain_messages(c, "explain_seed.j2", example=False) for c in cases(args.prompts)]
    model = load_chat_model(LLMConfig(), args.artifacts)
    model.generate(prompts[:2], greedy)  # load and warm up outside the timings
    print(f"{args.prompts} student prompts, greedy, 64 new tokens at most; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    default = local.BATCH_START_TOKENS
    seconds, texts = {"whole prompts": [], "start read once": []}, {}
    for _ in range(args.repeats):
        for label, tokens in (("whole prompts", math.inf), ("start read once", default)):
            local.BATCH_START_TOKENS = tokens
            start = time.perf_counter()
            outputs = model.generate(prompts, greedy)
            seconds[label].append(time.perf_counter() - start)
            texts[label] = [g.text for samples in outputs for g in samples]
            print(f"{label:16} {seconds[label][-1]:6.1f} s", flush=True)
    local.BATCH_START_TOKENS = default
    whole, once = sum(seconds["whole prompts"]), sum(seconds["start read once"])
    same = sum(a == b for a, b in zip(*texts.values()))
    print(f"ratio {once / whole:.2f} (start read once / whole prompts, {args.repeats} runs each); identical answers "
          f"{same} of {len(prompts)}; load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
