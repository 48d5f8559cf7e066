"""Local generation throughput: the batched `local` provider vs one-at-a-time `generate`.

Writes 64 movie-recommendation explanations (~100 new tokens, temperature 0.7, top-p 0.9) with
the embedded SmolLM2-135M-Instruct:
- one at a time: transformers' `model.generate` on each prompt alone (its own sampling), on the
  first `--single` prompts (a rate, so a subset measures it; the full 64 would take minutes);
- generate batched: transformers' `model.generate` on the same length-sorted, left-padded
  batches (what the provider did before it had its own decode loop);
- batched: `recxplain.llm` (`load_chat_model(...).generate`), prompts sorted by length and
  left-padded into batches of `--batch-sizes`, seeded per-row sampling, no response cache.

Both use the same loaded model object and dtype and run side by side in one process, so their
ratio is meaningful even on a loaded machine; absolute tokens/s are not (the load average is
printed before and after). Tokens are new tokens actually generated (up to end-of-turn).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from recxplain.config import LLMConfig, SamplingConfig  # noqa: E402
from recxplain.llm import load_chat_model  # noqa: E402
from recxplain.llm.local import load_local_model, local_dtype, pick_device, prompt_token_ids  # noqa: E402
from recxplain.models import resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MOVIES = [("Star Wars", 1977, "Action, Sci-Fi"), ("Fargo", 1996, "Crime, Drama, Thriller"),
          ("Toy Story", 1995, "Animation, Children's, Comedy"), ("Contact", 1997, "Drama, Sci-Fi"),
          ("Return of the Jedi", 1983, "Action, Romance, Sci-Fi"), ("Liar Liar", 1997, "Comedy"),
          ("The English Patient", 1996, "Drama, Romance, War"), ("Scream", 1996, "Horror, Thriller"),
          ("Air Force One", 1997, "Action, Thriller"), ("Raiders of the Lost Ark", 1981, "Action, Adventure"),
          ("The Godfather", 1972, "Action, Crime, Drama"), ("Pulp Fiction", 1994, "Crime, Drama"),
          ("Twelve Monkeys", 1995, "Drama, Sci-Fi"), ("The Silence of the Lambs", 1991, "Drama, Thriller"),
          ("Babe", 1995, "Children's, Comedy, Drama"), ("Heat", 1995, "Action, Crime, Thriller")]  # fmt: skip
OCCUPATIONS = ["student", "engineer", "writer", "educator", "programmer", "librarian", "artist", "doctor"]


def explanation_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    """Prompts shaped like the pipeline's cases: profile, rated history, neighbours, a path."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        history = rng.sample(MOVIES, rng.randint(3, 8))
        title, year, genres = rng.choice([m for m in MOVIES if m not in history])
        liked = [m for m in history[:3]]
        lines = "\n".join(f"- {t} ({y}; {g}): rated {rng.randint(2, 5)}/5" for t, y, g in history)
        user = (
            f"User: {rng.randint(18, 60)}-year-old {rng.choice(['man', 'woman'])}, {rng.choice(OCCUPATIONS)}.\n"
            f"Recently watched:\n{lines}\n"
            f"Recommended: {title} ({year}; {genres}).\n"
            f"Similar movies the user liked: {', '.join(t for t, _, _ in liked)}.\n"
            f"Evidence: the user rated {liked[0][0]} highly; "
            f"it shares the genre {genres.split(', ')[0]} with {title}.\n"
            "Write a short, friendly explanation (2-3 sentences) of why the user may enjoy the recommended movie."
        )
        prompts.append([{"role": "system", "content": "You explain movie recommendations to users."},
                        {"role": "user", "content": user}])
    return prompts


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matrix product: the ceiling the model's matrix work runs against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def one_at_a_time(model, tokenizer, prompts: list[list[dict]], sampling: SamplingConfig) -> tuple[int, float]:
    """transformers' generate on each prompt alone; (new tokens, seconds)."""
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    tokens, start = 0, time.perf_counter()
    for i, messages in enumerate(prompts):
        ids = torch.tensor([prompt_token_ids(tokenizer, messages)], device=model.device)
        torch.manual_seed(sampling.seed + i)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                 max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        tokens += next((k + 1 for k, t in enumerate(new) if t in stop), len(new))
    return tokens, time.perf_counter() - start


def generate_batched(model, tokenizer, prompts: list[list[dict]], sampling: SamplingConfig,
                     batch_size: int) -> tuple[int, float]:
    """transformers' generate on length-sorted, left-padded batches; (new tokens, seconds)."""
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    ids = sorted((prompt_token_ids(tokenizer, m) for m in prompts), key=len, reverse=True)
    tokens, start = 0, time.perf_counter()
    for first in range(0, len(ids), batch_size):
        batch = ids[first:first + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        torch.manual_seed(sampling.seed + first)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                                 temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                 max_new_tokens=sampling.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, width:].tolist():
            tokens += next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--single", type=int, default=8, help="prompts for the one-at-a-time path")
    parser.add_argument("--batch-sizes", default="64,16")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="auto: bfloat16 where it is the faster one (recxplain.models.fast_bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.dtype = local_dtype(LLMConfig(dtype=args.dtype))
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
    prompts = explanation_prompts(args.prompts)
    device = pick_device("auto")
    model, tokenizer = load_local_model(resolve_model("smollm2", args.artifacts), None, args.dtype, device)
    lengths = [len(prompt_token_ids(tokenizer, p)) for p in prompts]
    results = {"device": device, "torch_threads": torch.get_num_threads(), "dtype": args.dtype,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_before": os.getloadavg()[0],
               "prompts": len(prompts), "prompt_tokens_mean": sum(lengths) / len(lengths),
               "max_new_tokens": args.max_new_tokens, "runs": []}
    results["matmul_gflops"] = {name: round(matmul_gflops(getattr(torch, name))) for name in ("bfloat16", "float32")}
    print(f"2048^2 matrix product: {results['matmul_gflops']['bfloat16']} GFLOP/s bf16, "
          f"{results['matmul_gflops']['float32']} GFLOP/s fp32 (llm.dtype auto picked {args.dtype})", flush=True)
    print(f"{device}, {torch.get_num_threads()} threads, {args.dtype}, prompts of {min(lengths)}-{max(lengths)} "
          f"tokens (mean {results['prompt_tokens_mean']:.0f}), load average {results['load_before']:.1f}", flush=True)
    one_at_a_time(model, tokenizer, prompts[:1], sampling.model_copy(update={"max_new_tokens": 4}))  # warm-up

    tokens, seconds = one_at_a_time(model, tokenizer, prompts[:args.single], sampling)
    single_rate = tokens / seconds
    results["runs"].append({"path": "one_at_a_time", "prompts": args.single, "tokens": tokens,
                            "seconds": round(seconds, 2), "tokens_per_s": round(single_rate, 1)})
    print(f"one at a time  {args.single:3d} prompts {tokens:5d} tokens {seconds:7.1f} s {single_rate:7.1f} tok/s",
          flush=True)
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        tokens, seconds = generate_batched(model, tokenizer, prompts, sampling, batch_size)
        rate = tokens / seconds
        results["runs"].append({"path": f"generate_batched_{batch_size}", "prompts": len(prompts), "tokens": tokens,
                                "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1),
                                "ratio_vs_one_at_a_time": round(rate / single_rate, 2)})
        print(f"generate bs={batch_size:<3d}{len(prompts):3d} prompts {tokens:5d} tokens {seconds:7.1f} s "
              f"{rate:7.1f} tok/s  x{rate / single_rate:.1f}", flush=True)
        chat = load_chat_model(LLMConfig(dtype=args.dtype, batch_size=batch_size), args.artifacts)
        outs = chat.generate(prompts, sampling)
        tokens, seconds = chat.usage["completion_tokens"], chat.usage["seconds"]
        rate = tokens / seconds
        results["runs"].append({"path": f"batched_{batch_size}", "prompts": len(prompts), "tokens": tokens,
                                "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1),
                                "ratio_vs_one_at_a_time": round(rate / single_rate, 2),
                                "stopped_early": sum(g.finish_reason == "stop" for s in outs for g in s)})
        print(f"batched bs={batch_size:<3d} {len(prompts):3d} prompts {tokens:5d} tokens {seconds:7.1f} s "
              f"{rate:7.1f} tok/s  x{rate / single_rate:.1f}", flush=True)
    results["load_after"] = os.getloadavg()[0]
    print(f"load average after: {results['load_after']:.1f}\nexample: {outs[0][0].text[:300]!r}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
