"""LLMXRec's discriminator: a small model that learns which of two explanations the judge prefers.

LLMXRec (Luo et al. 2024) trains a LoRA discriminator on explanation pairs whose annotators
agree, then compares every pair of explainers with it; the better explanation scores 1, the
other 0. Here the "annotators" are the configured base judge (`judge.discriminator.base`),
whose order-consistent verdicts are the `kept` pairs of every judge_pairs stage, plus the
decisive arena votes when an export of them is configured.

The model is a reward model (trl's `RewardTrainer`, Bradley-Terry loss): SmolLM2 (or another
causal LM) with a one-logit sequence-classification head and a LoRA adapter reads a case's
evidence (`configs/prompts/discriminator.j2`) and one explanation as the assistant's answer, and
gives a score. Two explanations of a case are decided by their scores, so the verdict cannot
depend on which one is shown first (the 135M judge's verdicts followed the position), and the
tournament scores each explanation once instead of every ordered pair.

Plain functions: `judged_pairs` and `arena_pairs` collect the training pairs, `split_by_case`
holds out whole cases, `train` fits and saves the adapter, `load` and `scores` read it back,
`agreement` compares its verdicts with the held-out ones, `pair_judge` is the tournament's judge.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recxplain.config import DiscriminatorConfig
from recxplain.models import fast_bf16, resolve_model
from recxplain.prompts import Templates, render_messages
from recxplain.schemas import Case

ADAPTER = "discriminator"  # the adapter's folder inside the stage's artifact
VOTE_COLUMNS = ("case_id", "model_a", "model_b", "outcome")


# ---------------------------------------------------------------------------------------------
# Training pairs


def judged_pairs(folders: Mapping[str, Path]) -> list[dict]:
    """The pairs the base judge kept (decisive and, for an LLM, the same in both orders) in each
    judge_pairs folder: `preferences.jsonl` rows as {case_id, chosen, rejected, source}, where
    source is the folder's label (`preferences`, `preferences_r1`, ...)."""
    pairs = []
    for label, folder in folders.items():
        path = Path(folder) / "preferences.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (written by judge_pairs)")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
                case_id = row["case_id"]
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a preference row with case_id, chosen and rejected "
                                 f"messages ({type(err).__name__}: {err})") from None
            pairs.append({"case_id": str(case_id), "chosen": chosen, "rejected": rejected, "source": label})
    return pairs


def read_votes(path: Path) -> pd.DataFrame:
    """The arena's vote export (`votes.csv` or `votes.parquet` from /admin), checked: the columns
    of VOTE_COLUMNS, outcomes a / b / tie / both_bad (a bad one names its line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: judge.discriminator.arena_votes is not a file (export the votes "
                                "from the arena's /admin page as votes.csv or votes.parquet)")
    if path.suffix == ".parquet":
        frame, first_line = pd.read_parquet(path), 1
    elif path.suffix == ".csv":
        frame, first_line = pd.read_csv(path, dtype=str, keep_default_na=False), 2  # line 1 is the header
    else:
        raise ValueError(f"{path}: judge.discriminator.arena_votes must be the arena's votes.csv or votes.parquet "
                         "export (the SQLite database stores code names only; /admin maps them back)")
    missing = [c for c in VOTE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; has {list(frame.columns)}")
    bad = ~frame["outcome"].isin(["a", "b", "tie", "both_bad"])
    if bad.any():
        index = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"line {index + first_line}" if path.suffix == ".csv" else f"row {index}"
        raise ValueError(f"{path}: {where}: outcome {frame['outcome'].iloc[index]!r} is not a, b, tie or both_bad")
    return frame


def arena_pairs(votes: pd.DataFrame, explanations: pd.DataFrame) -> tuple[list[dict], dict]:
    """Training pairs from people's decisive votes: {case_id, chosen, rejected, source: "arena"}
    with the texts of `explanations` (case_id, model, text), and counts of what was left out:
    ties and both-bad, flagged votes (the admin's anomaly flags), votes on an explainer or case
    these explanations lack, and pairs of identical texts."""
    text = explanations.set_index(["case_id", "model"])["text"]
    flagged = (
        votes["flag"].fillna("").astype(str).str.len() > 0
        if "flag" in votes.columns
        else pd.Series(False, index=votes.index)
    )
    decisive = votes["outcome"].isin(["a", "b"])
    counts = {"votes": len(votes), "not_decisive": int((~decisive).sum()), "flagged": int((decisive & flagged).sum()),
              "unmatched": 0, "identical": 0, "used": 0}
    pairs = []
    for row in votes[decisive & ~flagged].itertuples(index=False):
        keys = [(str(row.case_id), str(row.model_a)), (str(row.case_id), str(row.model_b))]
        if any(k not in text.index for k in keys):
            counts["unmatched"] += 1
            continue
        a, b = (text[k] for k in keys)
        if " ".join(a.split()) == " ".join(b.split()):
            counts["identical"] += 1
            continue
        chosen, rejected = (a, b) if row.outcome == "a" else (b, a)
        pairs.append({"case_id": str(row.case_id), "chosen": chosen, "rejected": rejected, "source": "arena"})
    counts["used"] = len(pairs)
    return pairs, counts


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file (the votes export: new votes train a new discriminator); None without one."""
    if path is None or not Path(path).is_file():
        return None
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def split_by_case(pairs: Sequence[dict], holdout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): `holdout` of the cases (at least one, at least one left to train on),
    every pair of a case on the same side, so no case's evidence is seen in both."""
    cases = sorted({p["case_id"] for p in pairs})
    if len(cases) < 2:
        raise ValueError(f"the discriminator needs judged pairs of at least two cases (one to train on, one held out); "
                         f"got {len(pairs)} pair(s) of {len(cases)} case(s)")
    random.Random(seed).shuffle(cases)
    held = set(cases[: min(max(1, round(len(cases) * holdout)), len(cases) - 1)])
    return [p for p in pairs if p["case_id"] not in held], [p for p in pairs if p["case_id"] in held]


# ---------------------------------------------------------------------------------------------
# Tokens


def _conversation(case: Case, text: str, config: DiscriminatorConfig, templates: Templates) -> list[dict]:
    return render_messages(config.prompt, templates, case=case) + [{"role": "assistant", "content": text}]


def encode(tokenizer, case: Case, text: str, config: DiscriminatorConfig, templates: Templates) -> list[int]:
    """Token ids of the evidence + `text` as the chat template writes them; over `max_length` is
    an error naming the case (trl would drop the pair without a word)."""
    rendered = tokenizer.apply_chat_template(_conversation(case, text, config, templates), tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if len(ids) > config.max_length:
        raise ValueError(f"case {case.case_id}: evidence + explanation is {len(ids)} tokens, over "
                         f"judge.discriminator.max_length={config.max_length}; raise it or shorten {config.prompt}")
    return ids


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ValueError(f"{folder}: the tokenizer has no chat template; the discriminator reads chat-formatted "
                         "evidence and explanations, so use an instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # the head reads the last token that is not padding
    return tokenizer


def _classifier(folder: Path, tokenizer, dtype):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised": that head is what is trained
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------
# Training


def train(out: Path, pairs: Sequence[dict], cases: Mapping[str, Case], config: DiscriminatorConfig,
          templates: Templates, artifacts_dir: Path) -> dict:
    """Fit the reward model on `pairs` and save its adapter (with the tokenizer) in `out/ADAPTER`;
    return what training.json records (steps, loss and accuracy per step, seconds, device)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    base = resolve_model(config.model, artifacts_dir)
    tokenizer = _tokenizer(base)
    rows = [{"chosen_ids": encode(tokenizer, cases[p["case_id"]], p["chosen"], config, templates),
             "rejected_ids": encode(tokenizer, cases[p["case_id"]], p["rejected"], config, templates)} for p in pairs]
    cuda = torch.cuda.is_available()
    bf16 = fast_bf16("cuda" if cuda else "cpu")
    set_seed(config.seed)  # the score head is initialised when the model loads
    model = _classifier(base, tokenizer, torch.bfloat16 if cuda and bf16 else torch.float32)
    args = RewardConfig(
        output_dir=str(Path(out) / "checkpoints"),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_length=None,  # checked by `encode`, which names the case
        activation_checkpointing=False,  # 135M parameters: memory is no concern, time is
        use_cpu=not cuda,
        bf16=bf16,
        logging_steps=1,
        save_strategy="no",  # a few steps: a killed stage trains again from the start
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                             target_modules="all-linear")  # SEQ_CLS also trains the new score head in full
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                            peft_config=peft_config)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    folder = Path(out) / ADAPTER
    trainer.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    adapter_config = folder / "adapter_config.json"
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = str(Path(base).resolve())
    adapter_config.write_text(json.dumps(settings, indent=2))
    curve = [{"step": e["step"], "loss": e["loss"], "accuracy": e.get("accuracy"), "margin": e.get("margin")}
             for e in trainer.state.log_history if "loss" in e]
    return {
        "base_model": str(base), "train_pairs": len(rows), "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
        "device": "cuda" if cuda else "cpu", "bf16": bf16,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_seconds": round(seconds, 1), "curve": curve,
    }


# ---------------------------------------------------------------------------------------------
# Scoring


def load(folder: Path, config: DiscriminatorConfig, artifacts_dir: Path):
    """(model, tokenizer) of a trained discriminator folder (the stage's `ADAPTER` subfolder)."""
    import torch
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder}: no trained discriminator (adapter_config.json; written by "
                                "train_discriminator)")
    base = resolve_model(config.model, artifacts_dir)
    tokenizer = _tokenizer(folder)
    cuda = torch.cuda.is_available()
    model = _classifier(base, tokenizer, torch.bfloat16 if cuda and fast_bf16("cuda") else torch.float32)
    model = PeftModel.from_pretrained(model, folder).eval()
    return model.to("cuda") if cuda else model, tokenizer


def scores(model, tokenizer, items: Sequence[tuple[Case, str]], config: DiscriminatorConfig,
           templates: Templates) -> np.ndarray:
    """The discriminator's score of each (case, explanation); each distinct one is scored once,
    shortest first so a batch pads little."""
    import torch

    keys = list(dict.fromkeys((case.case_id, text) for case, text in items))
    by_key = {(case.case_id, text): case for case, text in items}
    ids = {key: encode(tokenizer, by_key[key], key[1], config, templates) for key in keys}
    order = sorted(keys, key=lambda k: len(ids[k]))
    found: dict[tuple[str, str], float] = {}
    with torch.inference_mode():
        for start in range(0, len(order), config.score_batch_size):
            batch = order[start : start + config.score_batch_size]
            padded = tokenizer.pad({"input_ids": [ids[k] for k in batch]}, return_tensors="pt").to(model.device)
            logits = model(**padded).logits.float().squeeze(-1).cpu().numpy()
            found.update(zip(batch, logits.tolist()))
    return np.array([found[(case.case_id, text)] for case, text in items], dtype=float)


def verdicts(score_a: np.ndarray, score_b: np.ndarray, tie_margin: float) -> list[str]:
    """"a" where A's score is higher by at least `tie_margin` (and higher at all), "b" the other
    way, else "tie"."""
    difference = np.asarray(score_a, float) - np.asarray(score_b, float)
    return ["tie" if d == 0 or abs(d) < tie_margin else "a" if d > 0 else "b" for d in difference]


def agreement(pairs: Sequence[dict], chosen: np.ndarray, rejected: np.ndarray, tie_margin: float) -> dict:
    """How often the discriminator picks the explanation the judge (or people) chose: n pairs,
    agree / disagree / tie counts, the agreement rate with a Wilson 95% interval, and an exact
    binomial test of the decisive verdicts against chance (0.5). Per source and overall."""
    from scipy.stats import binomtest
    from statsmodels.stats.proportion import proportion_confint

    picked = verdicts(chosen, rejected, tie_margin)
    sources = {"all": list(range(len(pairs)))}
    for i, p in enumerate(pairs):
        sources.setdefault(p["source"], []).append(i)
    result = {}
    for source, index in sources.items():
        agree = sum(picked[i] == "a" for i in index)
        disagree = sum(picked[i] == "b" for i in index)
        n = len(index)
        low, high = proportion_confint(agree, n, method="wilson") if n else (math.nan, math.nan)
        result[source] = {
            "n": n, "agree": agree, "disagree": disagree, "ties": n - agree - disagree,
            "rate": agree / n if n else None,
            "ci_low": float(low) if n else None,
            "ci_high": float(high) if n else None,
            "p_value": binomtest(agree, agree + disagree).pvalue if agree + disagree else None,
        }
    return result


def pair_judge(folder: Path, config: DiscriminatorConfig, templates: Templates, artifacts_dir: Path,
               both_orders: bool = True) -> Callable[[list[tuple[Case, str, str]]], list[tuple[str, str | None]]]:
    """The tournament's judge (tasks.evaluate.judge_tournament): (case, text_a, text_b) triples ->
    (verdict with A shown first, verdict with B shown first or None), as shown. The scores do not
    depend on the order, so the second verdict is the first one swapped."""
    model, tokenizer = load(folder, config, artifacts_dir)

    def judge_requests(requests: list[tuple[Case, str, str]]) -> list[tuple[str, str | None]]:
        if not requests:
            return []
        # Both sides in one call: an explanation met in several pairs is scored once.
        both = scores(model, tokenizer, [(c, t) for c, t, _ in requests] + [(c, t) for c, _, t in requests],
                      config, templates)
        a, b = both[: len(requests)], both[len(requests) :]
        swap = {"a": "b", "b": "a", "tie": "tie"}
        return [(v, swap[v] if both_orders else None) for v in verdicts(a, b, config.tie_margin)]

    return judge_requests
