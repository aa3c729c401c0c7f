"""Batch mode (`teacher.mode: batch`) through the real `distill` command: generate and filter end
to end, a run killed while its batch runs resumes without submitting it again, a Ctrl-C cancels
its batches, and an expired batch is followed by one of only the requests without a result.

OpenAI's Batch service cannot be reached from here; tests/batch_standin.py implements its
documented endpoints (it says why) and forwards every line to the real embedded teacher, so the
replies, records and ratings are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from batch_standin import BatchStandin
from cli_runs import DISTILL, REPO, read_jsonl, run_distill, write_config

pytestmark = pytest.mark.server

PRICES = {"price_input_per_mtok": 0.15, "price_output_per_mtok": 0.60}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from backends.embedded_server import EmbeddedServer

    with EmbeddedServer(log_path=tmp_path_factory.mktemp("teacher") / "llama.log") as server:
        yield server


def batch_teacher(url: str, **settings) -> dict:
    return {"backend": "openai", "model": "smollm2-135m-instruct", "base_urls": [url], "mode": "batch",
            "batch_poll_s": 0.2, **PRICES, **settings}


def journal(run_dir, name: str) -> dict[str, dict]:
    return {entry["key"]: entry for entry in read_jsonl(run_dir / "work" / f"{name}_requests.jsonl")}


def ledger_states(run_dir, name: str) -> list[str]:
    """The latest state of each batch in a stage's ledger (none before the first is written)."""
    path = run_dir / "work" / f"{name}_batches.jsonl"
    if not path.is_file():
        return []
    latest = {entry["key"]: entry["state"] for entry in read_jsonl(path)}
    return list(latest.values())


def start_distill(*args: str) -> subprocess.Popen:
    return subprocess.Popen([DISTILL, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(condition, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_batch_mode_runs_generate_and_filter_end_to_end(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        # JSON replies of two tasks each: the 135M teacher keeps a record or two from four requests.
        config = write_config(tmp_path / "batch.yaml", teacher=batch_teacher(api.base_url),
                              generate={"max_requests": 4, "requests_per_shard": 2, "max_tokens": 200,
                                        "reply_format": "json", "tasks_per_request": 2},
                              filter={"selection": "top_k", "top_k": 3, "max_tokens": 48})
        run_dir = tmp_path / "run"
        result = run_distill("run", str(config), "--run-dir", str(run_dir), "--stages", "generate,filter",
                             timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        generate_batch, rate_batch = api.created
        assert api.lines_per_batch[generate_batch] == [f"gen-{i:06d}" for i in range(4)]  # one wave, one file
    generated = journal(run_dir, "generate")
    assert sorted(generated) == [f"gen-{i:06d}" for i in range(4)] and all(e["ok"] for e in generated.values())
    records = read_jsonl(run_dir / "generated.jsonl")
    assert records and sorted(api.lines_per_batch[rate_batch]) == sorted(journal(run_dir, "rate"))
    assert len(journal(run_dir, "rate")) == len(records)
    assert ledger_states(run_dir, "generate") == ["collected"] and ledger_states(run_dir, "rate") == ["collected"]
    assert len(read_jsonl(run_dir / "filtered.jsonl")) == min(3, len(records))

    # Charged at the batch prices (half of online); the report shows both, and the estimate.
    report = json.loads((run_dir / "report.json").read_text())
    cost = report["cost"]
    tokens = [(e["prompt_tokens"], e["completion_tokens"]) for name in ("generate", "rate")
              for e in journal(run_dir, name).values()]
    online = sum(p * 0.15 + c * 0.60 for p, c in tokens) / 1e6
    assert cost["usd_if_online"] == pytest.approx(online, rel=1e-3)
    assert cost["usd"] == pytest.approx(online / 2, rel=1e-3)
    markdown = (run_dir / "report.md").read_text()
    assert "## Cost: estimate against actual" in markdown and "online would have cost" in markdown
    estimate = json.loads((run_dir / "estimate.json").read_text())
    assert estimate["stages"][0]["parts"][0]["mode"] == "batch"


def test_a_batch_run_killed_mid_batch_reattaches_and_pays_for_nothing_twice(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        config = write_config(tmp_path / "kill.yaml", teacher=batch_teacher(api.base_url),
                              generate={"max_requests": 4, "requests_per_shard": 2, "max_tokens": 16})
        run_dir = tmp_path / "run"
        api.hold.set()  # the batch stays in progress until the run has been killed
        process = start_distill("generate", str(config), "--run-dir", str(run_dir))
        try:
            wait_for(lambda: api.created)
            wait_for(lambda: "submitted" in ledger_states(run_dir, "generate"))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert not api.cancels  # a kill cancels nothing: the batch runs on, paid for
        api.hold.clear()
        result = run_distill("generate", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(api.created) == 1 and "reattaching to 1 batch(es)" in result.stderr
        assert sorted(api.forwarded) == [f"gen-{i:06d}" for i in range(4)]  # each request run once
    entries = journal(run_dir, "generate")
    assert sorted(entries) == [f"gen-{i:06d}" for i in range(4)] and all(e["ok"] for e in entries.values())
    assert json.loads((run_dir / "stages" / "generate.json").read_text())["requests"] == 4


def test_ctrl_c_cancels_the_batches_and_the_rerun_collects_and_resubmits(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        config = write_config(tmp_path / "cancel.yaml", teacher=batch_teacher(api.base_url),
                              generate={"max_requests": 4, "requests_per_shard": 2, "max_tokens": 16})
        run_dir = tmp_path / "run"
        api.hold.set()
        process = start_distill("generate", str(config), "--run-dir", str(run_dir))
        wait_for(lambda: "submitted" in ledger_states(run_dir, "generate"))
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr[-3000:]
        assert api.cancels == api.created and "cancelled" in stderr
        assert ledger_states(run_dir, "generate") == ["cancel_requested"]
        api.hold.clear()
        result = run_distill("generate", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        cancelled, again = api.created
        assert api.batches[cancelled]["status"] == "cancelled"
        assert api.lines_per_batch[again] == [f"gen-{i:06d}" for i in range(4)]
    assert all(entry["ok"] for entry in journal(run_dir, "generate").values())


def test_an_expired_batch_is_followed_by_one_of_only_the_requests_without_a_result(teacher, tmp_path):
    with BatchStandin(teacher.base_url, expire_after=3) as api:
        config = write_config(tmp_path / "expiry.yaml", teacher=batch_teacher(api.base_url),
                              generate={"max_requests": 5, "requests_per_shard": 5, "max_tokens": 16})
        result = run_distill("generate", str(config), "--run-dir", str(tmp_path / "run"))
        assert result.returncode == 0, result.stderr[-3000:]
        expired, again = api.created
        assert api.batches[expired]["status"] == "expired"
        assert api.lines_per_batch[again] == ["gen-000003", "gen-000004"]
        assert sorted(api.forwarded) == [f"gen-{i:06d}" for i in range(5)]
    entries = journal(tmp_path / "run", "generate")
    assert all(e["ok"] for e in entries.values())
    assert [entries[f"gen-{i:06d}"].get("attempt_errors") for i in (2, 3)] == [None, ["batch_expired"]]
