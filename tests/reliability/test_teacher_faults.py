"""The generate stage, through the real `distill generate` command, against teachers that fail.

llm-katan (a third-party OpenAI-compatible server, echo mode) injects each of its faults; a
fault proxy of our own (fault_proxy.py) sits in front of the real embedded teacher
(llama.cpp serving SmolLM2) and drops connections or cuts replies short. Every run must
complete, account for each request once (succeeded, or failed after its retries and listed in
rejected.jsonl), write no record twice, and count the faults in its summary. A run whose every
request failed keeps nothing: it exits non-zero naming the endpoint and why, and is not marked finished.

These runs switch the endpoint's preflight off: they count every request the server answers, and
the preflight's own one-token request is tested in test_fail_fast.py.
"""

from __future__ import annotations

import pytest

from cli_runs import check_generate_accounting, katan_answered, openai_teacher, read_jsonl, run_distill, write_config
from fault_proxy import FaultProxy

# (llm-katan flags, teacher settings, requests, what must be seen)
KATAN_FAULTS = {
    # 40 requests, so that at least one 500 is all but certain (0.8 ** 40 < 1e-3).
    "error_rate": (["--error-rate", "0.2"], {"max_retries": 1}, 40, {"kinds": {"HTTP 500"}}),
    # The 6th request on is answered 429 (llm-katan sends no Retry-After): 6 fail after one retry.
    "rate_limit_after": (["--rate-limit-after", "6"], {"max_retries": 1, "max_in_flight": 1}, 12,
                         {"failed": {"HTTP 429": 6}, "retries": {"HTTP 429": 6}}),
    # 504 for every request after the 6th.
    "timeout_after": (["--timeout-after", "6"], {"max_retries": 2, "max_in_flight": 1}, 12,
                      {"failed": {"HTTP 504": 6}, "retries": {"HTTP 504": 12}}),
    # One request at a time admitted, four sent at once: the rest are answered 503 and retried
    # until they get in (--max-concurrent lets llm-katan hold them side by side).
    "max_inflight": (["--max-inflight", "1", "--latency-ms", "100", "--max-concurrent", "8"],
                     {"max_retries": 30, "max_in_flight": 4}, 12, {"failed": {}, "kinds": {"HTTP 503"}}),
    # Slower than the client waits: every attempt times out, every request fails and is listed, and
    # with nothing kept the stage stops non-zero (timeouts are retried, never a breaker's cause).
    "latency": (["--latency-ms", "1500", "--max-concurrent", "8"], {"max_retries": 1, "timeout_s": 0.3}, 4,
                {"exit": 3, "failed": {"APITimeoutError": 4}, "answered_too_late": 8}),
}


@pytest.mark.parametrize("fault", list(KATAN_FAULTS))
def test_generate_completes_and_accounts_for_every_request_under_katan_faults(fault, katan, tmp_path):
    flags, teacher, requests, expected = KATAN_FAULTS[fault]
    url = katan(*flags)
    config = write_config(tmp_path / "faults.yaml", teacher=openai_teacher(url, preflight=False, **teacher),
                          generate={"max_requests": requests, "requests_per_shard": 4, "max_tokens": 64})
    result = run_distill("generate", str(config), "--run-dir", str(tmp_path / "run"))
    if expected.get("exit"):
        assert result.returncode == expected["exit"], result.stderr[-3000:]
        assert f"generate: nothing kept: {requests} request(s) to openai:echo@{url} failed" in result.stderr
        assert not (tmp_path / "run" / "stages" / "generate.json").exists()  # not finished: a rerun runs it
        entries = {e["key"]: e for e in read_jsonl(tmp_path / "run" / "work" / "generate_requests.jsonl")}
        assert sorted(entries) == [f"gen-{i:06d}" for i in range(requests)]
        kinds = [e["attempt_errors"][-1] for e in entries.values() if not e["ok"]]
        assert {kind: kinds.count(kind) for kind in kinds} == expected["failed"]
        assert katan_answered(url) == expected["answered_too_late"]
        return
    assert result.returncode == 0, result.stderr[-3000:]
    summary, entries = check_generate_accounting(tmp_path / "run", requests)
    faults = summary["faults"]
    if "failed" in expected:
        assert faults["failed_by_kind"] == expected["failed"]
    if "retries" in expected:
        assert faults["retries_by_kind"] == expected["retries"]
    if "kinds" in expected:
        assert set(faults["retries_by_kind"]) == expected["kinds"] and faults["retries"] > 0
    # Nothing the server answered in time was asked for again (llm-katan counts only its 200s);
    # with the latency fault it answers each attempt after the client has stopped waiting.
    answered = expected.get("answered_too_late", sum(e["ok"] for e in entries.values()))
    assert katan_answered(url) == answered


@pytest.mark.server
def test_dropped_and_cut_replies_from_the_real_teacher_are_retried_listed_and_resumed(tmp_path):
    from backends.embedded_server import EmbeddedServer

    # One request at a time, so the proxy's connection schedule maps onto attempts in order:
    # request 0 is dropped twice (fails after its one retry), 1 and 3 are cut short once, 2 and
    # 4 pass. Every faulty reply was really generated by the teacher before it was lost.
    schedule = ["drop", "drop", "cut", "pass", "pass", "cut", "pass", "pass"]
    with EmbeddedServer(log_path=tmp_path / "llama.log") as teacher, FaultProxy(teacher.base_url, schedule) as proxy:
        config = write_config(
            tmp_path / "proxy.yaml",
            # seed_requests always: no /models question to the server (seed_requests auto asks
            # it once), which would take a connection of the proxy's schedule.
            teacher=openai_teacher(proxy.base_url, model="smollm2-135m-instruct", max_retries=1, max_in_flight=1,
                                   preflight=False, seed_requests="always"),
            generate={"max_requests": 5, "requests_per_shard": 5, "max_tokens": 48})
        command = ("generate", str(config), "--run-dir", str(tmp_path / "run"))
        result = run_distill(*command)
        assert result.returncode == 0, result.stderr[-3000:]
        summary, entries = check_generate_accounting(tmp_path / "run", 5)
        assert proxy.done == {"drop": 2, "cut": 2, "pass": 4}
        assert [key for key, e in entries.items() if not e["ok"]] == ["gen-000000"]
        assert entries["gen-000000"]["attempt_errors"] == ["APIConnectionError", "APIConnectionError"]
        faults = summary["faults"]
        assert faults["failed_by_kind"] == {"APIConnectionError": 1}
        # openai's client names a cut body as it names a dropped connection.
        assert faults["retries_by_kind"] == {"APIConnectionError": 3}

        # The rerun sends only the failed request (the proxy passes everything now).
        result = run_distill(*command)
        assert result.returncode == 0, result.stderr[-3000:]
        assert proxy.done == {"drop": 2, "cut": 2, "pass": 5}
        summary, entries = check_generate_accounting(tmp_path / "run", 5)
        assert summary["requests_failed"] == 0 and all(e["ok"] for e in entries.values())
        # The cut replies' retries are still counted, read back from the journal.
        assert summary["faults"]["retries_by_kind"] == {"APIConnectionError": 2}
