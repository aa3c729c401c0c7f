"""Webhook notifications of finished and failed runs, received by a real local HTTP server, and
the webhook URL (which carries a token) never written to the run directory, the output or
Prefect's own database of logs.

Runs go through the real `distill run` command with llm-katan's echo server as the teacher
(a real OpenAI-compatible server; the test is about the notification, not the replies).
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.config import NotifyConfig
from pipeline.notify import notification_payload, post_notification

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")
TOKEN = "whk-PLANTED-7f3a9c0d1e2b"


@pytest.fixture
def webhook():
    """A real HTTP server on loopback that records every POST it receives."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{TOKEN}", received
    server.shutdown()
    server.server_close()


def _config(tmp_path: Path, teacher: str) -> Path:
    config = tmp_path / "notify.yaml"
    config.write_text(
        f"name: notified\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
        f"teacher:\n  backend: openai\n  model: echo\n  base_urls: ['{teacher}']\n"
        "generate:\n  max_requests: 2\n  requests_per_shard: 1\n  max_tokens: 64\n"
        "notify:\n  webhook_url_env: DISTILL_TEST_WEBHOOK\n"
    )
    return config


def _run(config: Path, run_dir: Path, stages: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([DISTILL, "run", str(config), "--run-dir", str(run_dir), "--stages", stages],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_finished_and_failed_runs_notify_and_the_url_is_never_written(katan, webhook, tmp_path):
    url, received = webhook
    config = _config(tmp_path, katan())
    home = tmp_path / "prefect-home"
    env = {**os.environ, "DISTILL_TEST_WEBHOOK": url, "PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1"}

    finished = _run(config, tmp_path / "ok", "generate", env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert len(received) == 1
    assert received[0]["path"] == f"/hooks/{TOKEN}"
    payload = received[0]["json"]
    assert payload["outcome"] == "completed" and payload["config"] == "notified"
    assert payload["run_dir"] == str((tmp_path / "ok").resolve())
    assert payload["headline"]

    # The filter stage has nothing to read in an empty run directory: the run fails.
    failed = _run(config, tmp_path / "empty", "filter", env)
    assert failed.returncode != 0
    assert len(received) == 2
    assert received[1]["json"]["outcome"] == "failed"
    assert "generated.jsonl" in received[1]["json"]["message"]

    for output in (finished, failed):
        assert TOKEN not in output.stdout + output.stderr
    files = [p for root in (tmp_path / "ok", tmp_path / "empty", home) for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)  # Prefect's database, where the run logs went
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path


def test_unset_variable_and_unreachable_webhook_do_not_fail_anything(monkeypatch, caplog):
    settings = NotifyConfig(webhook_url_env="DISTILL_TEST_WEBHOOK_UNSET", timeout_s=2)
    payload = notification_payload("failed", "run-a", "0000", "cfg", "/tmp/x", "boom")
    monkeypatch.delenv("DISTILL_TEST_WEBHOOK_UNSET", raising=False)
    assert post_notification(settings, payload) is False
    assert "DISTILL_TEST_WEBHOOK_UNSET" in caplog.text
    # Port 9 on loopback: nothing listens there, the connection is refused.
    monkeypatch.setenv("DISTILL_TEST_WEBHOOK_UNSET", f"http://127.0.0.1:9/hooks/{TOKEN}")
    assert post_notification(settings, payload) is False
    assert TOKEN not in caplog.text
    # An outcome the config does not ask for is not sent at all.
    only_failures = NotifyConfig(webhook_url_env="DISTILL_TEST_WEBHOOK_UNSET", on=["failed"])
    assert post_notification(only_failures, notification_payload("completed", "r", "0", "c", None, None)) is False
