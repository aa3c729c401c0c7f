"""Evol-Instruct through the real `distill generate` command on the real embedded teacher."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.server
def test_evol_instruct_generate_stage(tmp_path):
    run_dir = tmp_path / "run"
    command = [str(Path(sys.executable).parent / "distill"), "generate", "configs/evol-instruct.yaml",
               "--run-dir", str(run_dir), "--set", "generate.evolve.rounds=1", "--set", "generate.evolve.pool_size=3",
               "--set", "generate.evolve.answer_max_tokens=64", "--set", "generate.evolve.max_tokens=96"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    assert summary["strategy"] == "evol_instruct"
    kept = [json.loads(line) for line in (run_dir / "generated.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (run_dir / "rejected.jsonl").read_text().splitlines()]
    # 3 evolving requests; every evolution is either kept or rejected with a reason.
    journal = [json.loads(line) for line in (run_dir / "work" / "generate_requests.jsonl").read_text().splitlines()]
    evolving = [entry for entry in journal if not entry["key"].endswith("-answer")]
    assert len(evolving) == 3
    assert len(kept) + len(rejected) == 3
    assert sum(summary["dropped"].values()) == len(rejected) == len(rejected)
    assert all(r["reason"] for r in rejected)
    for record in kept:
        assert record["instruction"] and record["output"] and record["operation"]
