"""Judge-shaped generation with and without shared prefixes in the `local` provider.

A judge reads one case's evidence before each pair of explanations it compares: both orders
of a pair (judge_pairs) and every pair of explainers (the evaluation tournament) repeat the
same ~450-token start. `generate_batch` reads a start shared by a batch's prompts once
(`recxplain.llm.local.shared_prefixes`); this script times the same prompts with that on and
off (SHARED_FRACTION = inf: every prompt read whole), side by side in one process.

Prompts: `--cases` cases, each with `--explainers` explanations, every pair in both orders
(the default 2 x 7 is the default config's tournament: 84 prompts), max 48 new tokens, greedy.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_shared_prefix.py [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_generate import MOVIES, explanation_prompts  # noqa: E402

from recxplain.config import LLMConfig, SamplingConfig  # noqa: E402
from recxplain.llm import load_chat_model, local  # noqa: E402
from recxplain.llm.local import load_local_model, local_dtype, pick_device, prompt_token_ids  # noqa: E402
from recxplain.models import resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JUDGE = ("You are an expert evaluator of explanations for movie recommendations. You compare two explanations "
         "of the same recommendation and answer with a single JSON object, nothing else.")
ASK = ('Score each option from 0 to 5 on relevance, diversity, explainability and faithfulness, then choose '
       '"A" or "B", or "tie", or "both_bad". Answer with JSON only: {"A": {...}, "B": {...}, "choice": "A"}')


def judge_prompts(cases: int, explainers: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    prompts = []
    for case in explanation_prompts(cases, seed):
        evidence = case[1]["content"].rsplit("\n", 1)[0]  # the case without the writing instruction
        explanations = [" ".join(f"{t} ({y}) is a {g.split(', ')[0].lower()} film you may like."
                                 for t, y, g in rng.sample(MOVIES, rng.randint(2, 4))) for _ in range(explainers)]
        for a, b in itertools.permutations(explanations, 2):
            prompts.append([{"role": "system", "content": JUDGE},
                            {"role": "user", "content": f"{evidence}\n\nOption A: {a}\n\nOption B: {b}\n\n{ASK}"}])
    return prompts


def timed(prompts, sampling, batch_size: int, dtype: str, artifacts: Path) -> tuple[float, list]:
    model = load_chat_model(LLMConfig(dtype=dtype, batch_size=batch_size), artifacts)
    start = time.perf_counter()
    outs = model.generate(prompts, sampling)
    return time.perf_counter() - start, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--explainers", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="auto: bfloat16 where it is the faster one (recxplain.models.fast_bf16)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    args = parser.parse_args()
    args.dtype = local_dtype(LLMConfig(dtype=args.dtype))
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = judge_prompts(args.cases, args.explainers)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    timed(prompts[:2], sampling.model_copy(update={"max_new_tokens": 2}), 2, args.dtype, args.artifacts)  # warm up
    # the model the provider loaded (models are kept per process)
    _, tokenizer = load_local_model(resolve_model("smollm2", args.artifacts), None, args.dtype, pick_device("auto"))
    lengths = [len(prompt_token_ids(tokenizer, p)) for p in prompts]
    print(f"{len(prompts)} judge prompts of {min(lengths)}-{max(lengths)} tokens, {torch.get_num_threads()} threads, "
          f"{args.dtype}, batch {args.batch_size}, load average {os.getloadavg()[0]:.1f}", flush=True)
    shared_fraction = local.SHARED_FRACTION
    results = {}
    for name, fraction in (("whole prompts", math.inf), ("shared prefixes", shared_fraction)):
        local.SHARED_FRACTION = fraction
        seconds, outs = timed(prompts, sampling, args.batch_size, args.dtype, args.artifacts)
        results[name] = (seconds, [g.text for s in outs for g in s])
        print(f"{name:16s} {seconds:7.1f} s  {len(prompts) / seconds:5.2f} prompts/s", flush=True)
    local.SHARED_FRACTION = shared_fraction
    (whole, texts_whole), (shared, texts_shared) = results["whole prompts"], results["shared prefixes"]
    same = sum(a == b for a, b in zip(texts_whole, texts_shared))
    print(f"speed-up x{whole / shared:.2f}; identical greedy answers {same}/{len(prompts)} "
          f"(float rounding differs between the two reads); load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
