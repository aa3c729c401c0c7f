"""A completion-style teacher (`teacher.api: completions`) through the real generate stage.

Alpaca's teacher (text-davinci-003) was a completion model: it continued the prompt, which
ends with the opening of the next task ("4. Instruction:"). The embedded llama.cpp server
serves the same `/v1/completions` route, so this runs the real CLI against the real model.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")


@pytest.mark.server
def test_generate_with_a_completion_teacher(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [DISTILL, "generate", "configs/demo.yaml", "--run-dir", str(run_dir),
         "--set", "teacher.api=completions", "--set", "generate.strategy=self_instruct", "--set", "generate.max_requests=2",
         "--set", "generate.requests_per_shard=2", "--set", "generate.max_tokens=192"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    # Both requests went to the completions route, none to chat.
    server_log = (run_dir / "logs" / "embedded_server.log").read_text()
    assert server_log.count("POST /v1/completions") == 2, server_log[-2000:]
    assert "POST /v1/chat/completions" not in server_log

    entries = [json.loads(line) for line in (run_dir / "work" / "generate_requests.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and all(e["ok"] and e["text"].strip() for e in entries)
    assert all(e["completion_tokens"] > 0 for e in entries)

    # Every parsed or unreadable block is accounted for in the stage's counts.
    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    assert summary["requests"] == 2 and summary["requests_failed"] == 0
    kept = [json.loads(line) for line in (run_dir / "generated.jsonl").read_text().splitlines() if line]
    assert len(kept) == summary["kept"]
    # Blocks that could not be read are "parse:" drops; every parsed task is kept or dropped once.
    assert summary["tasks_parsed"] == summary["kept"] + sum(
        n for reason, n in summary["dropped"].items() if not reason.startswith("parse:"))
