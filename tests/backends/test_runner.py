"""The shared request path against llm-katan, a real OpenAI-compatible server that injects faults."""

import json

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import RetryPolicy, UsageMeter, run_requests
from core.records import Journal

FAST_RETRIES = RetryPolicy(max_retries=8, base_delay_s=0.01, max_delay_s=0.05)


def requests(n: int, prefix: str = "r") -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}-{i:04d}", messages=[{"role": "user", "content": f"question {i}"}],
                        max_tokens=16) for i in range(n)]


def test_every_request_accounted_for_under_server_errors(katan, tmp_path):
    url = katan("--error-rate", "0.3")
    backend = OpenAICompatibleBackend("echo", [url])
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(60), journal, max_in_flight=8, policy=FAST_RETRIES)
    assert stats.retries > 0 and stats.errors.get("HTTP 500", 0) == stats.retries
    assert stats.succeeded == 60 and stats.failed == 0
    assert [o.key for o in outcomes] == [f"r-{i:04d}" for i in range(60)]
    assert all("question" in o.text for o in outcomes)
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert sorted(entry["key"] for entry in lines) == [f"r-{i:04d}" for i in range(60)]  # no duplicates


def test_rate_limited_requests_fail_after_retries_and_are_listed(katan, tmp_path):
    url = katan("--rate-limit-after", "5")
    backend = OpenAICompatibleBackend("echo", [url])
    policy = RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.02)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(12), journal, max_in_flight=1, policy=policy)
    assert stats.succeeded == 5 and stats.failed == 7
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 7 and all("HTTP 429" in o.error and o.attempts == 3 for o in failed)


def test_rerun_reuses_the_journal_and_sends_only_what_is_missing(katan, tmp_path):
    url = katan()
    backend = OpenAICompatibleBackend("echo", [url])
    with Journal(tmp_path / "j.jsonl") as journal:
        run_requests(backend, requests(10)[:4], journal, max_in_flight=4, policy=FAST_RETRIES)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(10), journal, max_in_flight=4, policy=FAST_RETRIES)
    assert stats.reused == 4 and stats.sent == 6 and len(outcomes) == 10
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == 10


def test_token_budget_stops_new_requests(katan, tmp_path):
    url = katan()
    backend = OpenAICompatibleBackend("echo", [url])
    meter = UsageMeter(max_tokens=100)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, stats = run_requests(backend, requests(50), journal, max_in_flight=4, policy=FAST_RETRIES, meter=meter)
    per_request = max(o.prompt_tokens + o.completion_tokens for o in outcomes)
    assert stats.skipped_for_budget > 0 and stats.sent + stats.skipped_for_budget == 50
    # Never over the limit by more than the requests that were already in flight.
    assert meter.prompt_tokens + meter.completion_tokens < 100 + 4 * per_request


def test_replicas_share_the_load(katan, tmp_path):
    urls = [katan(), katan()]
    backend = OpenAICompatibleBackend("echo", urls)
    with Journal(tmp_path / "j.jsonl") as journal:
        outcomes, _ = run_requests(backend, requests(20), journal, max_in_flight=4, policy=FAST_RETRIES)
    used = {o.endpoint for o in outcomes}
    assert used == set(urls)
