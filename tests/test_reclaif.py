"""RecLAIF (tasks/reclaif/, recxplain/reclaif/): candidate sampler, answer parser, metrics, judge, evaluation table.

Toy data: 14 users x 40 movies with hand-made titles; the recommender is item-KNN through the
real train_recommender stage. Models are scripted (tests/scripted.py) so that OUR parsing and
verdict logic is tested on known answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recxplain.config import (
    JudgeConfig,
    ReclaifAnswerConfig,
    ReclaifCandidatesConfig,
    ReclaifEvaluationConfig,
    RecommenderConfig,
)
from recxplain.prompts import read_templates
from recxplain.reclaif import CandidateSet, read_candidate_sets
from recxplain.reclaif.answers import (
    answer_scores,
    genre_diversity,
    parse_recommendation,
    ranking_values,
    recommend_messages,
    template_answer,
)
from recxplain.reclaif.evaluation import summarise
from recxplain.reclaif.judge import judge_recommendation_pairs
from recxplain.reclaif.sampling import draw_candidates, negative_order
from recxplain.schemas import Movie
from tasks.reclaif.candidates import build_candidate_sets
from tasks.reclaif.evaluate import reclaif_evaluate
from tasks.recommend import train_recommender
from tests.scripted import ScriptedModel

GENRES = ["Drama", "Comedy", "Action", "Horror"]


def movie(i: int, title: str | None = None, year: int = 1990, genres: list[str] | None = None) -> Movie:
    return Movie(item_id=i, title=title or f"Movie Number {i}", year=year, genres=genres or [GENRES[i % 4]])


# ---------------------------------------------------------------------------------------------
# Toy data folder + recommender


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reclaif")
    data, rec = root / "data", root / "rec"
    data.mkdir(), rec.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for user in range(1, 15):
        items = rng.choice(np.arange(1, 41), size=12, replace=False)
        for t, item in enumerate(items):
            split = "train" if t < 10 else ("valid" if t == 10 else "test")
            rows.append((user, int(item), 4.0, 1000 * user + t, split))
    pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "timestamp", "split"], orient="row").with_columns(
        pl.col("timestamp").cast(pl.Int64)).write_parquet(data / "interactions.parquet")
    titles = {i: f"Movie Number {i}" for i in range(1, 41)}
    titles[7] = "The Godfather"
    titles[8] = "Star Trek: The Motion Picture"
    titles[9] = "Star Trek: Generations"
    titles[10] = "Movie Number 7"  # a second title spelled like an id: candidate titles must differ
    pl.DataFrame({"item_id": list(titles), "title": list(titles.values()), "year": [1990] * 40,
                  "genres": [[GENRES[i % 4]] for i in titles]}).write_parquet(data / "items.parquet")
    train_recommender(rec, recommender=RecommenderConfig(k=5, top_n=5, neighbours_per_item=3, sampled_negatives=5),
                      data=data)
    return {"data": data, "recommender": rec, "root": root}


def build(toy, name: str, **fields) -> list[CandidateSet]:
    out = toy["root"] / name
    out.mkdir()
    cfg = ReclaifCandidatesConfig(**({"train_users": 6, "eval_users": 5, "negatives": 9} | fields))
    build_candidate_sets(out, candidates=cfg, data=toy["data"], recommender=toy["recommender"])
    return read_candidate_sets(out)


# ---------------------------------------------------------------------------------------------
# Candidate sampler


def test_candidate_sets_hold_the_next_item_and_unseen_distinct_negatives(toy):
    sets = build(toy, "uniform")
    frame = pl.read_parquet(toy["data"] / "interactions.parquet")
    assert [s.split for s in sets] == ["eval"] * 5 + ["train"] * 6
    assert len({s.user_id for s in sets}) == 11  # train and eval users are disjoint
    for s in sets:
        mine = frame.filter(pl.col("user_id") == s.user_id)
        target_split = "test" if s.split == "eval" else "valid"
        assert s.target.item_id == mine.filter(pl.col("split") == target_split)["item_id"][0]
        ids = [c.item_id for c in s.candidates]
        assert len(ids) == 10 and s.target.item_id in ids
        negatives = set(ids) - {s.target.item_id}
        assert not negatives & set(mine["item_id"].to_list())  # never an item the user touched
        assert len({c.title.lower() for c in s.candidates}) == 10  # titles tell candidates apart
        history_split = ["train"] if s.split == "train" else ["train", "valid"]
        expected = mine.filter(pl.col("split").is_in(history_split)).sort("timestamp")["item_id"].to_list()[-10:]
        assert [m.item_id for m in s.history] == expected


def test_candidate_sets_are_deterministic_and_stable_per_user(toy):
    first, again = build(toy, "det1"), build(toy, "det2")
    assert [s.model_dump() for s in first] == [s.model_dump() for s in again]
    other_seed = build(toy, "det3", seed=12)
    assert [s.model_dump() for s in other_seed] != [s.model_dump() for s in first]
    # Fewer train users: the remaining users keep exactly the same sets.
    fewer = {s.set_id: s for s in build(toy, "det4", train_users=3)}
    for s in first:
        if s.set_id in fewer:
            assert fewer[s.set_id] == s


def test_negative_order_samplers():
    rng = np.random.default_rng(0)
    pool = np.arange(10)
    uniform = negative_order("uniform", pool, rng)
    assert sorted(uniform.tolist()) == list(range(10))
    # popularity: item 9 has weight 1001, the others 1: it comes first in almost every draw.
    popularity = np.array([0] * 9 + [1000])
    firsts = [negative_order("popularity", pool, np.random.default_rng(s), popularity=popularity)[0] for s in range(50)]
    assert firsts.count(9) >= 45
    # hard: the recommender's pool comes first (in random order), then the rest.
    hard = negative_order("hard", pool, rng, hard=np.array([7, 3]))
    assert set(hard[:2].tolist()) == {3, 7} and sorted(hard.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="unknown sampler"):
        negative_order("nope", pool, rng)


def test_draw_candidates_skips_title_clashes_and_the_target():
    titles = {1: "Heat", 2: "Heat", 3: "Big", 4: "heat", 5: "Fargo"}
    ids, drawn = draw_candidates(1, np.array([1, 2, 3, 4, 5]), titles, 3, np.random.default_rng(0))
    assert sorted(ids) == [1, 3, 5] and drawn == 2  # 2 and 4 share the target's title: short of 3


def test_hard_sampler_draws_from_the_recommenders_top(toy):
    from recxplain.recommenders import load_recommender, recommend

    sets = build(toy, "hard", sampler="hard", hard_pool=9)
    rec = load_recommender(toy["recommender"] / "model")
    frame = pl.read_parquet(toy["data"] / "interactions.parquet")
    for s in sets:
        seen = set(frame.filter(pl.col("user_id") == s.user_id)["item_id"].to_list())
        top = [i for i in recommend(rec, 40, user_ids=[s.user_id])["item_id"].to_list() if i not in seen][:9]
        negatives = {c.item_id for c in s.candidates} - {s.target.item_id}
        # 9 negatives drawn from a pool of the 9 best unseen items: all of it, but for a title clash
        # with the target (then one comes from the rest of the catalogue).
        assert len(negatives & set(top)) >= 8


# ---------------------------------------------------------------------------------------------
# Parser

CANDIDATES = [movie(1, "The Godfather", 1972, ["Crime", "Drama"]), movie(2, "Star Wars", 1977, ["Sci-Fi", "Action"]),
              movie(3, "Fargo", 1996, ["Crime", "Thriller"]), movie(4, "Star Trek: Generations", 1994, ["Sci-Fi"]),
              movie(5, "Star Trek: First Contact", 1996, ["Sci-Fi", "Action"]), movie(6, "Babe", 1995, ["Comedy"])]

GOOD = """Key Preferences:
- Preference 1: Crime dramas with strong characters
- Preference 2: Science fiction adventures

Recommended Movies (from most to least likely):
1. Fargo (1996) - A dark crime story with memorable characters.
2. Godfather, The - The classic crime family saga you will love.
3. Star Trek: First Contact (1996) - Space adventure with action and heart.

These picks balance crime and science fiction."""


def test_parser_exact_titles_in_any_common_form():
    parsed = parse_recommendation(GOOD, CANDIDATES, 3)
    assert parsed.valid, parsed.problems
    assert parsed.picks == [3, 1, 5]  # "Godfather, The" is The Godfather; the closing line is prose
    assert parsed.preferences == ["Crime dramas with strong characters", "Science fiction adventures"]
    assert parsed.reasons[0] == "A dark crime story with memorable characters."
    assert parsed.fuzzy == 0 and parsed.rank_of(1) == 2 and math.isinf(parsed.rank_of(6))


def test_parser_fuzzy_titles_and_markdown():
    text = ("**Key Preferences:**\n* Preference 1: Family comedies\n\n**Recommended Movies:**\n"
            "1. **Star Trek: Generatons** – a Trek movie\n2. [Babe (1995)] - talking pig\n3. The Godfathr: crime")
    parsed = parse_recommendation(text, CANDIDATES, 3)
    assert parsed.picks == [4, 6, 1] and parsed.fuzzy == 2 and parsed.valid
    # The threshold is a real bound: at 0.99 the misspellings are not candidates.
    strict = parse_recommendation(text, CANDIDATES, 3, fuzzy_threshold=0.99)
    assert strict.picks == [6] and not strict.valid
    assert strict.not_candidates == ["Star Trek: Generatons", "The Godfathr"]


def test_parser_invalid_non_candidates_and_format():
    text = GOOD.replace("Fargo (1996)", "Titanic (1997)")
    parsed = parse_recommendation(text, CANDIDATES, 3)
    assert parsed.picks == [1, 5] and parsed.not_candidates == ["Titanic (1997)"]
    assert not parsed.valid and any("Titanic" in p for p in parsed.problems)
    # The template's placeholders are not movies.
    placeholder = parse_recommendation("Key Preferences:\n- Preference 1: [Description]\n\nRecommended Movies:\n"
                                       "1. [Movie Title] - [Reason for Recommendation]", CANDIDATES, 3)
    assert placeholder.picks == [] and placeholder.preferences == [] and not placeholder.valid
    # No list heading and no preferences: the numbered titles still count for relevance.
    bare = parse_recommendation("1. Babe\n2. Fargo\n3. Star Wars", CANDIDATES, 3)
    assert bare.picks == [6, 3, 2] and len(bare.problems) == 2


def test_parser_duplicate_picks_and_count():
    text = GOOD.replace("Star Trek: First Contact (1996)", "Fargo")
    parsed = parse_recommendation(text, CANDIDATES, 3)
    assert parsed.picks == [3, 1] and parsed.duplicates == ["Fargo (1996)"]
    assert not parsed.valid and any("more than once" in p for p in parsed.problems)
    assert any("named 2 different" in p for p in parsed.problems)
    four = GOOD.replace("\n\nThese picks", "\n4. Babe - a pig.\n\nThese picks")
    assert parse_recommendation(four, CANDIDATES, 3).picks == [3, 1, 5, 6]
    assert not parse_recommendation(four, CANDIDATES, 3).valid
    # A "Star Trek" that could be either Star Trek candidate is not guessed.
    ambiguous = parse_recommendation(
        "Key Preferences:\n- sci-fi\nRecommended Movies:\n1. Star Trek - space", CANDIDATES, 1
    )
    assert ambiguous.picks == [] and ambiguous.not_candidates == ["Star Trek"]


def answer_naming(*lines: str) -> str:
    return (
        "Key Preferences:\n- Preference 1: crime\n- Preference 2: space\n\n"
        "Recommended Movies (from most to least likely):\n"
        + "\n".join(f"{i}. {line} - a reason of several words." for i, line in enumerate(lines, 1))
    )


@pytest.mark.parametrize("rank", [1, 2, 3, None])
def test_parser_and_scoring_with_the_next_movie_at_each_rank(rank):
    # The next movie is Fargo (3); the other picks are Babe (6) and Star Wars (2).
    cs = CandidateSet(set_id="eval-1", split="eval", user_id=1, history=[], candidates=CANDIDATES, target=CANDIDATES[2])
    others = ["Babe (1995)", "Star Wars (1977)", "Star Trek: Generations (1994)"]
    lines = others[:2] if rank else others
    if rank:
        lines.insert(rank - 1, "Fargo (1996)")
    parsed = parse_recommendation(answer_naming(*lines), CANDIDATES, 3)
    assert parsed.valid, parsed.problems
    expected = float(rank) if rank else math.inf
    assert parsed.rank_of(3) == expected
    values = ranking_values(parsed.rank_of(3), 3)
    assert values["Hit@1"] == float(rank == 1) and values["Hit@3"] == float(rank is not None)
    assert values["NDCG@3"] == pytest.approx(1 / math.log2(rank + 1) if rank else 0.0)
    assert values["Precision@3"] == pytest.approx(1 / 3 if rank else 0.0)
    assert answer_scores(parsed, answer_naming(*lines), cs, 3).relevance == pytest.approx(
        5 / math.log2(rank + 1) if rank else 0.0)
    # An invalid answer (a fourth pick that is no candidate) is scored on the candidates it named, in its order.
    broken = parse_recommendation(answer_naming(*lines, "Titanic (1997)"), CANDIDATES, 3)
    assert not broken.valid and broken.rank_of(3) == expected


def test_parser_candidates_named_by_number():
    # The prompt lists candidates without numbers, so "3", "#2" or "Candidate 5" names no
    # candidate: never mapped by position, counted against validity, and a miss ("#" is read as
    # markdown and dropped).
    parsed = parse_recommendation(answer_naming("3", "#2", "Candidate 5"), CANDIDATES, 3)
    assert parsed.picks == [] and not parsed.valid
    assert parsed.not_candidates == ["3 (a number, not a title)", "2 (a number, not a title)",
                                     "Candidate 5 (a number, not a title)"]
    assert math.isinf(parsed.rank_of(3)) and ranking_values(parsed.rank_of(3), 3)["Hit@3"] == 0.0
    # A bare number under the heading is a pick that names nothing, not prose.
    bare = parse_recommendation("Key Preferences:\n- crime\n\nRecommended Movies:\n3\n5\n1", CANDIDATES, 3)
    assert bare.picks == [] and len(bare.not_candidates) == 3
    # A number before the title is dropped and the title decides (not the number's position).
    numbered = parse_recommendation(answer_naming("[6] Fargo (1996)", "4) Babe (1995)", "2. Star Wars"), CANDIDATES, 3)
    assert numbered.valid and numbered.picks == [3, 6, 2], numbered.problems


def test_template_teacher_answers_parse_valid():
    cs = CandidateSet(set_id="train-1", split="train", user_id=1, candidates=CANDIDATES, target=CANDIDATES[2],
                      history=[movie(11, "Heat", 1995, ["Action", "Crime"]), movie(12, "Se7en", 1995, ["Crime"])])
    text = template_answer(cs, [3, 1, 2, 4, 5, 6], 3)
    assert "Preference 1: crime movies (2 of 2 watched)" in text
    assert "1. Fargo (1996) - Crime/Thriller, like Se7en." in text
    parsed = parse_recommendation(text, CANDIDATES, 3)
    assert parsed.valid and parsed.picks == [3, 1, 2]
    messages = recommend_messages(cs, ReclaifAnswerConfig(), read_templates("reclaif_recommend.j2"))
    assert (
        "- Star Trek: First Contact (1996)\n" in messages[-1]["content"] and "top 3 movies" in messages[-1]["content"]
    )


def test_template_teacher_sft_rows_carry_the_recommenders_order(toy, tmp_path):
    # The SFT rows are what the student learns to rank from: each answer's picks must be the
    # classic recommender's top k of its set, in its order, and stats.json says how often they
    # hold the next movie.
    from recxplain.recommenders import fit_recommender, read_interactions, score_candidates
    from tasks.reclaif.teacher import reclaif_template_teacher

    sets_dir, teacher = tmp_path / "sets", tmp_path / "teacher"
    sets_dir.mkdir(), teacher.mkdir()
    build_candidate_sets(sets_dir, candidates=ReclaifCandidatesConfig(train_users=8, eval_users=2, negatives=9),
                         data=toy["data"], recommender=toy["recommender"])
    recommender = RecommenderConfig(k=5, top_n=5, neighbours_per_item=3, sampled_negatives=5)
    reclaif_template_teacher(teacher, answer=ReclaifAnswerConfig(), recommender=recommender, candidates=sets_dir,
                             data=toy["data"], templates=read_templates("reclaif_recommend.j2"))
    sets = read_candidate_sets(sets_dir, "train")
    rec = fit_recommender(recommender, read_interactions(toy["data"]).filter(pl.col("split") == "train"))
    matrix = np.array([[c.item_id for c in cs.candidates] for cs in sets])
    scores = score_candidates(rec, [cs.user_id for cs in sets], matrix)
    rows = [json.loads(line) for line in (teacher / "sft.jsonl").read_text().splitlines()]
    ranks = []
    for cs, row, score, ids in zip(sets, rows, scores, matrix, strict=True):
        assert row["case_id"] == cs.set_id
        top = ids[np.argsort(-score, kind="stable")][:3].tolist()
        parsed = parse_recommendation(row["messages"][-1]["content"], cs.candidates, 3)
        assert parsed.valid and parsed.picks == top
        ranks.append(parsed.rank_of(cs.target.item_id))
    stats = json.loads((teacher / "stats.json").read_text())
    assert stats["next_movie_in_answer"] == pytest.approx(np.mean([r <= 3 for r in ranks]), abs=1e-4)
    assert sum(stats["next_movie_ranks"].values()) == sum(r <= 3 for r in ranks)


def test_parser_titles_with_markdown_characters():
    # Answer lines lose markdown stars; "M*A*S*H" must still be a candidate, written either way.
    candidates = [*CANDIDATES, movie(7, "M*A*S*H", 1970, ["Comedy", "War"])]
    for written in ("M*A*S*H (1970)", "MASH"):
        text = GOOD.replace("Star Trek: First Contact (1996)", written)
        parsed = parse_recommendation(text, candidates, 3)
        assert parsed.valid and parsed.picks == [3, 1, 7], (written, parsed.problems)


def test_template_answers_fit_the_students_token_budget(tmp_path):
    # The students imitate the template teacher; an answer longer than the configured
    # max_new_tokens is cut before its last pick and can never be valid. Checked on every
    # ml-100k user's train set with the default config's teacher and the SmolLM2 tokenizer.
    from transformers import AutoTokenizer

    from recxplain.config import load_config
    from recxplain.models import resolve_model
    from tasks.data import prepare_data
    from tasks.reclaif.teacher import reclaif_template_teacher

    cfg = load_config("configs/reclaif.yaml", [])
    budget = min(cfg.pairs.sampling.max_new_tokens, cfg.reclaif.evaluation.sampling.max_new_tokens)
    data, rec, sets, teacher = (tmp_path / name for name in ("data", "rec", "sets", "teacher"))
    for folder in (data, rec, sets, teacher):
        folder.mkdir()
    prepare_data(data, data=cfg.data)
    train_recommender(rec, recommender=cfg.recommender, data=data)
    every_user = cfg.reclaif.candidates.model_copy(update={"train_users": 900})
    build_candidate_sets(sets, candidates=every_user, data=data, recommender=rec)
    reclaif_template_teacher(teacher, answer=cfg.reclaif.answer, recommender=cfg.recommender, candidates=sets,
                             data=data, templates=read_templates(cfg.reclaif.answer.prompt))
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model("smollm2", Path(__file__).resolve().parents[1] / "artifacts")
    )
    texts = pl.read_parquet(teacher / "generations.parquet")["text"].to_list()
    longest = max(len(tokenizer(text)["input_ids"]) for text in texts)
    assert len(texts) == 900 and longest + 1 <= budget, longest  # + the end-of-turn token


# ---------------------------------------------------------------------------------------------
# Metrics


def test_ranking_values_hand_computed():
    assert ranking_values(1, 3) == {"Hit@1": 1.0, "Hit@3": 1.0, "NDCG@3": 1.0, "Precision@3": pytest.approx(1 / 3)}
    second = ranking_values(2, 3)
    assert second["Hit@1"] == 0.0 and second["Hit@3"] == 1.0 and second["NDCG@3"] == pytest.approx(1 / math.log2(3))
    assert ranking_values(3, 5)["Precision@5"] == pytest.approx(0.2)
    assert ranking_values(math.inf, 3) == {"Hit@1": 0.0, "Hit@3": 0.0, "NDCG@3": 0.0, "Precision@3": 0.0}


def test_genre_diversity_and_answer_scores():
    assert genre_diversity([["A"], ["A"]]) == 0.0
    assert genre_diversity([["A", "B"], ["B", "C"], ["D"]]) == pytest.approx((2 / 3 + 1 + 1) / 3)
    cs = CandidateSet(
        set_id="train-1", split="train", user_id=1, history=[], candidates=CANDIDATES, target=CANDIDATES[0]
    )
    parsed = parse_recommendation(GOOD, CANDIDATES, 3)  # the target (The Godfather) is ranked 2nd
    scores = answer_scores(parsed, GOOD, cs, 3)
    assert scores.relevance == pytest.approx(5 / math.log2(3))
    # Fargo {Crime, Thriller}, Godfather {Crime, Drama}, First Contact {Sci-Fi, Action}
    assert scores.diversity == pytest.approx(5 * (2 / 3 + 1 + 1) / 3)
    assert scores.explainability == pytest.approx(5.0)  # 2 preferences, 3 reasons of 4+ words, no loop


def test_summarise_means_and_bootstrap_intervals():
    frame = pl.DataFrame({
        "model": ["a"] * 4 + ["b"] * 4, "kind": ["llm"] * 4 + ["classic"] * 4,
        "valid": [True, False, True, True] + [True] * 4,
        "Hit@1": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], "Hit@3": [1.0] * 8, "NDCG@3": [0.5] * 8,
        "Precision@K": [0.25] * 8, "Diversity": [0.2, math.nan, 0.4, 0.6] + [0.1] * 4,
        "Explainability": [50.0, 70.0, math.nan, math.nan] + [math.nan] * 4,
    })
    table = summarise(frame, ["b", "a"], n_boot=200, seed=0)
    value = {(r["model"], r["metric"]): r for r in table.iter_rows(named=True)}
    assert value[("a", "ValidRatio")]["value"] == 0.75 and value[("a", "Hit@1")]["value"] == 0.25
    assert value[("a", "Diversity")]["value"] == pytest.approx(0.4) and value[("a", "Diversity")]["n"] == 3
    assert value[("a", "Explainability")]["value"] == 60.0 and value[("a", "Explainability")]["n"] == 2
    assert 0.0 <= value[("a", "Hit@1")]["ci_low"] <= 0.25 <= value[("a", "Hit@1")]["ci_high"] <= 1.0
    assert value[("b", "Hit@1")]["ci_low"] == value[("b", "Hit@1")]["ci_high"] == 1.0  # no spread
    assert ("b", "Explainability") not in value  # classic models are not scored on explanations
    assert table["model"].to_list()[0] == "b"  # the requested order


# ---------------------------------------------------------------------------------------------
# Judge


def reclaif_verdict(a: float, b: float, choice: str) -> str:
    return (f"Option A Evaluation:\n- Relevance Score: {a}\n- Diversity Score: 3\n- Explainability Score: 3\n\n"
            f"Option B Evaluation:\n- Relevance Score: {b}\n- Diversity Score: 3\n- Explainability Score: 3\n\n"
            f"Decision:\n- Chosen Option: {choice}\n- Reasoning: relevance.")


def test_judge_both_orders_rubric_and_ensemble():
    cs = CandidateSet(set_id="train-1", split="train", user_id=1, history=[CANDIDATES[5]], candidates=CANDIDATES,
                      target=CANDIDATES[2])
    better = GOOD  # Fargo first: the next movie ranked first
    worse = GOOD.replace("1. Fargo (1996)", "1. Babe (1995)")
    invalid = "I like movies."
    templates = read_templates("reclaif_judge.j2")

    def position_biased(messages, _):  # always prefers the option shown first
        assert "Next Preferred Movie: Fargo (1996)" in messages[-1]["content"]
        return reclaif_verdict(4, 2, "A")

    llm = JudgeConfig(kind="llm", prompt="reclaif_judge.j2", both_orders=True)
    model = ScriptedModel(position_biased)
    [result] = judge_recommendation_pairs([(cs, better, worse)], judge=llm, answer=ReclaifAnswerConfig(),
                                          templates=templates, model=model)
    assert len(model.prompts) == 2 and result.judgement.verdict == "inconsistent"  # A then B: not consistent

    def consistent(messages, _):
        first = messages[-1]["content"].split("Option B:")[0]
        return reclaif_verdict(5, 1, "A") if "1. Fargo" in first else reclaif_verdict(1, 5, "B")

    [result] = judge_recommendation_pairs([(cs, better, worse)], judge=llm, answer=ReclaifAnswerConfig(),
                                          templates=templates, model=ScriptedModel(consistent))
    assert result.judgement.verdict == "a" and result.judgement.order_consistent
    assert result.judgement.score_a == pytest.approx((5 + 3 + 3) / 15)

    rubric = JudgeConfig(kind="rubric")
    verdicts = judge_recommendation_pairs([(cs, worse, better), (cs, invalid, invalid)], judge=rubric,
                                          answer=ReclaifAnswerConfig())
    assert [v.judgement.verdict for v in verdicts] == ["b", "both_bad"]
    assert verdicts[0].rubric_b.relevance == 5.0 and verdicts[0].rubric_a.relevance == 0.0

    # The next movie's rank decides first: the ensemble does not even ask the LLM when the two
    # answers rank it differently.
    ensemble = JudgeConfig(kind="ensemble", prompt="reclaif_judge.j2", llm_weight=0.3)
    model = ScriptedModel(position_biased)
    [result] = judge_recommendation_pairs([(cs, worse, better)], judge=ensemble, answer=ReclaifAnswerConfig(),
                                          templates=templates, model=model)
    assert result.judgement.verdict == "b" and result.judgement.llm_choice is None and not model.prompts
    # Equal relevance (both miss the next movie): a position-biased (inconsistent) LLM casts no
    # vote; the rubric decides (genre diversity: Babe / Godfather / First Contact beat three
    # science fiction films).
    narrow = GOOD.replace("1. Fargo (1996)", "1. Star Wars (1977)").replace(
        "2. Godfather, The", "2. Star Trek: Generations"
    )
    [result] = judge_recommendation_pairs([(cs, narrow, worse)], judge=ensemble, answer=ReclaifAnswerConfig(),
                                          templates=templates, model=ScriptedModel(position_biased))
    assert result.judgement.llm_choice == "inconsistent" and result.judgement.verdict == "b"
    assert result.rubric_a.relevance == result.rubric_b.relevance == 0.0
    # A valid answer beats a broken one when both miss; when the broken one ranks the next movie
    # higher, neither is chosen (tie: choosing either would teach the wrong thing). The ensemble
    # asks the LLM only about two valid answers of equal relevance (it cannot change the rest).
    broken = better.replace("3. Star Trek: First Contact (1996) - Space adventure with action and heart.", "")
    broken_miss = worse.replace("3. Star Trek: First Contact (1996) - Space adventure with action and heart.", "")
    for judge in (rubric, ensemble):
        model = ScriptedModel(position_biased)
        verdicts = judge_recommendation_pairs(
            [(cs, invalid, invalid), (cs, worse, broken), (cs, worse, better), (cs, broken_miss, worse),
             (cs, narrow, worse)],
            judge=judge, answer=ReclaifAnswerConfig(), templates=templates, model=model)
        assert [v.judgement.verdict for v in verdicts] == ["both_bad", "tie", "b", "b", "b"]
        assert verdicts[1].rubric_b.relevance > verdicts[1].rubric_a.relevance  # the broken one ranked Fargo first
        assert len(model.prompts) == (2 if judge is ensemble else 0)
    assert [v.judgement.llm_choice for v in verdicts] == [None, None, None, None, "inconsistent"]
    from recxplain.reclaif.judge import ranking_signal

    assert ranking_signal(verdicts) == {"pairs_with_next_movie": 2, "pairs_rank_differs": 2,
                                        "kept_chosen_ranks_higher": 1, "kept_chosen_ranks_lower": 0,
                                        "rank_vs_format": 1}
    # ... and only where its vote can change the verdict: at weight 0.01 the rubric margin decides alone.
    light = JudgeConfig(kind="ensemble", prompt="reclaif_judge.j2", llm_weight=0.01)
    model = ScriptedModel(position_biased)
    [result] = judge_recommendation_pairs([(cs, narrow, worse)], judge=light, answer=ReclaifAnswerConfig(),
                                          templates=templates, model=model)
    assert result.judgement.verdict == "b" and result.judgement.llm_choice is None and not model.prompts


# ---------------------------------------------------------------------------------------------
# Evaluation table end to end (classic baselines on the same sets; scripted LLM answers)


def test_reclaif_evaluate_on_hand_made_answers(toy, tmp_path):
    candidates = toy["root"] / "eval_sets"
    candidates.mkdir()
    cfg = ReclaifCandidatesConfig(train_users=2, eval_users=4, negatives=5)
    build_candidate_sets(candidates, candidates=cfg, data=toy["data"], recommender=toy["recommender"])
    sets = read_candidate_sets(candidates, "eval")
    rows = []
    for n, cs in enumerate(sets):
        others = [c for c in cs.candidates if c.item_id != cs.target.item_id]
        # "oracle" names the next movie first for every set; "half" only for the first two sets.
        oracle = [cs.target, *others[:2]]
        half = oracle if n < 2 else others[:3]
        for name, picks in (("oracle", oracle), ("half", half)):
            text = "Key Preferences:\n- Preference 1: stories\n\nRecommended Movies:\n" + "\n".join(
                f"{i}. {m.title} ({m.year}) - because it fits your taste" for i, m in enumerate(picks, 1))
            rows.append({"case_id": cs.set_id, "model": name, "text": text})
    rows.append({"case_id": sets[0].set_id, "model": "broken", "text": "no idea"})
    answers = tmp_path / "answers"
    answers.mkdir()
    pl.DataFrame(rows).write_parquet(answers / "answers.parquet")
    out = tmp_path / "out"
    out.mkdir()
    evaluation = ReclaifEvaluationConfig(recommenders=["base"], baselines=["popular", "itemknn", "random", "listed"],
                                         diversity=False, explainability=False, bootstrap=50)
    reclaif_evaluate(out, evaluation=evaluation, answer=ReclaifAnswerConfig(), judge=JudgeConfig(),
                     recommender=RecommenderConfig(k=5), data=toy["data"], candidates=candidates, answers=answers,
                     templates={}, artifacts_dir=tmp_path)
    table = pl.read_parquet(out / "comparison.parquet")
    value = {(r["model"], r["metric"]): r["value"] for r in table.iter_rows(named=True)}
    assert value[("oracle", "Hit@1")] == 1.0 and value[("oracle", "NDCG@3")] == 1.0
    assert value[("oracle", "Precision@K")] == pytest.approx(1 / 3) and value[("oracle", "ValidRatio")] == 1.0
    assert value[("half", "Hit@1")] == 0.5 and value[("half", "Hit@3")] == 0.5
    assert value[("broken", "ValidRatio")] == 0.0 and value[("broken", "Hit@3")] == 0.0
    # Classic baselines ranked the same sets; popularity's rank follows the train counts.
    per = pl.read_parquet(out / "per_answer.parquet")
    interactions = pl.read_parquet(toy["data"] / "interactions.parquet").filter(pl.col("split") != "test")
    counts = dict(interactions.group_by("item_id").len().iter_rows())
    for cs in sets:
        ids = [c.item_id for c in cs.candidates]
        expected = sorted(ids, key=lambda i: -counts.get(i, 0))  # stable: ties keep the shown order
        row = per.filter((pl.col("model") == "popular") & (pl.col("case_id") == cs.set_id))
        assert row["rank"][0] == expected.index(cs.target.item_id) + 1
    markdown = (out / "comparison.md").read_text()
    assert "| oracle | llm | 1.000 [1.000, 1.000] |" in markdown and "| popular | classic |" in markdown
    stats = json.loads((out / "stats.json").read_text())
    assert stats["eval_sets"] == 4
    # Chance on the same sets: the shown order, a seeded shuffle, and the exact expectation
    # (6 candidates: Hit@1 = 1/6, Hit@3 = 3/6) placed right after the shuffle.
    positions = [[c.item_id for c in cs.candidates].index(cs.target.item_id) + 1 for cs in sets]
    assert stats["target_positions"] == sorted(positions)
    listed = per.filter(pl.col("model") == "listed").sort("case_id")
    assert listed["rank"].to_list() == [float(p) for _, p in sorted(zip([cs.set_id for cs in sets], positions))]
    assert value[("random (expected)", "Hit@1")] == pytest.approx(1 / 6)
    assert value[("random (expected)", "Hit@3")] == pytest.approx(0.5)
    assert value[("random (expected)", "NDCG@3")] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 6)
    assert ("random (expected)", "ValidRatio") not in value
    expected = table.filter((pl.col("model") == "random (expected)") & (pl.col("metric") == "Hit@3")).row(0, named=True)
    assert 0.0 <= expected["ci_low"] < 0.5 < expected["ci_high"] <= 1.0  # 4 users: chance alone moves the mean a lot
    models = table["model"].unique(maintain_order=True).to_list()
    assert models[:5] == ["popular", "itemknn", "random", "random (expected)", "listed"]
    assert per.filter(pl.col("model") == "random")["kind"].unique().to_list() == ["chance"]
    # Position tables: the oracle hits wherever the next movie is listed; "half" only on the first two sets.
    assert "by the next movie's position" in markdown and "Position bias and reach" in markdown
    bias = {r["model"]: r for r in pl.read_parquet(out / "position_bias.parquet").iter_rows(named=True)}
    assert bias["oracle"]["names next movie (any)"] == 1.0 and bias["half"]["names next movie (any)"] == 0.5
    assert bias["listed"]["copies first k"] == 1.0 and bias["listed"]["mean pick position"] == 2.0
    assert bias["broken"]["valid answers"] == 0
    by_position = pl.read_parquet(out / "positions.parquet").filter(pl.col("model") == "oracle")
    assert by_position["sets"].sum() == 4 and set(by_position["Hit@3"].drop_nans().to_list()) == {1.0}

    # The run's report: the same table, the feedback counts, the answers (escaped).
    from tasks.report import write_reclaif_report

    judged = tmp_path / "judge"
    judged.mkdir()
    (judged / "stats.json").write_text(json.dumps({"pairs_judged": 6, "llm_asked": 2, "kept": 2, "both_bad": 4}))
    report = tmp_path / "report"
    report.mkdir()
    write_reclaif_report(report, evaluation=out, candidates=candidates, feedback={"judge_r1": judged}, examples=2)
    assert markdown in (report / "report.md").read_text()
    assert "| judge_r1 | 6 | 2 | 2 | 4 |" in (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    assert "<th>oracle</th>" in page and "<th>popular</th>" in page and "Precision@3" in page
    assert page.count('class="example"') == 2 and "no idea" in page
    rows = json.loads((report / "metrics_table.json").read_text())
    assert [r["recommender"] for r in rows] == ["popular", "itemknn", "random", "random (expected)", "listed",
                                                "oracle", "half", "broken"]
