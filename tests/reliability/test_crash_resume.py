"""SIGKILL during rating and during fine-tuning, then the same command again: it resumes, and
ends where an uninterrupted run ends. (SIGKILL during generation: tests/flows/test_secrets_and_crash.py.)

Rating runs the real `distill filter` command on the real embedded judge (llama.cpp serving
SmolLM2, greedy at temperature 0, one request at a time), so an interrupted-and-resumed run can
be compared with an uninterrupted one record for record.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_runs import DISTILL, REPO, read_jsonl, run_distill, write_config

RECORDS = [
    {"id": "g0", "instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"id": "g1", "instruction": "Add the two numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"id": "g2", "instruction": "Give the opposite of the word.", "input": "cold", "output": "Hot."},
    {"id": "g3", "instruction": "Say hello in Spanish.", "input": "", "output": "Hola."},
    {"id": "g4", "instruction": "Name a primary colour.", "input": "", "output": "Green is a primary colour."},
    {"id": "g5", "instruction": "Write the number in digits.", "input": "twelve", "output": "21"},
]


RATED = RECORDS[:4]  # four ratings of 32 tokens keep the three runs within two minutes


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 600) -> None:
    """Poll until condition() holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.1)


def journal_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.is_file() else 0


@pytest.mark.server
def test_sigkill_during_rating_then_rerun_gives_the_uninterrupted_records(tmp_path):
    config = write_config(tmp_path / "rate.yaml", teacher={"backend": "embedded", "max_in_flight": 1},
                          filter={"selection": "top_k", "top_k": 2, "max_tokens": 32, "requests_per_shard": 2})
    runs = {}
    for name in ("whole", "killed"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RATED))
    result = run_distill("filter", str(config), "--run-dir", str(runs["whole"]))
    assert result.returncode == 0, result.stderr[-3000:]

    command = [DISTILL, "filter", str(config), "--run-dir", str(runs["killed"])]
    journal = runs["killed"] / "work" / "rate_requests.jsonl"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: journal_lines(journal) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rated_before_kill = journal_lines(journal)
    assert 2 <= rated_before_kill < len(RATED), "the kill should land mid-rating"
    assert not (runs["killed"] / "stages" / "filter.json").exists()
    assert not (runs["killed"] / "filtered.jsonl").exists()  # never a half-written output

    result = run_distill("filter", str(config), "--run-dir", str(runs["killed"]))
    assert result.returncode == 0, result.stderr[-3000:]
    entries = read_jsonl(journal)
    assert len(entries) == len({e["key"] for e in entries}) == len(RATED)  # each rated once, none again
    for name in ("rated.jsonl", "filtered.jsonl", "rejected.jsonl"):
        assert (runs["killed"] / name).read_text() == (runs["whole"] / name).read_text(), name
    whole = json.loads((runs["whole"] / "stages" / "filter.json").read_text())
    resumed = json.loads((runs["killed"] / "stages" / "filter.json").read_text())
    assert resumed["kept"] == whole["kept"] and resumed["counts"] == whole["counts"]


def test_sigkill_during_fine_tuning_then_rerun_resumes_from_the_last_checkpoint(tmp_path, student_cache_dir):
    # The real `distill finetune` command, with a checkpoint every step (finetune.save_steps).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "filtered.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 2))
    config = write_config(tmp_path / "tune.yaml", finetune={
        "max_length": 96, "batch_size": 2, "max_steps": 6, "learning_rate": 1e-3, "seed": 0, "save_steps": 1,
        "heldout_records": 0})
    command = [DISTILL, "finetune", str(config), "--run-dir", str(run_dir), "--cache-dir", str(student_cache_dir)]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    out = run_dir / "finetune"
    checkpoint_2 = out / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    wait_for(checkpoint_2.is_file, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "adapter").exists() and not (run_dir / "stages" / "finetune.json").exists()
    complete = sorted(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert complete and 2 <= complete[-1] < 6, complete

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "stages" / "finetune.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from"].endswith(f"checkpoint-{complete[-1]}")
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]  # no step twice
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
