"""Scheduled retraining (flows/retrain.py): what is recomputed when the source data changes, and
when the student is trained again. Data: a small ml-latest folder written here."""

import json
import random
from pathlib import Path

import pytest

from flows.retrain import compare_data, decide_student, retrain
from recxplain.config import DataConfig, RetrainConfig
from recxplain.stage import run_stage
from tasks.data import prepare_data, source_digest
from tests.fanout_toys import Job, timed_double
from tests.test_data import write_ml_latest

GENRES = ["Action", "Comedy", "Drama", "Thriller", "Romance"]
MOVIES = "movieId,title,genres\n" + "".join(
    f"{m},Movie {m} ({1990 + m % 20}),{GENRES[m % 5]}|{GENRES[(m * 3) % 5]}\n" for m in range(1, 26)
)
# Three ratings user 1 has not given (user 1 rated 12 of the 25 movies), after all the others.
NEW_RATINGS = "1,{},4.5,900001\n1,{},2.0,900002\n1,{},5.0,900003\n"


def ratings_csv() -> tuple[str, list[int]]:
    """30 users x 12 of 25 movies (360 ratings); also the movies user 1 has not rated."""
    rng = random.Random(0)
    rows, unrated = [], []
    for user in range(1, 31):
        rated = sorted(rng.sample(range(1, 26), 12))
        if user == 1:
            unrated = [m for m in range(1, 26) if m not in rated]
        rows += [f"{user},{m},{rng.choice([2.0, 3.0, 3.5, 4.0, 5.0])},{1000 * user + i}\n" for i, m in enumerate(rated)]
    return "userId,movieId,rating,timestamp\n" + "".join(rows), unrated


def add_ratings(folder: Path, unrated: list[int]) -> None:
    with open(folder / "ratings.csv", "a") as fh:
        fh.write(NEW_RATINGS.format(*unrated[:3]))


def prepared(root: Path, source: Path) -> Path:
    """prepare_data on `source` as the flow runs it (content-addressed folder, no Prefect)."""
    data = DataConfig(source="ml-latest", path=source)
    return run_stage("prepare_data", prepare_data, root, {"data": data, "source_digest": source_digest(data)})


def test_new_ratings_are_counted_and_decide_whether_the_student_is_trained_again(tmp_path):
    ratings, unrated = ratings_csv()
    before = write_ml_latest(tmp_path / "before", ratings=ratings, movies=MOVIES)
    after = write_ml_latest(tmp_path / "after", ratings=ratings, movies=MOVIES)
    add_ratings(after, unrated)
    old, new = prepared(tmp_path / "artifacts", before), prepared(tmp_path / "artifacts", after)

    assert compare_data(old, old).new_ratings == 0
    change = compare_data(old, new)
    assert (change.new_ratings, change.total_ratings) == (3, 363)
    assert change.fraction == pytest.approx(3 / 363)

    # Any completed stage folder stands for the cases the student was trained on.
    old_cases = run_stage("timed_double", timed_double, tmp_path / "artifacts", {"job": Job(value=1)})
    new_cases = run_stage("timed_double", timed_double, tmp_path / "artifacts", {"job": Job(value=2)})
    student = {"data": str(old), "cases": str(old_cases)}

    first = decide_student(RetrainConfig(), None, new, new_cases)
    assert first.train and first.cases == str(new_cases) and "no student" in first.reason

    kept = decide_student(RetrainConfig(min_new_ratings=4, min_new_fraction=0.5), student, new, new_cases)
    assert not kept.train and kept.cases == str(old_cases) and kept.change.new_ratings == 3
    assert "below the threshold" in kept.reason

    by_count = decide_student(RetrainConfig(min_new_ratings=3, min_new_fraction=0.5), student, new, new_cases)
    assert by_count.train and by_count.cases == str(new_cases)
    # 3 / 363 = 0.83 %: over a 0.8 % threshold, under 0.9 %.
    assert decide_student(RetrainConfig(min_new_ratings=100, min_new_fraction=0.008), student, new, new_cases).train
    assert not decide_student(RetrainConfig(min_new_ratings=100, min_new_fraction=0.009), student, new, new_cases).train

    # The cases it learned from were deleted: it cannot be kept as it was, so it is trained again.
    (Path(old_cases) / "result.json").unlink()
    gone = decide_student(RetrainConfig(min_new_ratings=100, min_new_fraction=0.5), student, new, new_cases)
    assert gone.train and "no longer in the artifacts" in gone.reason


def test_retrain_recomputes_nothing_unchanged_and_only_what_a_changed_file_affects(tmp_path):
    ratings, unrated = ratings_csv()
    source = write_ml_latest(tmp_path / "ml", ratings=ratings, movies=MOVIES)
    config = tmp_path / "retrain.yaml"
    config.write_text(
        f"data: {{source: ml-latest, path: {source}}}\n"
        "recommender: {model: itemknn, k: 5, top_n: 3, sampled_negatives: 5}\n"
        "paths: {similar_k: 5}\n"
        f"runtime: {{artifacts_dir: {tmp_path / 'artifacts'}, run_name: weekly}}\n"
        "retrain: {evidence_only: true}\n"
    )

    def run() -> dict:
        return json.loads((Path(retrain(str(config))) / "retrain.json").read_text())

    first = run()
    assert first["executed"] == ["prepare_data", "train_recommender", "mine_paths"]
    assert first["since_previous_run"] is None

    unchanged = run()
    assert unchanged["executed"] == [] and unchanged["data"] == first["data"]
    assert unchanged["since_previous_run"] == {"new_ratings": 0, "total_ratings": 360}

    add_ratings(source, unrated)
    more = run()
    assert more["executed"] == ["prepare_data", "train_recommender", "mine_paths"]
    assert more["since_previous_run"] == {"new_ratings": 3, "total_ratings": 363}

    history = (tmp_path / "artifacts" / "retrain" / "weekly" / "history.jsonl").read_text().splitlines()
    assert [len(json.loads(line)["executed"]) for line in history] == [3, 0, 3]
    state = json.loads((tmp_path / "artifacts" / "retrain" / "weekly" / "state.json").read_text())
    assert state["previous"]["data"] == more["data"] and "student" not in state  # evidence only

    # A tag that is already there (case and spaces are normalised): the source hash changes, so
    # the data is prepared again, but to the same content: nothing downstream runs.
    with open(source / "tags.csv", "a") as fh:
        fh.write("4,2,DARK ,13\n")
    same_content = run()
    assert same_content["executed"] == ["prepare_data"], differing_files(Path(more["data"]), Path(same_content["data"]))
    assert same_content["cached"] == ["train_recommender", "mine_paths"]


def differing_files(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.iterdir() if p.is_file() and not p.name.startswith("_"))
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def test_evaluate_only_takes_the_students_an_earlier_run_recorded(tmp_path):
    from flows.evaluate_only import trained_students

    artifacts = tmp_path / "artifacts"
    with pytest.raises(FileNotFoundError, match="no such run"):
        trained_students(artifacts, "paper", ["sft"])
    # Completed stage folders stand for the students (only their integrity is checked here).
    sft = run_stage("timed_double", timed_double, artifacts, {"job": Job(value=1)})
    orpo = run_stage("timed_double", timed_double, artifacts, {"job": Job(value=2)})
    run = artifacts / "runs" / "paper"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"artifacts": {"cases": "x", "sft": str(sft), "orpo": str(orpo)}}))

    assert trained_students(artifacts, "paper", ["sft", "orpo"]) == {"sft": sft, "orpo": orpo}
    with pytest.raises(ValueError, match=r"no student\(s\) \['dpo_r1'\]; it has \['orpo', 'sft'\]"):
        trained_students(artifacts, "paper", ["sft", "dpo_r1"])
    (sft / "result.json").write_text("{}")
    with pytest.raises(ValueError, match="deleted or altered"):
        trained_students(artifacts, "paper", ["sft"])
