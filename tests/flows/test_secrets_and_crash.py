"""Secrets never reach any file, and a SIGKILLed generate run resumes without loss or duplicates.

Both run the real `distill generate` command: against llm-katan (a real OpenAI-compatible
server) for the secret, against the real embedded teacher for the crash.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")


def test_api_key_is_never_written(katan, tmp_path):
    url = katan()
    secret = "sk-test-PLANTED-0123456789abcdef"
    config = tmp_path / "remote.yaml"
    config.write_text(
        f"name: remote\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
        f"teacher:\n  backend: openai\n  model: echo\n  base_urls: ['{url}']\n  api_key_env: DISTILL_TEST_KEY\n"
        "generate:\n  max_requests: 6\n  requests_per_shard: 3\n  max_tokens: 64\n"
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "DISTILL_TEST_KEY": secret}
    result = subprocess.run([DISTILL, "generate", str(config), "--run-dir", str(run_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((run_dir / "work" / "generate_requests.jsonl").read_text().splitlines()) == 6
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout + result.stderr
    # Without the variable the run stops with a clear message naming it, not the key.
    env.pop("DISTILL_TEST_KEY")
    result = subprocess.run([DISTILL, "generate", str(config), "--run-dir", str(tmp_path / "run2")], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and "DISTILL_TEST_KEY" in result.stderr


@pytest.mark.server
def test_sigkill_during_generation_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    command = [DISTILL, "generate", "configs/demo.yaml", "--run-dir", str(run_dir),
               "--set", "generate.strategy=self_instruct",
               "--set", "generate.max_requests=6", "--set", "generate.requests_per_shard=2",
               "--set", "generate.max_tokens=96"]
    journal = run_dir / "work" / "generate_requests.jsonl"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 2):
        time.sleep(0.2)
    servers = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "llama_cpp.server"],
                             capture_output=True, text=True).stdout.split()
    assert servers, "the embedded server should be the run's child"
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = journal.read_text().splitlines()
    assert 2 <= len(before) < 6, "the kill should land mid-generation"
    assert not (run_dir / "stages" / "generate.json").exists()

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    keys = [e["key"] for e in entries]
    assert sorted(keys) == [f"gen-{i:06d}" for i in range(6)]  # every request once: none lost, none repeated
    assert [json.loads(line) for line in before if line.endswith("}")] == entries[: len(before)]  # kept as written
    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    assert summary["requests"] == 6
    generated = [json.loads(line) for line in (run_dir / "generated.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in generated}) == len(generated) == summary["kept"]
    # The embedded server died with the killed run: no llama.cpp server is left behind.
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
