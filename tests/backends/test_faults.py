"""Faults through the real request path: runner + OpenAICompatibleBackend against llm-katan.

llm-katan (a third-party OpenAI-compatible server, echo mode) injects the faults; one more
test uses a tiny HTTP server of its own to check that Retry-After is honoured.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import RetryPolicy, run_requests
from core.records import Journal


def requests(n: int, prefix: str = "f") -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}-{i:04d}", messages=[{"role": "user", "content": f"question {i}"}],
                        max_tokens=16, meta={"i": i}) for i in range(n)]


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def katan_answered(url: str) -> int:
    """Chat completions llm-katan answered with 200 (its /metrics counter; faults are not counted)."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=5).read().decode()
    (line,) = [line for line in text.splitlines() if line.startswith("llm_katan_requests_total{")]
    return int(float(line.rsplit(" ", 1)[1]))


def test_overloaded_server_503s_are_retried_until_all_succeed(katan, tmp_path):
    # 16 in flight against a server that takes 4: the rest are answered 503 and retried.
    # llm-katan counts a request as in flight only across an await, so without --latency-ms its
    # counter never passes 1 and --max-inflight alone would never answer 503; --max-concurrent
    # (default 1) lets the 4 it admits run side by side.
    url = katan("--max-inflight", "4", "--max-concurrent", "16", "--latency-ms", "20")
    backend = OpenAICompatibleBackend("echo", [url])
    policy = RetryPolicy(max_retries=60, base_delay_s=0.005, max_delay_s=0.03)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(48), journal, max_in_flight=16, policy=policy)
    assert stats.errors.get("HTTP 503", 0) > 0, stats
    assert set(stats.errors) == {"HTTP 503"}
    assert stats.retries == stats.errors["HTTP 503"]
    assert stats.sent == 48 and stats.succeeded == 48 and stats.failed == 0
    assert [o.key for o in outcomes] == [f"f-{i:04d}" for i in range(48)]
    assert all(o.ok and "question" in o.text for o in outcomes)
    assert sum(o.attempts for o in outcomes) == stats.sent + stats.retries
    assert sorted(e["key"] for e in journal_lines(tmp_path / "j.jsonl")) == [f"f-{i:04d}" for i in range(48)]
    assert katan_answered(url) == 48


def test_client_timeouts_are_counted_and_failures_listed(katan, tmp_path):
    url = katan("--latency-ms", "300", "--max-concurrent", "64")
    backend = OpenAICompatibleBackend("echo", [url], timeout_s=0.1)
    policy = RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.02)
    started = time.perf_counter()
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(6), journal, max_in_flight=6, policy=policy)
    assert time.perf_counter() - started < 10
    assert stats.sent == 6 and stats.succeeded == 0 and stats.failed == 6
    assert stats.errors == {"APITimeoutError": 18}  # 6 requests x 3 attempts, every one timed out
    assert stats.retries == 12
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert outcome.ok is False and outcome.attempts == 3
        assert isinstance(outcome.error, str) and "APITimeoutError" in outcome.error
        assert outcome.text is None and "text" not in outcome.to_journal()
    listed = journal_lines(tmp_path / "j.jsonl")
    assert sorted(e["key"] for e in listed) == [f"f-{i:04d}" for i in range(6)]
    assert all(not e["ok"] and "APITimeoutError" in e["error"] for e in listed)


def test_gateway_timeouts_504_are_retried_then_failed_and_listed(katan, tmp_path):
    # The server answers its first 5 requests, then 504 to everything.
    url = katan("--timeout-after", "5")
    backend = OpenAICompatibleBackend("echo", [url])
    policy = RetryPolicy(max_retries=3, base_delay_s=0.005, max_delay_s=0.01)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(12), journal, max_in_flight=4, policy=policy)
    assert stats.sent == 12 and stats.succeeded == 5 and stats.failed == 7
    assert stats.errors == {"HTTP 504": 7 * 4}
    assert stats.retries == 7 * 3
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 7
    assert all("HTTP 504" in o.error and o.attempts == 4 for o in failed)
    assert all(o.attempts == 1 for o in outcomes if o.ok)
    listed = {e["key"]: e for e in journal_lines(tmp_path / "j.jsonl")}
    assert len(listed) == 12 and sum(not e["ok"] for e in listed.values()) == 7
    assert katan_answered(url) == 5  # no success was asked for twice


def test_mixed_errors_every_request_accounted_for_once_and_rerun_sends_only_the_rest(katan, tmp_path):
    url = katan("--error-rate", "0.2")
    path = tmp_path / "j.jsonl"
    everything = requests(300)
    keys = [r.key for r in everything]

    # First run: 280 of the 300 (the last 20 are "missing", as if the run was killed), and
    # one retry only, so that some requests fail (0.2 ** 2: about 11 of 280).
    policy = RetryPolicy(max_retries=1, base_delay_s=0.001, max_delay_s=0.005)
    with Journal(path) as journal:
        first, stats1 = run_requests(OpenAICompatibleBackend("echo", [url]), everything[:280], journal,
                                     max_in_flight=16, policy=policy)
    assert stats1.sent == 280 == stats1.succeeded + stats1.failed
    assert stats1.reused == 0 and stats1.errors.get("HTTP 500", 0) > 0
    assert set(stats1.errors) == {"HTTP 500"}
    assert stats1.errors["HTTP 500"] == stats1.retries + stats1.failed
    assert [o.key for o in first] == keys[:280]  # each exactly once, in request order
    assert sum(o.attempts for o in first) == stats1.sent + stats1.retries
    lines = journal_lines(path)
    assert sorted(e["key"] for e in lines) == keys[:280]  # each exactly once in the journal
    assert sum(e["ok"] for e in lines) == stats1.succeeded
    failed_keys = {o.key for o in first if not o.ok}
    assert all("HTTP 500" in o.error and o.attempts == 2 for o in first if not o.ok)
    assert katan_answered(url) == stats1.succeeded  # nothing the server answered was asked for again

    # Rerun over the same journal: only the failed and the missing requests are sent.
    policy = RetryPolicy(max_retries=10, base_delay_s=0.001, max_delay_s=0.005)
    sent_second = []
    with Journal(path) as journal:
        second, stats2 = run_requests(OpenAICompatibleBackend("echo", [url]), everything, journal,
                                      max_in_flight=16, policy=policy,
                                      on_outcome=lambda entry: sent_second.append(entry.key))
    assert stats2.reused == stats1.succeeded
    assert stats2.sent == len(failed_keys) + 20 == stats2.succeeded + stats2.failed
    assert stats2.failed == 0
    assert set(sent_second) == failed_keys | set(keys[280:]) and len(sent_second) == stats2.sent
    assert [o.key for o in second] == keys and all(o.ok for o in second)
    lines = journal_lines(path)
    assert len(lines) == 280 + stats2.sent
    assert sorted({e["key"] for e in lines}) == keys
    # The only keys written twice are those that failed first and succeeded on the rerun.
    seen: dict[str, int] = {}
    for entry in lines:
        seen[entry["key"]] = seen.get(entry["key"], 0) + 1
    assert {key for key, count in seen.items() if count > 1} == failed_keys
    with Journal(path) as journal:
        assert len(journal) == 300 and all(journal.get(key)["ok"] for key in keys)
    assert katan_answered(url) == 300  # each request answered once over both runs


# ----------------------------------------------------------------------------- Retry-After
COMPLETION = {
    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello after waiting"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


class _RateLimitOnce(BaseHTTPRequestHandler):
    """429 with Retry-After: 1 on the first call, a valid chat completion after."""

    protocol_version = "HTTP/1.1"
    arrivals: list[float] = []
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.arrivals.append(time.monotonic())
            first = len(self.arrivals) == 1
        if first:
            body, status, extra = b'{"error": {"message": "slow down", "type": "rate_limit"}}', 429, {"Retry-After": "1"}
        else:
            body, status, extra = json.dumps(COMPLETION).encode(), 200, {}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def rate_limit_once_server():
    handler = type("Handler", (_RateLimitOnce,), {"arrivals": [], "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler.arrivals
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_retry_after_is_honoured(rate_limit_once_server, tmp_path):
    url, arrivals = rate_limit_once_server
    # The policy's own backoff is tiny, so any wait near 1 s can only come from Retry-After.
    # (RetryPolicy.delay caps Retry-After at 4 x max_delay_s, hence max_delay_s=1 here.)
    policy = RetryPolicy(max_retries=3, base_delay_s=0.001, max_delay_s=1.0)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(OpenAICompatibleBackend("stub", [url]), requests(1), journal,
                                       max_in_flight=1, policy=policy)
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.95
    assert stats.errors == {"HTTP 429": 1} and stats.retries == 1 and stats.succeeded == 1
    (outcome,) = outcomes
    assert outcome.ok and outcome.text == "hello after waiting" and outcome.attempts == 2
    assert outcome.latency_s >= 0.95
