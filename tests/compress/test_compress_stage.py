"""The compress stage end to end on the embedded default: the SmolLM2 student with a real
LoRA adapter -> merged -> GGUF Q8_0 / Q4_0 and dynamic int8 -> variants.json -> each variant
answers prompts (GGUF ones served by the real llama.cpp server) -> a rerun does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

from compress.variants import answer_with_variant  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from core.rundir import RunDir  # noqa: E402
from pipeline.session import run_stage_in  # noqa: E402
from pipeline.stages.compress import variants_path  # noqa: E402
from core.errors import StageInputError  # noqa: E402
from student_prompts import PROMPTS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ["gguf_f16", "gguf_q8_0", "gguf_q4_0", "torch_int8"]
MAX_NEW_TOKENS = 24


def compress_stage(config: PipelineConfig, rundir: RunDir) -> dict:
    """The compress stage run as `distill run` runs it (a finished stage is skipped)."""
    return run_stage_in(rundir, config, "compress").to_json()


def pipeline_config(**compress) -> PipelineConfig:
    return PipelineConfig(name="compress-test", seed_tasks=REPO / "data" / "seed_tasks.jsonl",
                          compress={"enabled": True, "variants": VARIANTS, **compress})


def finetuned_rundir(root: Path, student_dir: Path, adapter_dir: Path) -> RunDir:
    """A run directory as the finetune stage leaves it (its summary names base and adapter)."""
    rundir = RunDir(root).create()
    rundir.mark_done("finetune", {"base_model": str(student_dir), "adapter": str(adapter_dir), "merged": None,
                                  "method": "lora"})
    return rundir


@pytest.fixture(scope="module")
def compressed(student_dir, adapter_dir, tmp_path_factory):
    rundir = finetuned_rundir(tmp_path_factory.mktemp("run"), student_dir, adapter_dir)
    return rundir, compress_stage(pipeline_config(), rundir)


def test_variants_json_describes_every_variant(compressed):
    rundir, summary = compressed
    variants = json.loads(variants_path(rundir).read_text())
    assert [v["label"] for v in variants] == VARIANTS
    by_label = {v["label"]: v for v in variants}
    for variant in variants:
        path = Path(variant["path"])
        assert path.exists() and path.is_relative_to(rundir.root / "compress" / variant["label"])
        assert variant["size_on_disk_bytes"] == summary["variants"][variant["label"]] > 0
    assert by_label["gguf_q8_0"]["kind"] == "gguf" and by_label["gguf_q8_0"]["method"]["type"] == "Q8_0"
    assert "convert_hf_to_gguf.py" in by_label["gguf_q4_0"]["method"]["tool"]  # llama.cpp's own converter
    assert by_label["torch_int8"]["method"]["dtype"] == "qint8"
    sizes = {label: v["size_on_disk_bytes"] for label, v in by_label.items()}
    merged_bytes = sum(p.stat().st_size for p in Path(summary["merged"]).glob("*.safetensors"))
    assert sizes["gguf_q4_0"] < sizes["gguf_q8_0"] < sizes["gguf_f16"] < sizes["torch_int8"] < merged_bytes
    assert not list((rundir.root / "compress").rglob(".*"))  # no temporary file left


@pytest.mark.server
@pytest.mark.parametrize("label", ["gguf_q8_0", "torch_int8"])
def test_a_variant_answers_like_the_student(compressed, label):
    rundir, _ = compressed
    variant = next(v for v in json.loads(variants_path(rundir).read_text()) if v["label"] == label)
    answers, efficiency = answer_with_variant(variant, PROMPTS, "alpaca", MAX_NEW_TOKENS)
    assert [a["id"] for a in answers] == [p["id"] for p in PROMPTS]
    for answer in answers:
        assert set(answer) == {"id", "answer", "completion_tokens", "latency_s", "ttft_s"}
        assert 0 < answer["completion_tokens"] <= MAX_NEW_TOKENS
        assert 0 < answer["ttft_s"] <= answer["latency_s"]
    assert any(a["answer"] for a in answers)
    assert efficiency["identity"] == f"{label} ({variant['kind']})"
    assert 130e6 < efficiency["parameters"] < 140e6  # SmolLM2-135M, tied embeddings counted once
    assert efficiency["size_on_disk_bytes"] == variant["size_on_disk_bytes"]
    assert efficiency["peak_memory_bytes"] > 50e6
    assert efficiency["answers"] == len(PROMPTS) and efficiency["tokens_per_s"] > 0


@pytest.mark.server
def test_the_served_f16_variant_answers_as_the_student_does(compressed, merged_dir):
    """Through the whole serving path (llama.cpp server, completions API, the student's
    Alpaca prompt), the F16 file answers exactly what transformers answers on the merged weights."""
    from student.generation import answer_prompts, load_student

    rundir, _ = compressed
    variant = next(v for v in json.loads(variants_path(rundir).read_text()) if v["label"] == "gguf_f16")
    served, _ = answer_with_variant(variant, PROMPTS, "alpaca", MAX_NEW_TOKENS)
    model, tokenizer = load_student(merged_dir, None)
    student = answer_prompts(model, tokenizer, PROMPTS, "alpaca", MAX_NEW_TOKENS)
    assert [a["answer"] for a in served] == [a["answer"] for a in student]


def test_rerun_skips_the_finished_stage(compressed):
    rundir, summary = compressed
    files = {p: p.stat().st_mtime_ns for p in (rundir.root / "compress").rglob("*") if p.is_file()}
    assert compress_stage(pipeline_config(), rundir) == summary
    assert {p: p.stat().st_mtime_ns for p in (rundir.root / "compress").rglob("*") if p.is_file()} == files


def test_a_lost_variant_is_remade_alone(compressed, student_dir, adapter_dir, tmp_path):
    """After a crash (no stage summary), only what is missing is made again."""
    rundir, _ = compressed
    (rundir.stages / "compress.json").unlink()
    kept = rundir.root / "compress" / "torch_int8" / "int8_weights.safetensors"
    before = kept.stat().st_mtime_ns
    (rundir.root / "compress" / "gguf_q4_0" / "model-q4_0.gguf").unlink()
    summary = compress_stage(pipeline_config(), rundir)
    assert (rundir.root / "compress" / "gguf_q4_0" / "model-q4_0.gguf").is_file()
    assert kept.stat().st_mtime_ns == before
    assert set(summary["variants"]) == set(VARIANTS)


def test_compress_without_a_finetuned_student_is_refused(tmp_path):
    with pytest.raises(StageInputError, match="run the finetune stage"):
        compress_stage(pipeline_config(), RunDir(tmp_path).create())
    assert not (tmp_path / "compress").exists()


def test_bitsandbytes_variants_are_refused_before_any_work_without_cuda(student_dir, adapter_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bitsandbytes variants are allowed here")
    rundir = finetuned_rundir(tmp_path / "run", student_dir, adapter_dir)
    with pytest.raises(StageInputError, match="compress.variants: bitsandbytes variants .* need a CUDA GPU"):
        compress_stage(pipeline_config(variants=["gguf_q8_0", "bnb_4bit"]), rundir)
    assert not (rundir.root / "compress").exists()


def test_cli_compress_reports_a_missing_finetune_and_exits_nonzero(tmp_path):
    config = tmp_path / "compress.yaml"
    config.write_text(yaml.safe_dump({"name": "compress-cli", "seed_tasks": str(REPO / "data" / "seed_tasks.jsonl"),
                                      "compress": {"enabled": True}}))
    done = subprocess.run([sys.executable, "-m", "distill.cli", "compress", str(config), "--run-dir",
                           str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "run the finetune stage" in done.stderr + done.stdout
