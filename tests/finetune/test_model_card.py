"""Model cards and the merged model: the finetune stage for real on the embedded student.

The run directory is built the way the pipeline leaves it before fine-tuning (a manifest from
``build_manifest``, generated and filtered records), without running generation: the teacher
here is an OpenAI-compatible endpoint that is never called, only named, so that the card's
provenance and the secret-scrubbing of its URL are tested. One real optimizer step, then
``finetune.merge.merge_lora``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("trl")

from core.errors import ConfigError
from filters.config import FilterConfig
from finetune.config import FinetuneConfig
from backends.config import ModelEndpoint
from pipeline.config import PipelineConfig, load_config  # noqa: E402
from pipeline.manifest import build_manifest, prompt_hashes, write_manifest  # noqa: E402
from backends.registry import endpoint_identity  # noqa: E402
from core.records import write_jsonl  # noqa: E402
from core.rundir import RunDir  # noqa: E402
from pipeline.session import run_stage_in  # noqa: E402
from finetune.model_card import render_model_card, without_credentials  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-planted-secret-4711"
URL_PASSWORD = "urlpass-0815"


def test_credentials_are_cut_from_urls():
    text = f"openai:m@https://bob:{URL_PASSWORD}@host:8000/v1?api_key={SECRET},http://other/v1"
    cleaned = without_credentials(text)
    assert cleaned == "openai:m@https://host:8000/v1,http://other/v1"


def test_card_without_provenance_still_renders():
    card = render_model_card({}, {"settings": {"method": "lora"}, "base_model_dir": "/models/x"}, "adapter")
    assert "library_name: peft" in card and "`x`" in card


@pytest.fixture(scope="module")
def finished_stage(student_cache_dir, short_records, tmp_path_factory):
    os.environ["PLANTED_TEACHER_KEY"] = SECRET
    root = tmp_path_factory.mktemp("run")
    config = PipelineConfig(
        name="card-test",
        seed_tasks=REPO / "data" / "seed_tasks.jsonl",
        teacher=ModelEndpoint(
            backend="openai", model="teacher-model-x", api_key_env="PLANTED_TEACHER_KEY",
            base_urls=["http://teacher.example:8000/v1"],
        ),
        filter=FilterConfig(threshold=4.0),
        finetune=FinetuneConfig(max_steps=1, batch_size=4, max_length=128, heldout_records=2, merge=True),
    )
    rundir = RunDir(root).create()
    teacher = endpoint_identity(config.teacher)
    write_manifest(rundir.manifest, build_manifest(config, root / "config.yaml", teacher, teacher, "embedded"))
    records = short_records[:6]
    write_jsonl(rundir.generated, records + [{"instruction": "dropped", "input": "", "output": "x"}])
    write_jsonl(rundir.filtered, records)
    summary = run_stage_in(rundir, config, "finetune", root / "config.yaml", student_cache_dir, progress=False).to_json()
    yield rundir, summary
    os.environ.pop("PLANTED_TEACHER_KEY", None)


def test_stage_writes_adapter_card_and_merged_model(finished_stage):
    rundir, summary = finished_stage
    adapter, merged = Path(summary["adapter"]), Path(summary["merged"])
    assert summary["method"] == "lora" and summary["steps"] == 1
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    assert not (merged / "adapter_config.json").exists()  # a plain model, no peft needed
    assert json.loads((rundir.stages / "finetune.json").read_text())["merged"] == str(merged)


@pytest.mark.parametrize("where, kind", [("adapter", "LoRA adapter"), ("merged", "merged in")])
def test_model_card_has_provenance_and_settings(finished_stage, where, kind):
    rundir, summary = finished_stage
    card = (Path(summary[where]) / "README.md").read_text()
    assert kind in card
    assert "teacher-model-x" in card and "teacher.example:8000" in card
    for name, digest in prompt_hashes().items():  # every prompt file's hash
        assert f"`{name}` | `{digest}`" in card
    assert "| generated records | 7 |" in card and "| kept by the filter | 6 |" in card
    assert "| trained on | 4 |" in card and "| held out for evaluation | 2 |" in card
    assert "| threshold | 4.0 |" in card  # filter settings
    assert "| lora_r | 16 |" in card and "| steps | 1 |" in card  # training settings and results


def test_no_secret_reaches_any_output(finished_stage):
    rundir, _ = finished_stage
    for path in rundir.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:  # the text files, not the weights
            data = path.read_bytes()
            assert SECRET.encode() not in data, path


def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path):
    # The config refuses it (so no manifest, summary or log can carry it); the card's own
    # scrubbing (test_credentials_are_cut_from_urls) is a second line of defence.
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\nteacher:\n  backend: openai\n"
                      f"  base_urls: ['http://bob:{URL_PASSWORD}@teacher.example:8000/v1']\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert "credentials in a URL" in str(error.value) and URL_PASSWORD not in str(error.value)


def test_card_names_the_terms_of_an_embedded_base_model(tmp_path):
    """A student tuned from an embedded base (Gemma 3, say) carries its base's terms in the card."""
    (tmp_path / "embedded_student.json").write_text(json.dumps(
        {"student": "gemma3-270m", "title": "Gemma 3 270M base", "terms": "Gemma Terms of Use"}))
    card = render_model_card({}, {"base_model_dir": str(tmp_path), "settings": {"prompt_format": "alpaca"}}, "adapter")
    assert "The base model (Gemma 3 270M base) is under Gemma Terms of Use; its terms apply to these weights too." in card
    plain = render_model_card({}, {"base_model_dir": str(tmp_path / "elsewhere"), "settings": {}}, "adapter")
    assert "terms apply" not in plain
