"""`distill estimate`: requests, tokens, cost online and with the Batch API, time, and where a budget
would stop a run, from the config's real prompts, before anything is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")


def estimate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # A proxy that refuses, for everything but this machine: the estimate must not need the network
    # (it counts tokens offline); a pilot talks to the teacher it starts here.
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "OMP_NUM_THREADS": "1"}
    return subprocess.run([DISTILL, "estimate", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_the_alpaca_estimate_prints_online_and_batch_costs_without_the_network(tmp_path):
    result = estimate("configs/alpaca.yaml", "--json", str(tmp_path / "estimate.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "USD online" in result.stdout and "USD batch" in result.stdout
    data = json.loads((tmp_path / "estimate.json").read_text())
    # A remote teacher, offline: tiktoken's tables (when installed) cannot be fetched.
    assert data["prompt_tokens_counted_by"].startswith(("characters / 4", "tiktoken"))
    (generate,) = data["stages"][0]["parts"]
    # 52,000 records at the assumed 4 a request: 13,000 requests online; a batch wave asks for all 20,000.
    assert (generate["requests"], generate["batch_requests"]) == (13_000, 20_000)
    assert generate["usd_online"] == pytest.approx(
        (generate["prompt_tokens"] * 0.15 + generate["completion_tokens"] * 0.60) / 1e6, abs=1e-3)
    per_request_batch = generate["usd_batch"] / generate["batch_requests"]
    assert per_request_batch == pytest.approx(generate["usd_online"] / generate["requests"] / 2, rel=1e-3)
    assert generate["completion_tokens_per_request"] == pytest.approx(0.6 * 3072)
    assert [stage["stage"] for stage in data["stages"]] == ["generate", "filter", "evaluate"]
    assert data["budget"]["stops"] is None and "covers the whole run" in result.stdout
    assert f"{data['total']['usd_online']:,.2f}" in result.stdout and f"{data['total']['usd_batch']:,.2f}" in result.stdout


def test_the_estimate_says_where_a_budget_would_stop_the_run(tmp_path):
    result = estimate("configs/alpaca.yaml", "--set", "budget.max_cost_usd=5", "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "e.json").read_text())
    (generate,) = data["stages"][0]["parts"]
    after = int(5 / (generate["usd_online"] / generate["requests"]))
    assert data["budget"]["stops"] == {"stage": "generate", "part": "tasks", "after_requests": after,
                                       "of_requests": 13_000}
    assert f"the budget would stop the run in generate (tasks) after about {after:,} of 13,000 requests" in result.stdout
    # In batch mode the same budget goes further: the wave is counted at the batch prices.
    result = estimate("configs/alpaca.yaml", "--set", "budget.max_cost_usd=5", "--set", "teacher.mode=batch",
                      "--json", str(tmp_path / "b.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    stops = json.loads((tmp_path / "b.json").read_text())["budget"]["stops"]
    assert stops["of_requests"] == 20_000 and stops["after_requests"] > after


@pytest.mark.server
def test_a_pilot_measures_replies_and_the_prompt_count_matches_the_teachers_own(tmp_path):
    """The embedded teacher: its prompts are counted by its own tokenizer, and a pilot of two real
    requests per part measures the replies; the server's own prompt counts agree with the estimate's."""
    small = ["--set", "generate.strategy=self_instruct", "--set", "generate.max_tokens=32", "--set", "filter.max_tokens=16", "--set",
             "evaluate.max_new_tokens=16", "--set", "evaluate.judge_max_tokens=16"]
    result = estimate("configs/demo.yaml", "--pilot", "2", *small, "--json", str(tmp_path / "pilot.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "pilot.json").read_text())
    assert data["prompt_tokens_counted_by"].startswith("the teacher's own tokenizer")
    pilot = data["pilot"]
    assert pilot["n"] == 2 and all(pilot[part]["answered"] >= 1 for part in ("generate", "rate", "teacher_answers"))
    (generate,) = data["stages"][0]["parts"]
    assert generate["completion_tokens_per_request"] == pytest.approx(pilot["generate"]["completion_tokens"], abs=0.1)
    assert generate["reply_length"].startswith("pilot")
    assert "pilot: 2 requests per part" in result.stdout
    # The estimate's count of the first two rendered prompts against what the server counted for
    # them (its chat template adds a system prompt the estimate approximates with a constant).
    from pipeline.config import load_config
    from pipeline.estimate import prompt_of, token_counter
    from selfinstruct.generate import SelfInstructRun
    from selfinstruct.prompt import load_template
    from core.records import read_seed_tasks

    config = load_config(REPO / "configs" / "demo.yaml", [s.split("--set ")[-1] for s in small[1::2]])
    count, _ = token_counter(config.teacher)
    run = SelfInstructRun(config.generate, read_seed_tasks(config.seed_tasks), load_template("numbered"))
    counted = sum(count(prompt_of(run.request(i))) for i in range(2)) / 2
    assert counted == pytest.approx(pilot["generate"]["prompt_tokens"], rel=0.1)
