"""The trainers behind the train_sft / train_orpo / train_dpo stages (tasks/train.py).

Reading and validating the trl-format JSONL rows, the train/validation split and datasets, the
device, LoRA config and common trainer arguments, the CPU trainers, the training loop with its
export and measurements (`fit_and_export`: adapter, optional merged model, training.json with
curves, tokens/s and peak memory) and `merge_adapter`.

Stacking SFT then DPO: every DPO round continues training the SAME LoRA adapter as the student
it starts from (option "train DPO on the same adapter"), so every student is the base model plus
ONE adapter that any LoRA server can load. The reference policy must be the previous student,
not the base model (RecLAIF Algorithm 1). trl 1.16 does exactly this when its `DPOTrainer` gets
a `PeftModel` whose adapter is trainable and no `peft_config`: it copies the adapter under the
name "ref", keeps it frozen and computes the reference log-probs with it (checked in
tests/test_train.py: step-1 DPO loss is log 2 and the "ref" weights equal the init adapter).

On a CPU the trainers read less than trl's defaults, with the same losses and gradients: SFT
runs the LM head on the answer positions only (`answer_token_loss`), and ORPO and DPO read each
pair's prompt once, in one row [prompt][chosen][rejected] (`packed_pair_hidden`), instead of a
chosen and a rejected row that both repeat it (benchmarks/bench_train.py).

Resume: Trainer checkpoints go to `out/checkpoints/`; training again with the same `out` resumes
from the last one. They are deleted once the adapter is exported.

Bad input fails before any training step: an empty or malformed JSONL (file and line named), a
row longer than `training.max_length` tokens (file, line and case_id named), a tokenizer without
a chat template.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Every trl trainer starts a telemetry thread that looks up the Hub; the machines we run on are
# offline and nothing may be downloaded. ORPO lives in trl.experimental and warns on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import huggingface_hub.constants  # noqa: E402

from recxplain.config import TrainingConfig  # noqa: E402
from recxplain.models import fast_bf16  # noqa: E402
from recxplain.stage import write_run_facts  # noqa: E402

# Trainer log keys that measure time, not training (`train_runtime`, `eval_samples_per_second`, ...).
TIMING_SUFFIXES = ("_runtime", "_per_second", "_flos")

if TYPE_CHECKING:  # annotations only: the heavy imports stay inside the functions (below)
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel

# huggingface_hub reads HF_HUB_OFFLINE once, at its first import, which may precede this module's.
huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True

# torch, transformers, peft, trl and datasets are imported inside the functions that use them:
# together they take ~9 s to import on 2 cores, and the flows import this module (through the stage
# functions of tasks/train.py) even when every training stage is cached and nothing here runs.

ROLES = {"system", "user", "assistant"}


def merge_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """Fold a peft adapter into its base model and save a full safetensors model to `out_dir`.

    The base model is the folder named in the adapter's `adapter_config.json`; the tokenizer and
    chat template are copied from `adapter_dir`. The result loads with
    `AutoModelForCausalLM.from_pretrained(out_dir)` and serves with `vllm serve out_dir`.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{adapter_dir}: not a peft adapter folder (no adapter_config.json)")
    base = Path(json.loads(config_path.read_text())["base_model_name_or_path"])
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"{config_path}: base model folder {base} not found")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Input reading and validation (all before any model is loaded or step taken)
# ---------------------------------------------------------------------------------------------


def read_jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; clear errors for a missing/empty/bad file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: training data file not found")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {err}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    if not rows:
        raise ValueError(f"{path}: no training rows (the file is empty)")
    return rows


def _check_messages(messages: object, field: str, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: {field!r} must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: {field}[{i}] must be {{'role': one of {sorted(ROLES)}, 'content': str}}, got {message!r}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def sft_row(row: dict, path: Path, line: int) -> dict:
    """A teacher row as trl's conversational prompt/completion (completion-only loss)."""
    where = f"{path}:{line}"
    messages = _check_messages(row.get("messages"), "messages", where)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError(f"{where}: the last message must be a non-empty assistant answer")
    if len(messages) < 2:
        raise ValueError(f"{where}: 'messages' needs a prompt before the assistant answer")
    return {
        "prompt": messages[:-1],
        "completion": messages[-1:],
        "case_id": str(row.get("case_id", f"line {line}")),
        "line": line,
    }


def preference_row(row: dict, path: Path, line: int) -> dict:
    """A judged pair in trl's conversational preference format (extra fields dropped)."""
    where = f"{path}:{line}"
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise ValueError(f"{where}: missing field {key!r} (expected prompt, chosen, rejected)")
    prompt = _check_messages(row["prompt"], "prompt", where)
    if prompt[-1]["role"] == "assistant":
        raise ValueError(f"{where}: 'prompt' must end with a user (or system) message")
    answers = {}
    for key in ("chosen", "rejected"):
        messages = _check_messages(row[key], key, where)
        if len(messages) != 1 or messages[0]["role"] != "assistant" or not messages[0]["content"].strip():
            raise ValueError(f"{where}: {key!r} must hold exactly one non-empty assistant message")
        answers[key] = messages
    return {
        "prompt": prompt,
        **answers,
        "case_id": str(row.get("case_id", f"line {line}")),
        "line": line,
    }


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ValueError(
            f"{folder}: the tokenizer has no chat template; the student is trained on chat-formatted "
            "rows, so use an instruct model or add a chat_template.jinja to the model folder"
        )
    return tokenizer


def check_lengths(tokenizer, rows: list[dict], answer: str, max_length: int, path: Path) -> None:
    """Fail on the first row whose templated prompt + `answer` exceeds `max_length` tokens.

    Trainers would silently truncate such rows, cutting the answer the loss is about.
    """
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"] + row[answer], tokenize=False)
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > max_length:
            raise ValueError(
                f"{path}:{row['line']}: case {row['case_id']}: prompt + {answer} is {length} tokens, "
                f"over training.max_length={max_length}; shorten the prompt or raise training.max_length"
            )


def validation_split(rows: list[dict], valid_fraction: float, seed: int,
                     min_cases: int = 8) -> tuple[list[dict], list[dict]]:
    """Hold out whole cases (all rows of a case_id together) for validation: `valid_fraction` of
    them, at least `min_cases` (a loss on one or two rows says nothing), at most a third."""
    cases = sorted({row["case_id"] for row in rows})
    random.Random(seed).shuffle(cases)
    n_valid = 0
    if valid_fraction > 0:
        n_valid = min(max(math.floor(len(cases) * valid_fraction), min_cases), len(cases) // 3)
    held_out = set(cases[:n_valid])
    train = [row for row in rows if row["case_id"] not in held_out]
    valid = [row for row in rows if row["case_id"] in held_out]
    return train, valid


def to_dataset(rows: list[dict]) -> Dataset:
    from datasets import Dataset

    # In memory (Dataset.from_list): `load_dataset("json")` would write an HF cache outside `out`.
    keep = [k for k in ("prompt", "completion", "chosen", "rejected") if k in rows[0]]
    return Dataset.from_list([{k: row[k] for k in keep} for row in rows])


# ---------------------------------------------------------------------------------------------
# Model, device and trainer arguments
# ---------------------------------------------------------------------------------------------


def training_device(training: TrainingConfig) -> dict:
    """Where and how to train: a CUDA GPU when present, else the CPU."""
    import torch

    if torch.cuda.is_available():
        bf16 = training.precision == "bf16" or (training.precision == "auto" and fast_bf16("cuda"))
        return {"name": "cuda", "bf16": bf16, "batch_size": training.gpu_batch_size}
    bf16 = training.precision == "bf16" or (training.precision == "auto" and fast_bf16("cpu"))
    return {"name": "cpu", "bf16": bf16, "batch_size": training.batch_size}


def load_training_model(folder: Path, device: dict):
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 master weights with bf16 autocast on CPU (bf16 weights would also train the adapter in
    # bf16); bf16 weights on a GPU to halve memory for larger students.
    dtype = torch.bfloat16 if device["name"] == "cuda" and device["bf16"] else torch.float32
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def peft_lora_config(training: TrainingConfig) -> PeftLoraConfig | None:
    from peft import LoraConfig as PeftLoraConfig

    if not training.lora.enabled:
        return None
    lora = training.lora
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def common_args(
    training: TrainingConfig, out: Path, device: dict, epochs: float, max_steps: int, validate: bool,
    eval_on_start: bool = True,
) -> dict:
    """TrainingArguments shared by the three trainers (trl's defaults set explicitly)."""
    return dict(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=device["batch_size"],
        per_device_eval_batch_size=device["batch_size"],
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        activation_checkpointing=training.gradient_checkpointing,
        use_cpu=device["name"] == "cpu",
        bf16=device["bf16"],
        logging_steps=training.logging_steps,
        eval_strategy="steps" if validate else "no",
        eval_steps=training.eval_steps,
        eval_on_start=validate and eval_on_start,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=1,
        seed=training.seed,
        data_seed=training.seed,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),  # steps and their rate on a terminal, nothing in logs
        dataloader_num_workers=0,
    )


@functools.cache
def score_completion_tokens_only() -> None:
    """Make trl's DPO log-probs score the completion tokens only, as it does on a GPU.

    trl scores every position (prompt and padding included) on devices without Triton, to keep
    tensor shapes fixed for compiling backends; on a CPU that is wasted work: a DPO step takes
    ~30% less time with the same losses (benchmarks/bench_train.py).
    """
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):  # a private name: a newer trl may decide this itself
        trl_utils._use_triton = lambda device: True


@functools.cache
def answer_nll_orpo_trainer() -> type:
    """ORPOTrainer whose likelihood term covers the chosen answer only, like the SFT loss, and whose
    forward reads each pair's prompt once (`packed_pair_logps`).

    trl's likelihood term covers the prompt too: with a ~165-token prompt and a ~45-token answer
    most of that signal is "reproduce the prompt", and a 135M student trained on it answered by
    copying the prompt's fact lines over and over. The odds-ratio term is trl's, unchanged; its
    "logits/chosen" metric is the mean over answer tokens.
    """
    import torch
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOTrainer

    class AnswerNLLORPOTrainer(ORPOTrainer):
        def concatenated_forward(self, model, batch):
            packed = None if self.aux_loss_enabled or self.is_encoder_decoder else packed_pair_logps(
                model, batch["chosen_input_ids"], batch["chosen_labels"],
                batch["rejected_input_ids"], batch["rejected_labels"])
            if packed is not None:
                chosen, rejected, chosen_logits, rejected_logits = packed
                nll = -torch.cat(chosen).mean()
                return (torch.stack([c.mean() for c in chosen]), torch.stack([r.mean() for r in rejected]),
                        chosen_logits, rejected_logits, nll)
            chosen_logps, rejected_logps, chosen_logits, rejected_logits, _, *rest = super().concatenated_forward(
                model, batch)
            labels = batch["chosen_labels"][:, 1:].to(chosen_logits.device)  # the prompt is -100 there
            labels = F.pad(labels, (0, chosen_logits.shape[1] - labels.shape[1]), value=-100)
            nll = F.cross_entropy(chosen_logits.reshape(-1, chosen_logits.shape[-1]), labels.reshape(-1))
            return (chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll, *rest)

    return AnswerNLLORPOTrainer


@functools.cache
def plain_loss_sft_trainer() -> type:
    """SFTTrainer with a plain cross-entropy on the answer tokens instead of trl's chunked LM-head loss.

    Same loss (the prompt tokens are -100 in the labels), faster on CPU: the LM head runs on the
    answer positions only (`answer_token_loss`); trl's token accuracy and entropy metrics are not
    logged. A factory so that trl is imported only when a trainer is built (see the imports at the top).
    """
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = answer_token_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                     num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    return PlainLossSFTTrainer


def _decoder_and_head(model):
    """The transformer body and the LM head of a causal LM, through a peft wrapper if any."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def answer_token_loss(model, input_ids, attention_mask, labels, num_items_in_batch=None):
    """Next-token cross-entropy over the positions whose label is not -100, with the LM head run on
    those positions only: on CPU the head over a 49k vocabulary at every prompt position costs a
    large share of a step (benchmarks/bench_train.py). Summed and divided by `num_items_in_batch`
    when the Trainer gives it (gradient accumulation), else averaged, as transformers' own loss."""
    import torch.nn.functional as F

    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != -100
    logits = head(hidden[:, :-1][keep]).float()
    loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))


def packed_pair_hidden(model, chosen_ids, chosen_labels, rejected_ids, rejected_labels):
    """The hidden states that predict each pair's chosen and rejected answer tokens, from ONE row
    per pair, [prompt][chosen][rejected], instead of two rows that each repeat the prompt.

    The rejected answer continues the prompt's positions and a 4-D attention mask hides the chosen
    answer from it, so every answer token sees exactly what it sees in its own row; the answers'
    first tokens are both predicted from the prompt's last position. Rows are trl's (prompt +
    answer, labels -100 outside the answer, padding at the end). Returns (hidden states, their
    target tokens, answer lengths): every chosen answer's tokens pair by pair, then every rejected
    one's; or None when the model's attention cannot take a custom mask or a pair's two rows do not
    share their prompt.
    """
    import torch

    decoder, _ = _decoder_and_head(model)
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        return None
    rows = []
    for c_ids, c_lab, r_ids, r_lab in zip(chosen_ids, chosen_labels, rejected_ids, rejected_labels):
        c_at, r_at = (c_lab != -100).nonzero().squeeze(1), (r_lab != -100).nonzero().squeeze(1)
        if not len(c_at) or not len(r_at) or c_at[0] != r_at[0] or not torch.equal(c_ids[:c_at[0]], r_ids[:r_at[0]]):
            return None
        rows.append((c_ids[:c_at[0]], c_ids[c_at], r_ids[r_at]))
    width = max(len(p) + len(c) + len(r) for p, c, r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.ones((len(rows), width, width), dtype=torch.bool).tril()
    chosen_at, rejected_at = [], []  # (row, position) of the hidden state that predicts each answer token
    for i, (prompt, chosen, rejected) in enumerate(rows):
        P, C, R = len(prompt), len(chosen), len(rejected)
        ids[i, :P + C + R] = torch.cat([prompt, chosen, rejected])
        positions[i, :P + C] = torch.arange(P + C)
        positions[i, P + C:P + C + R] = torch.arange(P, P + R)
        allowed[i, P + C:, P:P + C] = False  # the rejected answer (and the padding after it) never sees the chosen
        chosen_at += [(i, p) for p in [P - 1] + list(range(P, P + C - 1))]
        rejected_at += [(i, p) for p in [P - 1] + list(range(P + C, P + C + R - 1))]
    device = chosen_ids.device
    mask = allowed[:, None].to(device)
    if attention == "eager":  # additive
        mask = torch.zeros(mask.shape, dtype=model.dtype, device=device).masked_fill(
            ~mask, torch.finfo(model.dtype).min
        )
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask, position_ids=positions.to(device)).last_hidden_state
    at = chosen_at + rejected_at
    answers = [c for _, c, _ in rows] + [r for _, _, r in rows]
    return hidden[[i for i, _ in at], [p for _, p in at]], torch.cat(answers).to(device), [len(a) for a in answers]


def packed_pair_logps(model, chosen_ids, chosen_labels, rejected_ids, rejected_labels):
    """Per-token log-probs of each pair's answers read as `packed_pair_hidden` does: (chosen,
    rejected: lists of 1-D tensors, one per pair; chosen and rejected answer logits), or None."""
    packed = packed_pair_hidden(model, chosen_ids, chosen_labels, rejected_ids, rejected_labels)
    if packed is None:
        return None
    hidden, targets, lengths = packed
    logits = _decoder_and_head(model)[1](hidden).float()
    logps = list(logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1).split(lengths))
    pairs, chosen_tokens = len(lengths) // 2, sum(lengths[:len(lengths) // 2])
    return logps[:pairs], logps[pairs:], logits[:chosen_tokens], logits[chosen_tokens:]


def read_dpo_prompts_once(trainer) -> None:
    """Make the DPO trainer's model (and reference) read each pair's prompt once.

    trl calls `model(input_ids, attention_mask, labels, fused_lm_head=True)` on [chosen rows;
    rejected rows] for the policy and the reference and reads per-token log-probs, entropy, mean
    logits and top-1 hits at the answer positions. This forward computes them from
    `packed_pair_hidden` (the LM head on the answer positions only) and falls back to trl's for
    anything else (generation, a batch whose halves do not share prompts, weighting or router
    outputs it does not compute).
    """
    import types

    from peft import PeftModel
    from trl.trainer.utils import FusedCausalLMOutput

    def packed_forward(self, *args, fused_lm_head=False, labels=None, trl_forward=None, **kwargs):
        input_ids = kwargs.get("input_ids")
        if (fused_lm_head and not args and labels is not None and input_ids is not None and len(input_ids) % 2 == 0
                and not trainer.use_weighting and not kwargs.get("output_router_logits")):
            half = len(input_ids) // 2
            packed = packed_pair_hidden(self, input_ids[:half], labels[:half], input_ids[half:], labels[half:])
            if packed is not None:
                hidden, targets, _ = packed
                logits = self.get_output_embeddings()(hidden).float()
                logps = logits.log_softmax(-1)
                mask = labels[:, 1:] != -100
                fields = {"log_probs": logps.gather(1, targets[:, None]).squeeze(1),
                          "entropy": -(logps.exp() * logps).sum(-1), "mean_logits": logits.mean(-1),
                          "is_top1": logits.argmax(-1) == targets}
                out = {k: v.new_zeros(mask.shape).masked_scatter(mask, v) for k, v in fields.items()}
                return FusedCausalLMOutput(loss=-out["log_probs"].sum() / mask.sum().clamp(min=1), label_mask=mask,
                                           log_sum_sq_probs=None, aux_loss=None, **out)
        return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)

    for model in (trainer.model, trainer.ref_model):
        if model is None:
            continue
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        base.forward = types.MethodType(functools.partial(packed_forward, trl_forward=base.forward), base)


# ---------------------------------------------------------------------------------------------
# Training loop, measurements and export
# ---------------------------------------------------------------------------------------------

# Attention masks whose sum is the number of real (non-padding) tokens in a training batch:
# SFT and DPO batches carry `attention_mask`, ORPO batches the chosen and rejected ones.
TOKEN_MASKS = ("attention_mask", "chosen_attention_mask", "rejected_attention_mask")

# Trainer log keys -> training.json curve keys.
CURVE_KEYS = {
    "loss": "train_loss",
    "eval_loss": "valid_loss",
    "rewards/accuracies": "train_reward_accuracy",
    "eval_rewards/accuracies": "valid_reward_accuracy",
    "learning_rate": "learning_rate",
}


def fit_and_export(
    trainer, out: Path, training: TrainingConfig, *, base: Path, method: str, device: dict, rows: int,
    init: Path | None = None, valid_from: Path | None = None,
) -> None:
    """Train (resuming from the last checkpoint in `out`), export, write training.json.
    `valid_from`: the folder the validation rows come from when it is not the training data's."""
    from peft import PeftModel
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = out / "checkpoints"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    tokens = _count_training_tokens(trainer)
    start = time.perf_counter()
    with _PeakMemory(device["name"]) as peak:
        result = trainer.train(resume_from_checkpoint=resume)
        history = trainer.state.log_history
        last_eval = max((e["step"] for e in history if "eval_loss" in e), default=None)
        if trainer.eval_dataset is not None and last_eval != trainer.state.global_step:
            trainer.evaluate()
    wall = time.perf_counter() - start

    model = trainer.model
    tokenizer = trainer.processing_class
    if isinstance(model, PeftModel):
        _save_adapter(model, tokenizer, out / "adapter", base)
        if training.merge:
            merge_adapter(out / "adapter", out / "merged")
    else:  # full fine-tuning: the model itself is the export
        model.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")

    train_seconds = result.metrics["train_runtime"]
    report = {
        "method": method,
        "base_model": str(base),
        "init": str(init) if init is not None else None,
        "adapter": "adapter" if isinstance(model, PeftModel) else None,
        "merged": "merged" if (out / "merged").exists() else None,
        "device": device["name"],
        "bf16": device["bf16"],
        "batch_size": device["batch_size"] * training.gradient_accumulation_steps,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rows": rows,
        "train_rows": len(trainer.train_dataset),
        "valid_rows": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "valid_from": str(valid_from) if valid_from is not None else None,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else None,
        "train_tokens": tokens["count"],
        "final": _final_values(trainer.state.log_history),
        "curve": _curve(trainer.state.log_history),
        # The trainer's log without its timings (those vary between identical runs: run.json).
        "log_history": [{k: v for k, v in entry.items() if not k.endswith(TIMING_SUFFIXES)}
                        for entry in trainer.state.log_history],
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    # Tokens and seconds of this call's steps only (a resumed run counts from the checkpoint).
    write_run_facts(out, tokens_per_second=tokens["count"] / train_seconds if train_seconds > 0 else None,
                    train_runtime_s=train_seconds, wall_time_s=wall, peak_memory_mb=peak.mb,
                    peak_memory_kind=peak.kind, log_history=trainer.state.log_history)
    shutil.rmtree(checkpoints, ignore_errors=True)


def _save_adapter(model: PeftModel, tokenizer, folder: Path, base: Path) -> None:
    """Save the trained ("default") adapter alone, pointing at the base folder by absolute path."""
    # DPO holds a frozen "ref" copy next to it; a served student is base + this one adapter.
    model.save_pretrained(folder, selected_adapters=["default"])
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(Path(base).resolve())
    # peft writes target_modules in set order, which changes with each process's string hashing:
    # sorted, a stage run again writes the same bytes (and leaves the stages after it cached).
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)


def _count_training_tokens(trainer) -> dict:
    """Count the real tokens of every training batch by wrapping `trainer.training_step`."""
    counter = {"count": 0}
    step = trainer.training_step

    def counting_step(model, inputs, num_items_in_batch=None):
        counter["count"] += sum(int(inputs[k].sum()) for k in TOKEN_MASKS if k in inputs)
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = counting_step
    return counter


class _PeakMemory:
    """Peak memory while training: CUDA allocated on a GPU, else the process's peak RSS.

    On CPU the kernel's high-water mark (VmHWM) is reset on entry through /proc/self/clear_refs,
    so the number is this training run's peak, not the process's lifetime peak. It covers the
    whole process: other tasks running in threads of the same process are included.
    """

    def __init__(self, device: str):
        self.device, self.mb, self.kind = device, None, None

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # not Linux: ru_maxrss below is then the lifetime peak
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.mb, self.kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
            return False
        try:
            status = Path("/proc/self/status").read_text()
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            self.mb, self.kind = kb / 1024, "process_peak_rss"
        except (OSError, StopIteration):
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.kind = "process_lifetime_peak_rss"
        return False


def _curve(history: list[dict]) -> list[dict]:
    """One row per logged step with train/valid loss and reward accuracy (where logged)."""
    by_step: dict[int, dict] = {}
    for entry in history:
        row = by_step.setdefault(entry["step"], {"step": entry["step"]})
        row.update({CURVE_KEYS[k]: v for k, v in entry.items() if k in CURVE_KEYS})
    return [by_step[step] for step in sorted(by_step)]


def _final_values(history: list[dict]) -> dict:
    """The last logged value of each curve key."""
    final = {}
    for row in _curve(history):
        final.update({k: v for k, v in row.items() if k != "step"})
    return final
