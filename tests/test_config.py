"""Config loading: defaults, overrides, and errors that name the file, the field and the reason."""

from pathlib import Path

import pytest

from recxplain.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    load_config(CONFIGS / name)


def test_overrides_parse_yaml_scalars_and_nested_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recommender:\n  k: 5\n")
    cfg = load_config(
        path, ["recommender.k=20", "teacher.llm.provider=openai", "evaluation.explainers=[template, sft]"]
    )
    assert cfg.recommender.k == 20
    assert cfg.teacher.llm.provider == "openai"
    assert cfg.evaluation.explainers == ["template", "sft"]


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("recommender:\n  k: -3\n", [], r"c.yaml: recommender.k: Input should be greater than or equal to 1"),
        ("recommender:\n  model: knn\n", [], r"recommender.model: Input should be 'itemknn'"),
        ("recomender:\n  k: 3\n", [], r"recomender: Extra inputs are not permitted"),
        ("data:\n  source: ml-latest\n", [], r"data: Value error, data.path is required"),
        ("{}", ["recommender.k=ten"], r"recommender.k: Input should be a valid integer"),
        ("{}", ["recommender.k"], r"expected KEY=VALUE"),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("a: [\n", [], r"not valid YAML"),
    ],
)
def test_invalid_configs_name_file_field_and_reason(tmp_path, text, overrides, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path, overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_teacher_samples_pairs_need_the_teachers_samples():
    Config.model_validate({"pairs": {"source": "teacher_samples"}, "teacher": {"best_of": 2}})
    with pytest.raises(ValueError, match="teacher_samples' needs task 'explain' and teacher.best_of >= 2"):
        Config.model_validate({"pairs": {"source": "teacher_samples"}, "teacher": {"best_of": 1}})
    with pytest.raises(ValueError, match="task is 'recommend'"):
        Config.model_validate({"task": "recommend", "pairs": {"source": "teacher_samples"}, "teacher": {"best_of": 3}})
