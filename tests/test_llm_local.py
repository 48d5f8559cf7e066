"""The `local` provider: batching, sampling, token counts, adapters and the cache.

Most tests use a tiny random Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer, saved as
an ordinary Hugging Face folder, so they exercise exactly the code path of a real model in a
fraction of a second; the repetition controls use one with milder weights that loops (`loopy`).
Two tests run the embedded SmolLM2 for a few tokens.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm import load_chat_model
from recxplain.llm.local import (
    adapter_hash,
    batch_order,
    identity,
    load_local_model,
    prompt_token_ids,
    sample_tokens,
    sentence_end_ids,
    shared_prefixes,
)
from recxplain.models import resolve_model
from recxplain.text import cut_at_repeated_sentence

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)
SAMPLED = SamplingConfig(temperature=0.5, top_p=0.9, max_new_tokens=10, seed=3)
PROMPTS = [
    [{"role": "user", "content": "Why Fargo?"}],
    [{"role": "system", "content": "You explain movie recommendations."},
     {"role": "user", "content": "I liked Heat and Casino, rated 5/5. Why would I like Goodfellas, a crime drama?"}],
    [{"role": "user", "content": "Toy Story, Babe and Balto: what do they share?"}],
]


def random_llama(folder: Path, initializer_range: float) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer and chat template, saved in `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", ARTIFACTS))
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         initializer_range=initializer_range, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # peaked logits: no float-noise ties, and the nucleus fits the top 256
    return random_llama(tmp_path_factory.mktemp("tiny-llama"), initializer_range=0.5)


@pytest.fixture(scope="module")
def loopy(tmp_path_factory) -> Path:
    """Milder weights: greedy answers say the same word-pieces again and again, as small models loop."""
    return random_llama(tmp_path_factory.mktemp("loopy-llama"), initializer_range=0.1)


@pytest.fixture(scope="module")
def loopy_ends_early(loopy, tmp_path_factory) -> Path:
    """`loopy` that also ends its answer after any word starting with "s": rows leave the batch at
    different steps, so the batch is compacted mid-answer."""
    folder = tmp_path_factory.mktemp("loopy-ends-early")
    shutil.copytree(loopy, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words_with_s = [i for i, piece in enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
                    if piece.startswith(" s")]
    config = GenerationConfig.from_pretrained(folder)
    config.eos_token_id = [tokenizer.eos_token_id] + words_with_s
    config.save_pretrained(folder)
    return folder


def tiny_cfg(folder: Path, **changes) -> LLMConfig:
    return LLMConfig(**({"model": str(folder), "dtype": "float32", "batch_size": 8, "device": "cpu"} | changes))


def texts(outs) -> list[list[str]]:
    return [[g.text for g in samples] for samples in outs]


def test_sample_tokens_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # top_p 0.7: the nucleus is {0, 1} (0.5 < 0.7, then 0.8 crosses it), renormalised to 0.625 / 0.375.
    for u, token in [(0.0, 0), (0.6, 0), (0.63, 1), (0.999, 1)]:
        for k in (4, 2, 1):  # 1: the top-1 mass 0.5 < 0.7 takes the exact full-vocabulary path
            assert sample_tokens(logits, 1.0, 0.7, torch.tensor([u]), top_k=k).item() == token
    # top_p 1 keeps all four tokens; u = 0.96 lands in the last 5%.
    assert sample_tokens(logits, 1.0, 1.0, torch.tensor([0.96])).item() == 3
    # temperature 2 flattens to sqrt(p) / sum: 0.379, 0.294, 0.208, 0.120; top_p 0.7 keeps 3 tokens
    # (mass before the third: 0.673 < 0.7), renormalised cdf 0.431, 0.764, 1.0.
    assert sample_tokens(logits, 2.0, 0.7, torch.tensor([0.75])).item() == 1
    assert sample_tokens(logits, 2.0, 0.7, torch.tensor([0.77])).item() == 2
    # rows are independent
    both = sample_tokens(torch.cat([logits, logits.flip(-1)]), 1.0, 0.7, torch.tensor([0.0, 0.0]))
    assert both.tolist() == [0, 3]


def test_batched_greedy_equals_one_at_a_time_and_plain_generate(tiny):
    model = load_chat_model(tiny_cfg(tiny), ARTIFACTS)
    batched = model.generate(PROMPTS, GREEDY)
    for prompt, samples in zip(PROMPTS, batched):
        [[alone]] = load_chat_model(tiny_cfg(tiny, batch_size=1), ARTIFACTS).generate([prompt], GREEDY)
        assert samples[0].text == alone.text and samples[0].completion_tokens == alone.completion_tokens
    # ... and both equal transformers' own greedy generate on the unpadded prompt.
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    reference = AutoModelForCausalLM.from_pretrained(tiny)
    for prompt, samples in zip(PROMPTS, batched):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = reference.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        assert samples[0].text == tokenizer.decode(new, skip_special_tokens=True).strip()
        assert samples[0].prompt_tokens == ids["input_ids"].shape[1]
        # a random model never says end-of-turn here: every answer uses the whole budget
        assert (samples[0].completion_tokens, samples[0].finish_reason) == (12, "length")
    assert model.usage["calls"] == 3 and model.usage["completion_tokens"] == 36
    assert model.usage["prompt_tokens"] == sum(g[0].prompt_tokens for g in batched)


def test_sample_i_is_reproducible_whatever_the_batch(tiny):
    alone = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(PROMPTS[:1], SAMPLED, n=3)
    mixed = load_chat_model(tiny_cfg(tiny, batch_size=4), ARTIFACTS).generate(PROMPTS, SAMPLED, n=3)
    assert texts(mixed)[0] == texts(alone)[0]  # batch size, neighbours and padding do not matter
    assert len(set(texts(alone)[0])) == 3  # three different samples
    again = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(PROMPTS, SAMPLED, n=3)
    assert texts(again) == texts(mixed)  # reruns reproduce
    other_seed = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(
        PROMPTS[:1], SAMPLED.model_copy(update={"seed": 4}), n=2)
    # sample i uses seed + i, so seed 4's sample 0 is seed 3's sample 1
    assert texts(other_seed)[0][0] == texts(alone)[0][1] and texts(other_seed)[0][1] == texts(alone)[0][2]
    # Samples of one prompt share its prefill in a batch; one at a time (batch 1) they cannot.
    one_by_one = load_chat_model(tiny_cfg(tiny, batch_size=1), ARTIFACTS).generate(PROMPTS[:1], SAMPLED, n=3)
    assert texts(one_by_one) == texts(alone)


def test_shared_prefixes_hand_made():
    a = [1, 2, 3, 4, 5, 6, 7, 8]
    prompts = [a + [9, 9], [5, 5, 5], a + [7], a + [9, 8, 1], [1, 2, 9, 9, 9, 9, 9, 9, 9, 9], a + [9, 9]]
    group, prefix = shared_prefixes(prompts)
    # a + ... share 8 tokens (>= half of the shortest, 9); [1, 2, 9...] shares only 2 of 10
    assert group[0] == group[2] == group[3] == group[5] and prefix[group[0]] == 8
    assert len(set(group)) == 3
    # alone, a prompt's "prefix" is all but its last token; identical prompts share as much
    assert prefix[group[1]] == 2 and prefix[group[4]] == 9
    assert shared_prefixes([a, a]) == ([0, 0], [7])
    # a prefix never swallows the shortest prompt's last token
    assert shared_prefixes([a, a + [1]]) == ([0, 0], [7])
    # the batch order keeps a group together, longest groups first
    order = batch_order(prompts)
    assert order[:4] == [3, 0, 5, 2] or sorted(order[:4]) == [0, 2, 3, 5]
    assert order[4] == 4 and order[5] == 1


JUDGE_LIKE = [
    [{"role": "system", "content": "You compare two explanations of one recommendation and answer in JSON."},
     {"role": "user", "content": "Evidence: the user rated Heat 5/5, Casino 4/5 and Goodfellas 5/5; Heat and "
                                 "Ronin share Robert De Niro; Heat is a crime thriller like Ronin.\n" + tail}]
    for tail in ("Option A: because of Heat. Option B: because of De Niro.",
                 "Option A: because of De Niro. Option B: because of Heat.",
                 # a long rest: shorter prompts of the batch then have nothing to read before it
                 "Option A: crime. Option B: thrillers with heists and a long ending about the city at night, "
                 "two men on either side of the law, a diner scene, a bank robbery that goes wrong, a chase "
                 "through the streets of Los Angeles and a final shoot-out at the airport under the lights.")
]


def test_shared_starts_answer_as_read_alone(tiny):
    """Judge-like prompts share their evidence; a batch reads it once, next to a prompt that
    shares nothing and one sampled twice, and every answer is the one its prompt gets alone."""
    prompts = JUDGE_LIKE + PROMPTS
    batched = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(prompts, GREEDY)
    for prompt, samples in zip(prompts, batched):
        [[alone]] = load_chat_model(tiny_cfg(tiny, batch_size=1), ARTIFACTS).generate([prompt], GREEDY)
        assert samples[0].text == alone.text and samples[0].prompt_tokens == alone.prompt_tokens
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    group, prefix = shared_prefixes([prompt_token_ids(tokenizer, p) for p in prompts])
    assert group[0] == group[1] == group[2] and prefix[group[0]] > 40  # the evidence was shared
    ids = [prompt_token_ids(tokenizer, p) for p in prompts]
    assert max(len(i) - prefix[group[0]] for i in ids[:3]) > min(map(len, ids))  # a row with no first read
    sampled = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(prompts, SAMPLED, n=2)
    one_by_one = load_chat_model(tiny_cfg(tiny, batch_size=1), ARTIFACTS).generate(prompts, SAMPLED, n=2)
    assert texts(sampled) == texts(one_by_one)


def test_cache_second_run_makes_zero_calls(tiny, tmp_path):
    cache = tmp_path / "cache.sqlite"
    first = load_chat_model(tiny_cfg(tiny), ARTIFACTS, cache_path=cache).generate(PROMPTS, SAMPLED, n=2)
    model = load_chat_model(tiny_cfg(tiny), ARTIFACTS, cache_path=cache)
    second = model.generate(PROMPTS, SAMPLED, n=2)
    assert texts(second) == texts(first) and all(g.cached for s in second for g in s)
    assert [[g.completion_tokens for g in s] for s in second] == [[g.completion_tokens for g in s] for s in first]
    assert model.usage["calls"] == 0 and model.usage["cache_hits"] == 6
    # a different dtype is a different model
    model = load_chat_model(tiny_cfg(tiny, dtype="bfloat16"), ARTIFACTS, cache_path=cache)
    model.generate(PROMPTS[:1], SAMPLED)
    assert model.usage["calls"] == 1


def test_adapter_is_merged_hashed_and_matches_peft(tiny, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    # init_lora_weights=False: random A and B, so the adapter changes the answers
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    with_adapter = load_chat_model(tiny_cfg(tiny, adapter=adapter), ARTIFACTS).generate(PROMPTS, GREEDY)
    without = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(PROMPTS, GREEDY)
    assert texts(with_adapter) != texts(without)
    # merged weights answer like the unmerged peft model
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), adapter).eval()
    ids = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = unmerged.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert (
        with_adapter[1][0].text
        == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    )
    # the cache key follows the adapter's content, not its folder name
    before = adapter_hash(adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert adapter_hash(adapter) != before
    with pytest.raises(Exception, match="adapter_config.json"):
        adapter_hash(tmp_path)


def test_auto_dtype_is_resolved_before_it_names_the_cache():
    auto = identity(LLMConfig(device="cpu"))
    assert auto["dtype"] in ("float32", "bfloat16")
    assert auto == identity(LLMConfig(device="cpu", dtype=auto["dtype"]))  # same answers, same cache entries


def test_models_load_once_per_process(tiny):
    first = load_local_model(tiny, None, "float32", "cpu")
    assert load_local_model(Path(str(tiny) + "/"), None, "float32", "cpu") is first
    assert load_local_model(tiny, None, "bfloat16", "cpu") is not first
    assert next(load_local_model(tiny, None, "bfloat16", "cpu")[0].parameters()).dtype == torch.bfloat16


def test_bad_prompts_name_the_prompt(tiny):
    model = load_chat_model(tiny_cfg(tiny), ARTIFACTS)
    with pytest.raises(ValueError, match="prompt 1, message 0"):
        model.generate([PROMPTS[0], [{"role": "robot", "content": "hi"}]], GREEDY)
    with pytest.raises(ValueError, match="prompt 0"):
        model.generate(["just a string"], GREEDY)
    assert model.generate([], GREEDY) == []


def test_embedded_smollm2_stops_at_end_of_turn():
    """The real model in bf16: a short answer ends with <|im_end|>, counted as a completion token."""
    model = load_chat_model(LLMConfig(device="cpu"), ARTIFACTS)
    prompts = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
               [{"role": "user", "content": "Name a famous movie about a shark."}]]
    outs = model.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=8))
    capital = outs[0][0]
    assert "Paris" in capital.text and capital.finish_reason == "stop"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", ARTIFACTS))
    assert capital.completion_tokens == len(tokenizer(capital.text, add_special_tokens=False)["input_ids"]) + 1
    assert math.isclose(capital.latency_s, outs[1][0].latency_s)  # one batch, one wall time


class AnswerOnly(LogitsProcessor):
    """A transformers logits processor fed the answer's tokens only (the contract of our loop)."""

    def __init__(self, processor: LogitsProcessor, prompt_length: int):
        self.processor, self.prompt_length = processor, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.processor(input_ids[:, self.prompt_length:], scores)


def reference_ids(folder: Path, prompt: list[dict], max_new_tokens: int, processor: LogitsProcessor | None = None,
                  **options) -> list[int]:
    """transformers' own greedy generate: the answer's token ids, `processor` seeing the answer only."""
    model, tokenizer = load_local_model(folder, None, "float32", "cpu")
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    length = ids["input_ids"].shape[1]
    processors = LogitsProcessorList([AnswerOnly(processor, length)] if processor is not None else [])
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         logits_processor=processors, **options)
    return out[0, length:].tolist()


def repeated_ngrams(ids: list[int], n: int) -> int:
    grams = list(zip(*(ids[i:] for i in range(n))))
    return len(grams) - len(set(grams))


LOOP_GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=40)


def test_no_repeat_ngram_size_breaks_loops(loopy):
    tokenizer = AutoTokenizer.from_pretrained(loopy)
    plain = load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(PROMPTS, LOOP_GREEDY)
    controlled = load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(
        PROMPTS, LOOP_GREEDY.model_copy(update={"no_repeat_ngram_size": 2}))
    for prompt, [loop], [answer] in zip(PROMPTS, plain, controlled):
        looping = reference_ids(loopy, prompt, 40)
        assert repeated_ngrams(looping, 2) > 0  # left alone, the model repeats itself ...
        assert loop.text == tokenizer.decode(looping, skip_special_tokens=True).strip()
        ids = reference_ids(loopy, prompt, 40, NoRepeatNGramLogitsProcessor(2))
        assert repeated_ngrams(ids, 2) == 0  # ... and with the control, no 2-gram comes twice
        assert answer.text == tokenizer.decode(ids, skip_special_tokens=True).strip() != loop.text
        assert (answer.completion_tokens, answer.finish_reason) == (40, "length")


def test_repetition_penalty_spares_the_prompt(loopy):
    """The penalty changes greedy answers, hits the answer's own tokens only: the prompt's word-pieces
    stay free to copy (transformers' `repetition_penalty` penalises them too)."""
    copying = [{"role": "user", "content": "traffic traffic traffic pesticides"}]  # the answer copies "pesticides"
    prompts = PROMPTS + [copying]
    tokenizer = AutoTokenizer.from_pretrained(loopy)
    plain = load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(prompts, LOOP_GREEDY)
    penalised = load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(
        prompts, LOOP_GREEDY.model_copy(update={"repetition_penalty": 1.5}))
    for prompt, [loop], [answer] in zip(prompts, plain, penalised):
        ids = reference_ids(loopy, prompt, 40, RepetitionPenaltyLogitsProcessor(1.5))
        assert answer.text == tokenizer.decode(ids, skip_special_tokens=True).strip() != loop.text
    prompt_ids = set(prompt_token_ids(tokenizer, copying))
    assert prompt_ids & set(ids)  # the answer copies a piece of its prompt ...
    assert reference_ids(loopy, copying, 40, repetition_penalty=1.5) != ids  # ... which a prompt penalty changes


def test_controls_sample_the_same_alone_or_in_a_batch(loopy, loopy_ends_early):
    # temperature 0.2: `loopy`'s flatter logits would otherwise let float noise (padding) flip samples
    plain = SAMPLED.model_copy(update={"max_new_tokens": 24, "temperature": 0.2})
    controls = plain.model_copy(update={"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "stop_on_repeat": True})
    prompts = PROMPTS + JUDGE_LIKE
    mixed = load_chat_model(tiny_cfg(loopy_ends_early, batch_size=4), ARTIFACTS).generate(prompts, controls, n=3)
    alone = load_chat_model(tiny_cfg(loopy_ends_early), ARTIFACTS).generate(prompts[:1], controls, n=3)
    assert texts(alone)[0] == texts(mixed)[0]
    one_by_one = load_chat_model(tiny_cfg(loopy_ends_early, batch_size=1), ARTIFACTS).generate(prompts, controls, n=3)
    assert texts(one_by_one) == texts(mixed)
    # Rows ended at different steps, so batches were compacted mid-answer (the answer tokens too).
    steps = [g.completion_tokens for samples in mixed for g in samples]
    assert min(steps) < 12 and max(steps) == 24 and len(set(steps)) > 3
    # ... and the controls were in effect.
    assert texts(load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(PROMPTS, plain, n=3)) != \
        texts(load_chat_model(tiny_cfg(loopy), ARTIFACTS).generate(PROMPTS, controls, n=3))


def test_embedded_smollm2_stops_at_a_repeated_sentence():
    """SmolLM2 loops when asked to copy a loop; `stop_on_repeat` ends the answer at the first repeated
    sentence: the same text as cutting the whole answer, fewer tokens."""
    model = load_chat_model(LLMConfig(device="cpu"), ARTIFACTS)
    prompts = [[{"role": "user", "content": "Copy this text exactly: We recommend Fargo. We recommend Fargo. "
                                            "We recommend Fargo. We recommend Fargo."}],
               [{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    [[whole], [capital]] = model.generate(prompts, greedy)
    [[cut], [same]] = model.generate(prompts, greedy.model_copy(update={"stop_on_repeat": True}))
    assert cut_at_repeated_sentence(whole.text) != whole.text  # the model looped ...
    assert cut.text == cut_at_repeated_sentence(whole.text) and cut.finish_reason == "stop"  # ... and was cut
    assert cut.completion_tokens < whole.completion_tokens  # it stopped early
    assert (same.text, same.completion_tokens) == (capital.text, capital.completion_tokens)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", ARTIFACTS))
    ends = sentence_end_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids(".") in ends and tokenizer.convert_tokens_to_ids("Ġthe") not in ends


TEACHER_LIKE = [
    [{"role": "system", "content": "You write short movie recommendations from facts."},
     {"role": "user", "content": "Facts: you rated Heat 5/5. Why Ronin?"},
     {"role": "assistant", "content": "You rated Heat 5/5, and Ronin is a crime thriller like it."},
     {"role": "user", "content": f"Facts: {facts} Why {movie}?"}]
    for facts, movie in (
        ("you rated Babe 4/5, Toy Story 5/5, Pocahontas 3/5, Aladdin 4/5, The Lion King 5/5, Dumbo 2/5, "
         "Mulan 4/5, Hercules 3/5, Tarzan 4/5, Bambi 5/5 and Cinderella 3/5; all are animated films.", "Balto"),
        ("you rated Casino 5/5, Fargo 3/5, Heat 5/5, Scarface 4/5, The Godfather 5/5, Donnie Brasco 4/5, "
         "Carlito's Way 4/5, Mean Streets 3/5 and Chinatown 5/5; people who liked them liked crime.", "Goodfellas"),
        ("you rated Star Wars 5/5, Alien 4/5, Aliens 5/5, Blade Runner 5/5, Brazil 3/5, Dune 2/5, Tron 3/5, "
         "The Terminator 4/5, Total Recall 4/5 and RoboCop 3/5; all of them are science fiction.", "Gattaca"))
]


def test_batch_start_read_once(tiny, monkeypatch):
    """Prompts that share only a worked example (too short a share of each prompt to group them:
    `shared_prefixes`) read it once, in a first
    one-row read, and every answer, greedy or sampled, is the one its prompt gets alone."""
    model, tokenizer = load_local_model(tiny, None, "float32", "cpu")
    assert len(set(shared_prefixes([prompt_token_ids(tokenizer, p) for p in TEACHER_LIKE])[0])) == 3
    widths = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: widths.append(tuple(kw["input_ids"].shape)) or forward(**kw))
    batched = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(TEACHER_LIKE, GREEDY)
    assert widths[0][0] == 1 and widths[0][1] > 30  # the system message and the example, one row
    assert widths[1][0] == len(TEACHER_LIKE)
    sampled = load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(TEACHER_LIKE, SAMPLED, n=2)
    for prompt, samples in zip(TEACHER_LIKE, batched):
        [[alone]] = load_chat_model(tiny_cfg(tiny, batch_size=1), ARTIFACTS).generate([prompt], GREEDY)
        assert samples[0].text == alone.text and samples[0].prompt_tokens == alone.prompt_tokens
    monkeypatch.setattr("recxplain.llm.local.BATCH_START_TOKENS", math.inf)
    widths.clear()
    assert texts(load_chat_model(tiny_cfg(tiny), ARTIFACTS).generate(TEACHER_LIKE, SAMPLED, n=2)) == texts(sampled)
    assert widths[0][0] == len(TEACHER_LIKE)  # without it, every prompt reads the example
