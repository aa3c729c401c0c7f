"""Who the evaluate stage judges against the teacher: the student, the base student and each
compressed variant in compress/variants.json; a broken variants file is refused by name."""

import json

import pytest

from distill.config import load_config
from distill.rundir import RunDir
from distill.stages.evaluate import evaluation_contestants
from distill.stages.session import StageInputError


@pytest.fixture
def config(repo_root):
    return load_config(repo_root / "configs" / "demo.yaml")


def testevaluation_contestants_are_student_base_and_each_variant(tmp_path, config):
    rundir = RunDir(tmp_path / "run")
    finetuned = {"base_model": str(tmp_path / "base"), "adapter": str(tmp_path / "adapter")}
    assert [c["label"] for c in evaluation_contestants(config, rundir, finetuned)] == ["student", "base_student"]

    (rundir.root / "compress").mkdir(parents=True)
    (rundir.root / "compress" / "variants.json").write_text(json.dumps([
        {"label": "int8 dynamic", "kind": "torch_int8", "path": "x", "size_on_disk_bytes": 10},
        {"label": "student", "kind": "gguf", "path": "y", "size_on_disk_bytes": 5},
    ]))
    contestants = evaluation_contestants(config, rundir, finetuned)
    assert [c["label"] for c in contestants] == ["student", "base_student", "int8_dynamic", "variant_student"]
    assert contestants[2]["kind"] == "variant" and contestants[2]["variant"]["kind"] == "torch_int8"
    assert contestants[0]["batch_size"] == config.evaluate.batch_size and contestants[1]["adapter"] is None


def test_a_broken_variants_file_is_named(tmp_path, config):
    rundir = RunDir(tmp_path / "run")
    (rundir.root / "compress").mkdir(parents=True)
    variants = rundir.root / "compress" / "variants.json"
    variants.write_text(json.dumps([{"label": "ok"}, {"kind": "gguf"}]))
    with pytest.raises(StageInputError, match=r"variants\.json: variant 2: field 'label' must be a string"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})
    variants.write_text('[\n{"label": "ok"},\n{"label": }\n]')
    with pytest.raises(StageInputError, match=r"variants\.json:3: not valid JSON"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})
    variants.write_text('{"label": "not a list"}')
    with pytest.raises(StageInputError, match=r"variants\.json: expected a JSON list"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})
