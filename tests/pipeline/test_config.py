from pathlib import Path

import pytest

from core.errors import ConfigError
from pipeline.config import check_base_model, load_config, parse_overrides


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "seeds.jsonl").write_text(
        '{"instruction": "Say hi.", "instances": [{"input": "", "output": "Hi"}], "is_classification": false}\n'
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load(repo_root):
    for path in sorted((repo_root / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.seed_tasks.is_file(), path


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\ngenerate:\n  target_recods: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "generate.target_recods" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\nfilter:\n  threshold: high\n")
    with pytest.raises(ConfigError, match=r"filter\.threshold"):
        load_config(path)


def test_out_of_range_threshold(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\nfilter:\n  threshold: 7\n")
    with pytest.raises(ConfigError, match=r"filter\.threshold"):
        load_config(path)


def test_missing_seed_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\nseed_tasks: nowhere.jsonl\n")
    with pytest.raises(ConfigError, match="seed_tasks.*nowhere.jsonl"):
        load_config(path)


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\n")
    assert load_config(path, ["generate.target_records=12"]).generate.target_records == 12
    with pytest.raises(ConfigError, match="generate.target_records"):
        load_config(path, ["generate.target_records=-1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["generate.target_records"])


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\nfinetune:\n  base_model: models/none\n")
    config = load_config(path)
    assert config.seed_tasks == (tmp_path / "seeds.jsonl").resolve()
    with pytest.raises(ConfigError, match="finetune.base_model.*models/none"):
        check_base_model(config)


def test_not_a_mapping(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_evaluation_sets_are_checked(tmp_path):
    path = write(tmp_path, "name: x\nseed_tasks: seeds.jsonl\nevaluate:\n  sets: [heldout, vicuna_80, mine.jsonl]\n")
    with pytest.raises(ConfigError, match="evaluate.sets.*mine.jsonl"):
        load_config(path)
    (tmp_path / "mine.jsonl").write_text('{"instruction": "Say hi."}\n')
    assert load_config(path).evaluate.sets == ["heldout", "vicuna_80", str((tmp_path / "mine.jsonl").resolve())]


def test_every_setting_of_every_component_is_described():
    """Each component owns typed settings with a description on every field (shown by `--help`-style
    docs and error messages); the pipeline's config composes them."""
    import typing

    from pydantic import BaseModel

    from pipeline.config import PipelineConfig

    undescribed, sections = [], set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        sections.add(model.__module__)
        for name, field in model.model_fields.items():
            if not field.description:
                undescribed.append(prefix + name)
            for kind in (field.annotation, *typing.get_args(field.annotation)):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    walk(kind, f"{prefix}{name}.")

    walk(PipelineConfig, "")
    assert undescribed == []
    assert {"selfinstruct.config", "filters.config", "finetune.config", "eval.config", "compress.config",
            "backends.config", "pipeline.config"} <= sections
