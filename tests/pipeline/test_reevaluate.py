"""Evaluating a finished run again: evaluation settings do not make a different config, and each
evaluation gets a folder of its own (pipeline.stages.evaluate.evaluation_target); the earlier
one is kept. (The whole flow, with real models, is in tests/flows/test_pipeline_e2e.py.)"""

import json

import pytest

from core.errors import StageInputError
from core.rundir import RunDir
from pipeline.config import load_config
from pipeline.manifest import build_manifest, write_manifest
from pipeline.session import check_same_config, summary_file
from pipeline.stages import stage_named
from pipeline.stages.evaluate import evaluation_target


@pytest.fixture
def demo(repo_root):
    return repo_root / "configs" / "demo.yaml"


def finished(rundir: RunDir, config) -> None:
    """A run directory whose first evaluation was made with `config`'s evaluation settings."""
    target = evaluation_target(config, rundir)
    rundir.stages.mkdir(parents=True, exist_ok=True)
    rundir.mark_done("evaluate", {"sets": list(config.evaluate.sets), "evaluation": target.to_json(rundir)})


def test_evaluation_settings_are_not_a_different_config(tmp_path, demo):
    rundir = RunDir(tmp_path / "run").create()
    config = load_config(demo)
    write_manifest(rundir.manifest, build_manifest(config, demo, "t", "j", "s"))
    prompts = tmp_path / "my_prompts.jsonl"
    prompts.write_text('{"instruction": "Describe a sunset."}\n')
    again = load_config(demo, [f"evaluate.sets=[{prompts}]", "evaluate.max_prompts=5", "evaluate.compare_base=false",
                               "evaluate.judge.backend=openai", "evaluate.judge.base_urls=[http://127.0.0.1:9/v1]"])
    check_same_config(rundir, again)  # accepted
    with pytest.raises(StageInputError, match="different config"):
        check_same_config(rundir, load_config(demo, ["filter.threshold=1"]))


def test_a_prompt_file_named_on_the_command_line_is_found_in_the_working_directory(tmp_path, demo, monkeypatch):
    (tmp_path / "my_prompts.jsonl").write_text('{"instruction": "Describe a sunset."}\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(demo, ['evaluate.sets=["my_prompts.jsonl"]'])
    assert config.evaluate.sets == [str(tmp_path / "my_prompts.jsonl")]


def test_each_evaluation_has_its_own_folder_and_the_first_stays_in_eval(tmp_path, demo):
    rundir = RunDir(tmp_path / "run")
    first = load_config(demo)
    target = evaluation_target(first, rundir)
    assert target.name is None and target.folder == rundir.eval_dir
    assert summary_file(stage_named("evaluate"), first, rundir) == rundir.stages / "evaluate.json"
    finished(rundir, first)
    assert evaluation_target(first, rundir).name is None  # the same settings: the same evaluation

    other = load_config(demo, ["evaluate.sets=[self_instruct_252]", "evaluate.max_prompts=2"])
    named = evaluation_target(other, rundir)
    assert named.name.startswith("self_instruct_252-") and named.folder == rundir.eval_dir / named.name
    assert named.summary_file == named.folder / "summary.json" and named.journal("judge") == f"eval_{named.name}_judge"
    assert evaluation_target(other, rundir).name == named.name  # stable

    chosen = load_config(demo, ["evaluate.sets=[self_instruct_252]", "evaluate.name=si252"])
    assert evaluation_target(chosen, rundir).folder == rundir.eval_dir / "si252"
    (rundir.eval_dir / "si252").mkdir(parents=True)
    (rundir.eval_dir / "si252" / "summary.json").write_text(json.dumps({"evaluation": {"settings_hash": "other"}}))
    with pytest.raises(StageInputError, match="holds an evaluation with other settings"):
        evaluation_target(chosen, rundir)


def test_a_run_evaluated_before_evaluations_had_names_is_its_first(tmp_path, demo):
    rundir = RunDir(tmp_path / "run")
    rundir.stages.mkdir(parents=True)
    config = load_config(demo)
    rundir.mark_done("evaluate", {"sets": list(config.evaluate.sets)})  # no "evaluation" entry
    assert evaluation_target(config, rundir).name is None
    assert evaluation_target(load_config(demo, ["evaluate.sets=[vicuna_80]"]), rundir).name is not None
    other_judge = load_config(demo, ["evaluate.judge.backend=openai", "evaluate.judge.base_urls=[http://127.0.0.1:9/v1]"])
    assert evaluation_target(other_judge, rundir).name is not None  # never the earlier judge's journaled verdicts


def test_reserved_and_malformed_names_are_refused(demo):
    from core.errors import ConfigError

    for name in ("work", "../up", "a b"):
        with pytest.raises(ConfigError, match="evaluate.name"):
            load_config(demo, [f"evaluate.name={name}"])
