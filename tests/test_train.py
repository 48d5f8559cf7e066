"""Student training (tasks/train.py, recxplain/training.py) on a tiny random Llama that reuses the
SmolLM2 tokenizer.

The toy task is learnable: every answer follows one template filled from the prompt, and the
rejected answers of the preference pairs are gibberish, so SFT/ORPO validation loss must fall
and DPO must learn to prefer the chosen answers. Each training run takes a few seconds on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Trainer
from trl import SFTConfig

from recxplain import training
from recxplain.config import LoraConfig, TrainingConfig
from recxplain.models import resolve_model
from tasks import train

REPO = Path(__file__).resolve().parents[1]
MOVIES = ["Toy Story", "Heat", "Fargo", "Casino", "Babe", "Clueless", "Jumanji", "Sabrina",
          "Balto", "Nixon", "Othello", "Now and Then", "Persuasion", "Sudden Death", "Dead Man",
          "Ransom", "Mallrats", "Twelve Monkeys", "Tom and Huck", "Screamers"]  # fmt: skip
SYSTEM = {"role": "system", "content": "You explain movie recommendations."}


def _prompt(i: int) -> list[dict]:
    liked, item = MOVIES[i % len(MOVIES)], MOVIES[(i * 7 + 3) % len(MOVIES)]
    return [SYSTEM, {"role": "user", "content": f"I liked {liked}. Why {item}?"}]


def _answer(i: int) -> str:
    liked, item = MOVIES[i % len(MOVIES)], MOVIES[(i * 7 + 3) % len(MOVIES)]
    return f"You liked {liked}, so {item} suits you."


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    file = path / ("sft.jsonl" if "messages" in rows[0] else "preferences.jsonl")
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_rows(n: int) -> list[dict]:
    return [
        {"messages": _prompt(i) + [{"role": "assistant", "content": _answer(i)}], "case_id": f"{i}-{i}"}
        for i in range(n)
    ]


def _preference_rows(n: int) -> list[dict]:
    return [
        {
            "prompt": _prompt(i),
            "chosen": [{"role": "assistant", "content": _answer(i)}],
            "rejected": [{"role": "assistant", "content": "zq xv " * (2 + i % 3)}],
            "case_id": f"{i}-{i}",
            "score_chosen": 4.0,
            "score_rejected": 1.0,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved with the SmolLM2 tokenizer and chat template."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", REPO / "artifacts"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(tiny_model: Path, **overrides) -> TrainingConfig:
    """The tiny model's training config; a trainer's section in `overrides` updates its fields."""
    settings = dict(
        base_model=str(tiny_model), lora=LoraConfig(r=8, alpha=16, dropout=0.0), batch_size=4,
        sft={"learning_rate": 3e-2, "max_steps": 12}, orpo={"learning_rate": 3e-2, "max_steps": 6},
        dpo={"learning_rate": 3e-2, "max_steps": 3},
        valid_fraction=0.2, eval_steps=100, save_steps=3, max_length=128, precision="fp32",
    )  # fmt: skip
    for trainer in ("sft", "orpo", "dpo"):
        overrides[trainer] = {**settings[trainer], **overrides.get(trainer, {})}
    return TrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "sft": _write_jsonl(root / "sft", _sft_rows(20)),
        "pairs": _write_jsonl(root / "pairs", _preference_rows(20)),
    }


@pytest.fixture(scope="module")
def sft_student(tiny_model, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    train.train_sft(out, training=_config(tiny_model, merge=True, eval_steps=6), sft=data["sft"], artifacts_dir=out)
    return out


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(_prompt(3), add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(**ids).logits


def test_sft_learns_and_exports(sft_student, tiny_model):
    report = json.loads((sft_student / "training.json").read_text())
    assert report["method"] == "sft" and report["steps"] == 12
    # 20 cases, 20% is 4: at least valid_min_cases (8) are held out, but at most a third (6)
    assert (report["train_rows"], report["valid_rows"]) == (14, 6)
    valid = [row["valid_loss"] for row in report["curve"] if "valid_loss" in row]
    assert [row["step"] for row in report["curve"] if "valid_loss" in row] == [0, 6, 12]
    assert valid[-1] < 0.6 * valid[0]  # the template is learnable
    facts = json.loads((sft_student / "run.json").read_text())  # timings live beside the content
    assert facts["tokens_per_second"] > 0 and facts["peak_memory_mb"] > 0
    assert not (sft_student / "checkpoints").exists()  # deleted once exported
    config = json.loads((sft_student / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert config["r"] == 8 and not (sft_student / "adapter" / "ref").exists()
    # peft's set order varies with the process's string hashing; the file must not
    assert len(config["target_modules"]) > 1 and config["target_modules"] == sorted(config["target_modules"])
    assert AutoTokenizer.from_pretrained(sft_student / "adapter").chat_template


def test_split_holds_out_whole_cases_at_least_min_cases_at_most_a_third():
    def sizes(n_cases: int, fraction: float, min_cases: int = 8) -> tuple[int, int]:
        rows = [{"case_id": f"{i}-1", "row": j} for i in range(n_cases) for j in range(2)]  # 2 rows a case
        train_rows, valid_rows = training.validation_split(rows, fraction, seed=0, min_cases=min_cases)
        assert not {r["case_id"] for r in train_rows} & {r["case_id"] for r in valid_rows}
        assert len(train_rows) + len(valid_rows) == len(rows)
        return len({r["case_id"] for r in train_rows}), len({r["case_id"] for r in valid_rows})

    assert sizes(100, 0.1) == (90, 10)  # the fraction, when it is above the minimum
    assert sizes(40, 0.1) == (32, 8)  # the minimum
    assert sizes(20, 0.2) == (14, 6)  # at most a third
    assert sizes(20, 0.2, min_cases=1) == (16, 4)
    assert sizes(2, 0.5) == (2, 0)  # too few cases to hold any out
    assert sizes(100, 0.0) == (100, 0)  # validation off
    rows = [{"case_id": f"{i}-1"} for i in range(40)]
    split = training.validation_split
    assert split(rows, 0.1, seed=1) == split(rows, 0.1, seed=1) != split(rows, 0.1, seed=2)


def test_completion_only_loss(tiny_model, data):
    """The SFT labels cover exactly the assistant answer (+ end of turn), not the prompt."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = training.sft_row(_sft_rows(1)[0], Path("x"), 1)
    trainer = training.plain_loss_sft_trainer()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=SFTConfig(output_dir="/tmp/unused", report_to="none", use_cpu=True, bf16=False),
        train_dataset=training.to_dataset([row]),
        processing_class=tokenizer,
    )
    example = trainer.train_dataset[0]
    answer = [label for label in example["labels"] if label != -100]
    assert tokenizer.decode(answer) == _answer(0) + "<|im_end|>\n"
    assert len(example["labels"]) == len(example["input_ids"]) > len(answer) + 10


def test_adapter_reloads_generates_and_matches_merged(sft_student):
    adapter = sft_student / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(sft_student / "merged").eval()
    assert AutoTokenizer.from_pretrained(sft_student / "merged").chat_template == tokenizer.chat_template
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(unmerged, tokenizer), atol=1e-4, rtol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    assert not torch.allclose(_logits(plain, tokenizer), _logits(unmerged, tokenizer), atol=1e-3)

    ids = tokenizer.apply_chat_template(_prompt(3), add_generation_prompt=True, return_tensors="pt", return_dict=True)
    new = merged.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1] :]
    assert len(new) >= 1 and tokenizer.decode(new, skip_special_tokens=True).strip()

    again = training.merge_adapter(adapter, sft_student / "merged-again")
    assert (
        load_file(again / "model.safetensors").keys() == load_file(sft_student / "merged" / "model.safetensors").keys()
    )


def test_orpo_learns_from_base(tiny_model, data, tmp_path):
    train.train_orpo(tmp_path, training=_config(tiny_model), preferences=data["pairs"], artifacts_dir=tmp_path)
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["method"] == "orpo" and report["steps"] == 6 and report["init"] is None
    evals = [row for row in report["curve"] if "valid_loss" in row]
    assert [row["step"] for row in evals] == [0, 6]  # before the first step and after the last
    assert evals[-1]["valid_loss"] < evals[0]["valid_loss"]
    assert evals[-1]["valid_reward_accuracy"] == 1.0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_two_dpo_rounds_continue_one_adapter(sft_student, tiny_model, data, tmp_path):
    students = [sft_student]
    for r in (1, 2):
        # Round 2 precomputes the reference log-probs once, round 1 computes them every step.
        config = _config(tiny_model, dpo={"precompute_ref_log_probs": r == 2})
        out = tmp_path / f"dpo_r{r}"
        out.mkdir()
        train.train_dpo(out, training=config, preferences=data["pairs"], init=students[-1], artifacts_dir=tmp_path)
        students.append(out)
        report = json.loads((out / "training.json").read_text())
        assert report["method"] == "dpo" and report["init"] == str(students[-2]) and report["steps"] == 3
        # Reference = the init student (a frozen copy of its adapter): policy == reference at
        # the start, so the first step's DPO loss is exactly log 2 (hence no validation before it).
        first = report["curve"][0]
        assert first["step"] == 1 and first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert "valid_loss" not in first
        assert report["final"]["valid_reward_accuracy"] == 1.0
        assert report["final"]["valid_loss"] < math.log(2)
        # Still ONE adapter on the same base, with the SFT adapter's LoRA shape, and it moved.
        before, after = _adapter_weights(students[-2]), _adapter_weights(out)
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        config_json = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert config_json["base_model_name_or_path"] == str(tiny_model.resolve())
        assert not (out / "adapter" / "ref").exists()
        sft_report = json.loads((sft_student / "training.json").read_text())
        assert report["trainable_parameters"] == sft_report["trainable_parameters"]  # "ref" stays frozen


def test_dpo_validated_on_another_folders_held_out_pairs_trains_on_every_pair(sft_student, tiny_model, data,
                                                                              tmp_path):
    # The round's own 9 pairs (one per case) all train; the validation rows are the held-out cases
    # of the other folder (the teacher's judged pairs, split as ORPO splits them).
    own = _write_jsonl(tmp_path / "round", _preference_rows(20)[:9])
    config = _config(tiny_model)
    out = tmp_path / "dpo"
    out.mkdir()
    train.train_dpo(out, training=config, preferences=own, init=sft_student, artifacts_dir=tmp_path,
                    validation=data["pairs"])
    report = json.loads((out / "training.json").read_text())
    held_out = training.validation_split(_preference_rows(20), config.valid_fraction, config.seed,
                                         config.valid_min_cases)[1]
    assert (report["rows"], report["train_rows"], report["valid_rows"]) == (9, 9, len(held_out)) and held_out
    assert report["valid_from"] == str(data["pairs"])
    assert "valid_loss" in report["final"]
    # Without it, the round holds out a third of its own cases.
    alone = tmp_path / "alone"
    alone.mkdir()
    train.train_dpo(alone, training=config, preferences=own, init=sft_student, artifacts_dir=tmp_path)
    report = json.loads((alone / "training.json").read_text())
    assert (report["train_rows"], report["valid_rows"], report["valid_from"]) == (6, 3, None)


def test_full_fine_tuning_sft_then_dpo(tiny_model, data, tmp_path):
    config = _config(tiny_model, lora=LoraConfig(enabled=False), sft={"learning_rate": 1e-3, "max_steps": 2},
                     dpo={"learning_rate": 1e-3, "max_steps": 2})
    sft_out, dpo_out = tmp_path / "sft", tmp_path / "dpo"
    sft_out.mkdir(), dpo_out.mkdir()
    train.train_sft(sft_out, training=config, sft=data["sft"], artifacts_dir=tmp_path)
    assert not (sft_out / "adapter").exists() and (sft_out / "merged" / "model.safetensors").exists()
    train.train_dpo(dpo_out, training=config, preferences=data["pairs"], init=sft_out, artifacts_dir=tmp_path)
    report = json.loads((dpo_out / "training.json").read_text())
    assert report["adapter"] is None and report["merged"] == "merged"
    assert report["trainable_parameters"] == sum(
        p.numel() for p in LlamaForCausalLM.from_pretrained(tiny_model).parameters()
    )
    # The reference is a frozen copy of the SFT model, so the first DPO loss is log 2.
    assert report["curve"][0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(FileNotFoundError, match="no adapter/ to continue"):
        train.train_dpo(tmp_path / "x", training=_config(tiny_model), preferences=data["pairs"], init=sft_out,
                        artifacts_dir=tmp_path)  # fmt: skip


class Crash(Exception):
    pass


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_model, data, tmp_path, monkeypatch):
    config = _config(tiny_model, sft={"max_steps": 6}, save_steps=3, valid_fraction=0.0)
    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    train.train_sft(reference, training=config, sft=data["sft"], artifacts_dir=tmp_path)

    # Crash right after the checkpoint at step 3 is written, as a kill would.
    save = Trainer._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.global_step == 3:
            raise Crash

    out = tmp_path / "interrupted"
    out.mkdir()
    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train.train_sft(out, training=config, sft=data["sft"], artifacts_dir=tmp_path)
    assert (out / "checkpoints" / "checkpoint-3").is_dir() and not (out / "training.json").exists()
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)

    train.train_sft(out, training=config, sft=data["sft"], artifacts_dir=tmp_path)
    report = json.loads((out / "training.json").read_text())
    assert report["resumed_from_step"] == 3 and report["steps"] == 6
    assert [row["step"] for row in report["curve"] if "train_loss" in row] == [1, 2, 3, 4, 5, 6]
    expected, resumed = _adapter_weights(reference), _adapter_weights(out)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key])


# --- bad input: clear errors before any training step -------------------------------------------


def _expect_error(tmp_path, tiny_model, kind: str, text: str, match: str, **overrides):
    folder = tmp_path / kind
    folder.mkdir()
    (folder / f"{kind}.jsonl").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        if kind == "sft":
            train.train_sft(out, training=_config(tiny_model, **overrides), sft=folder, artifacts_dir=tmp_path)
        else:
            train.train_orpo(out, training=_config(tiny_model, **overrides), preferences=folder, artifacts_dir=tmp_path)
    assert not any(out.iterdir())  # nothing trained, nothing written


def test_empty_preference_file(tmp_path, tiny_model):
    _expect_error(tmp_path, tiny_model, "preferences", "\n", r"preferences\.jsonl: no training rows")


def test_malformed_preference_line_is_named(tmp_path, tiny_model):
    good = json.dumps(_preference_rows(1)[0])
    _expect_error(tmp_path, tiny_model, "preferences", f"{good}\n{{oops\n", r"preferences\.jsonl:2: not valid JSON")


def test_preference_with_two_chosen_messages(tmp_path, tiny_model):
    row = _preference_rows(1)[0]
    row["chosen"] = row["chosen"] * 2
    _expect_error(tmp_path, tiny_model, "preferences", json.dumps(row), r":1: 'chosen' must hold exactly one")


def test_sft_row_without_answer(tmp_path, tiny_model):
    row = {"messages": _prompt(0), "case_id": "1-1"}
    _expect_error(tmp_path, tiny_model, "sft", json.dumps(row), r"sft\.jsonl:1: the last message must be")


def test_too_long_row_names_line_and_case(tmp_path, tiny_model):
    rows = _sft_rows(3)
    rows[2]["messages"][1]["content"] = "Why? " * 200
    text = "".join(json.dumps(r) + "\n" for r in rows)
    _expect_error(tmp_path, tiny_model, "sft", text, r"sft\.jsonl:3: case 2-2: .* over training\.max_length=128")


def test_tokenizer_without_chat_template(tmp_path, tiny_model):
    folder = tmp_path / "no-template"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    text = json.dumps(_sft_rows(1)[0])
    _expect_error(tmp_path, folder, "sft", text, r"no-template: the tokenizer has no chat template")


def test_zero_step_cap_is_rejected():
    with pytest.raises(ValueError, match="sft.max_steps"):
        TrainingConfig(sft={"max_steps": 0})


def test_old_flat_training_keys_move_to_their_trainer():
    with pytest.warns(FutureWarning, match="training.beta is now training.dpo.beta and training.orpo.beta"):
        config = TrainingConfig(sft_max_steps=5, learning_rate=1e-3, dpo_learning_rate=1e-4, beta=0.2,
                                dpo_sft_weight=1.0, dpo={"epochs": 2})
    assert (config.sft.max_steps, config.sft.learning_rate, config.orpo.learning_rate) == (5, 1e-3, 1e-3)
    assert (config.dpo.learning_rate, config.dpo.beta, config.orpo.beta, config.dpo.sft_weight) == (1e-4, 0.2, 0.2, 1.0)
    assert config.dpo.epochs == 2
    with pytest.raises(ValueError, match="training.sft_max_steps and training.sft.max_steps are both set"):
        TrainingConfig(sft_max_steps=5, sft={"max_steps": 3})


def test_orpo_likelihood_covers_the_chosen_answer_only(monkeypatch):
    """The ORPO student's likelihood term is the SFT loss on the chosen answer: prompt tokens
    (-100 in chosen_labels) and the padding up to the longer rejected answer are left out."""
    from trl.experimental.orpo import ORPOTrainer

    chosen_logits = torch.randn(2, 5, 11)  # already shifted: position t predicts token t + 1
    chosen_labels = torch.tensor([[-100, -100, 3, 4], [-100, 7, 8, 9]])
    monkeypatch.setattr(ORPOTrainer, "concatenated_forward",
                        lambda self, model, batch: ("chosen", "rejected", chosen_logits, "rejected logits", "trl nll"))
    trainer_class = training.answer_nll_orpo_trainer()
    trainer = object.__new__(trainer_class)
    trainer.is_encoder_decoder, trainer.aux_loss_enabled = False, True  # trl's forward: no packed pairs
    out = trainer_class.concatenated_forward(trainer, None, {"chosen_labels": chosen_labels})
    expected = torch.nn.functional.cross_entropy(chosen_logits[:, :3].reshape(-1, 11), chosen_labels[:, 1:].reshape(-1))
    assert out[:4] == ("chosen", "rejected", chosen_logits, "rejected logits")
    assert out[4].item() == pytest.approx(expected.item())
    # three answer tokens are scored, not the prompt's
    assert expected.item() != pytest.approx(torch.nn.functional.cross_entropy(
        chosen_logits[:, :3].reshape(-1, 11), torch.tensor([[0, 3, 4], [7, 8, 9]]).reshape(-1)).item())


def test_dpo_with_the_chosen_answers_likelihood(sft_student, tiny_model, data, tmp_path):
    """dpo.sft_weight adds the chosen answer's NLL to the DPO loss (RPO): at step 1 the DPO part
    is exactly log 2 (policy == reference), so the loss is log 2 plus a positive NLL."""
    config = _config(tiny_model, dpo={"sft_weight": 1.0, "max_steps": 1}, valid_fraction=0.0)
    train.train_dpo(tmp_path, training=config, preferences=data["pairs"], init=sft_student, artifacts_dir=tmp_path)
    first = json.loads((tmp_path / "training.json").read_text())["curve"][0]
    assert first["step"] == 1 and first["train_loss"] > math.log(2) + 0.01


def _pair_rows(tokenizer, pairs: list[tuple[list[dict], str, str]]):
    """trl-shaped rows: prompt + answer token ids padded at the end, labels -100 outside the answer."""
    def rows(which):
        ids, labels = [], []
        for prompt, *answers in pairs:
            start = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            p = tokenizer(start, add_special_tokens=False)["input_ids"]
            a = tokenizer(answers[which] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, ids)) + 2  # padding after every row
        return (torch.tensor([r + [0] * (width - len(r)) for r in ids]),
                torch.tensor([r + [-100] * (width - len(r)) for r in labels]))
    return (*rows(0), *rows(1))


def _row_logps(model, ids, labels) -> list[torch.Tensor]:
    """Each answer's token log-probs from its own row (the plain way)."""
    out = []
    for row, lab in zip(ids, labels):
        real = int((lab != -100).nonzero().max()) + 1
        logits = model(input_ids=row[None, :real]).logits[0, :-1].log_softmax(-1)
        targets = row[1:real]
        keep = lab[1:real] != -100
        out.append(logits[keep].gather(1, targets[keep][:, None]).squeeze(1))
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_match_rows_read_alone(tiny_model, attention):
    """ORPO's packed forward ([prompt][chosen][rejected] in one row) gives every answer token the
    log-prob, and the LoRA weights the gradient, of reading prompt + answer alone."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention),
                           PeftLoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    pairs = [(_prompt(i), _answer(i), "zq xv " * (1 + i)) for i in range(3)]
    pairs[1] = (pairs[1][0], "A much longer chosen answer than the rejected one, " * 3, "No.")
    c_ids, c_lab, r_ids, r_lab = _pair_rows(tokenizer, pairs)

    chosen, rejected, chosen_logits, _ = training.packed_pair_logps(model, c_ids, c_lab, r_ids, r_lab)
    (torch.cat(chosen).sum() - torch.cat(rejected).sum()).backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    alone_c, alone_r = _row_logps(model, c_ids, c_lab), _row_logps(model, r_ids, r_lab)
    (torch.cat(alone_c).sum() - torch.cat(alone_r).sum()).backward()

    assert chosen_logits.shape == (sum(len(c) for c in chosen), len(tokenizer))
    for packed, alone in zip(chosen + rejected, alone_c + alone_r):
        assert packed.shape == alone.shape and torch.allclose(packed, alone, atol=1e-5)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(packed_grads[name], parameter.grad, rtol=1e-4, atol=1e-4), name
    # a pair whose two rows do not start with the same prompt is left to trl's forward
    r_ids[0, 3] += 1
    assert training.packed_pair_logps(model, c_ids, c_lab, r_ids, r_lab) is None


def test_answer_token_loss_is_the_models_own_loss(tiny_model):
    """The SFT loss with the LM head on the answer positions only equals transformers' loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids, labels, _, _ = _pair_rows(tokenizer, [(_prompt(i), _answer(i), "x") for i in range(3)])
    mask = (ids != 0).long()
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert training.answer_token_loss(model, ids, mask, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    n = int((labels[:, 1:] != -100).sum())
    assert training.answer_token_loss(model, ids, mask, labels, torch.tensor(2 * n)).item() == pytest.approx(
        expected.item() / 2, rel=1e-5)


def test_dpo_reads_each_prompt_once_with_trls_numbers(tiny_model, monkeypatch):
    """The DPO forward that packs each pair ([prompt][chosen][rejected]) returns what trl's fused
    LM head returns on [chosen rows; rejected rows]: log-probs, entropy, mean logits, top-1 hits
    at the answer positions (zeros elsewhere), and the same LoRA gradients."""
    from types import SimpleNamespace

    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    torch.manual_seed(0)
    model = get_peft_model(
        base, PeftLoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    pairs = [(_prompt(i), _answer(i), "zq xv " * (1 + i)) for i in range(3)]
    c_ids, c_lab, r_ids, r_lab = _pair_rows(tokenizer, pairs)
    width = max(c_ids.shape[1], r_ids.shape[1])
    pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
    ids, labels = torch.cat([pad(c_ids, 0), pad(r_ids, 0)]), torch.cat([pad(c_lab, -100), pad(r_lab, -100)])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels, "fused_lm_head": True,
             "use_cache": False}

    def run():
        model.zero_grad()
        out = model(**batch)
        out.log_probs.sum().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    trl_out, trl_grads = run()
    training.read_dpo_prompts_once(SimpleNamespace(model=model, ref_model=None, use_weighting=False))
    packed_rows = []
    monkeypatch.setattr(training, "packed_pair_hidden", lambda *a, read=training.packed_pair_hidden: packed_rows.append(
        len(a[1])) or read(*a))
    packed_out, packed_grads = run()
    assert packed_rows == [3]  # one packed row per pair, not trl's six
    for field in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(packed_out, field), getattr(trl_out, field), atol=1e-4), field
    assert torch.equal(packed_out.is_top1, trl_out.is_top1)
    assert (packed_out.log_probs != 0).sum() == (labels[:, 1:] != -100).sum()
    for name, grad in trl_grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=1e-4, atol=1e-4), name


def test_an_old_training_key_override_wins_over_the_files_new_key():
    from recxplain.config import load_config

    with pytest.warns(FutureWarning, match="training.dpo_max_steps is now training.dpo.max_steps"):
        config = load_config(Path(__file__).parents[1] / "configs" / "default.yaml", ["training.dpo_max_steps=5"])
    assert config.training.dpo.max_steps == 5
