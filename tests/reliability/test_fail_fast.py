"""Runs that stop at once when the teacher cannot answer, through the real `distill` command.

Before a stage spends anything it checks its endpoints (the preflight: reachable, key accepted,
model served, one one-token request answered); during a stage, the circuit breaker stops it when
attempts keep failing for a cause retrying cannot fix. Either way: a non-zero exit (3) naming the
endpoint and the cause, everything journaled kept, and the same command resumes once the teacher is
fixed. Bad input about an endpoint (a key variable not set, a model the server does not list, no
price under a money budget) is refused before any request, with exit 2.

The teachers are scripted servers (scripted_server.py): a real server cannot be made to refuse
keys, die mid-run or list other models on demand. The dead engine is scripted on what a real vLLM
server does when its engine dies (an HTTP 500 "EngineCore encountered an issue" to the requests in
flight, then its port closes), as observed with vLLM 0.32 on this machine.
"""

from __future__ import annotations

import json
import time

import pytest

from cli_runs import check_generate_accounting, openai_teacher, read_jsonl, run_distill, write_config
from core.net import free_port
from scripted_server import ENGINE_DEAD, ScriptedServer, Status, distinct_task

GENERATE = {"max_requests": 8, "requests_per_shard": 4, "max_tokens": 64}


def generate(config, run_dir, *extra, env=None):
    started = time.monotonic()
    result = run_distill("generate", str(config), "--run-dir", str(run_dir), *extra, env=env)
    return result, time.monotonic() - started


def test_an_unreachable_teacher_stops_within_60_s_naming_it_and_the_rerun_resumes(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    checked = write_config(tmp_path / "unreachable.yaml", teacher=openai_teacher(url), generate=GENERATE)
    # Without the preflight the circuit breaker stops it: refused connections are retried, but counted.
    unchecked = write_config(tmp_path / "unchecked.yaml", teacher=openai_teacher(url, preflight=False),
                             generate=GENERATE)
    for config, run_dir, expected in ((checked, tmp_path / "run", "teacher: GET /models failed"),
                                      (unchecked, tmp_path / "run-unchecked", "stopped after 16 attempts in a row")):
        result, seconds = generate(config, run_dir)
        assert result.returncode == 3, result.stderr[-3000:]
        assert seconds < 60
        assert expected in result.stderr and url in result.stderr and "connection refused" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (run_dir / "stages" / "generate.json").exists()
    # The whole pipeline stops before Prefect starts, naming it too.
    started = time.monotonic()
    result = run_distill("run", str(checked), "--run-dir", str(tmp_path / "run"), "--stages", "generate,filter")
    assert result.returncode == 3 and url in result.stderr and time.monotonic() - started < 60
    failed = read_jsonl(tmp_path / "run-unchecked" / "work" / "generate_requests.jsonl")
    assert failed and not any(entry["ok"] for entry in failed)

    # The teacher comes up at that address: the same commands finish, every request accounted once.
    with ScriptedServer(distinct_task, port=port) as teacher:
        for config, run_dir in ((checked, tmp_path / "run"), (unchecked, tmp_path / "run-unchecked")):
            result, _ = generate(config, run_dir)
            assert result.returncode == 0, result.stderr[-3000:]
            summary, _ = check_generate_accounting(run_dir, GENERATE["max_requests"])
            assert summary["kept"] > 0 and summary["requests_failed"] == 0
        assert teacher.requests == 1 + 2 * GENERATE["max_requests"]  # one preflight, each request once


def test_a_teacher_answering_401_is_stopped_within_twice_its_window_and_resumes_with_the_right_key(tmp_path):
    window = 4
    with ScriptedServer(distinct_task, models=["echo"], authorize=lambda header: header == "Bearer right") as teacher:
        settings = {"api_key_env": "DISTILL_TEST_KEY", "max_in_flight": 2, "breaker_window": window}
        checked = write_config(tmp_path / "checked.yaml", teacher=openai_teacher(teacher.base_url, **settings),
                               generate={**GENERATE, "max_requests": 40})
        unchecked = write_config(tmp_path / "unchecked.yaml",
                                 teacher=openai_teacher(teacher.base_url, preflight=False, **settings),
                                 generate={**GENERATE, "max_requests": 40})
        wrong = {"DISTILL_TEST_KEY": "wrong"}
        result, _ = generate(checked, tmp_path / "run", env=wrong)
        assert result.returncode == 3 and "HTTP 401 (the API key was refused)" in result.stderr
        assert teacher.requests == 0  # the preflight's GET /models was refused: nothing else was sent

        result, seconds = generate(unchecked, tmp_path / "run-unchecked", env=wrong)
        assert result.returncode == 3, result.stderr[-3000:]
        assert f"openai:echo@{teacher.base_url}: stopped after {window} attempts in a row" in result.stderr
        assert "HTTP 401" in result.stderr and "wrong" not in result.stderr
        assert window <= teacher.requests <= 2 * window
        journal = read_jsonl(tmp_path / "run-unchecked" / "work" / "generate_requests.jsonl")
        assert journal and all(entry["attempt_errors"] == ["HTTP 401"] for entry in journal)

        right = {"DISTILL_TEST_KEY": "right"}
        sent = teacher.requests
        for config, run_dir, preflight in ((checked, tmp_path / "run", 1), (unchecked, tmp_path / "run-unchecked", 0)):
            result, _ = generate(config, run_dir, env=right)
            assert result.returncode == 0, result.stderr[-3000:]
            check_generate_accounting(run_dir, 40)
            assert teacher.requests == sent + preflight + 40  # the refused requests were sent again, once
            sent = teacher.requests


def test_a_dead_engine_stops_the_stage_naming_the_endpoint_and_the_rerun_sends_only_the_rest(tmp_path):
    port = free_port()
    answered = []

    def engine(body: dict):
        if len(answered) == 5:
            return ENGINE_DEAD
        answered.append(body.get("seed"))
        return distinct_task(body)

    teacher_settings = {"max_in_flight": 1, "breaker_window": 4, "max_retries": 5}
    with ScriptedServer(engine, port=port) as teacher:
        config = write_config(tmp_path / "dies.yaml", generate={**GENERATE, "max_requests": 20},
                              teacher=openai_teacher(teacher.base_url, **teacher_settings))
        result, seconds = generate(config, tmp_path / "run")
    assert result.returncode == 3, result.stderr[-3000:]
    assert seconds < 60
    # The engine's death is final: the breaker trips on the first reply that says so.
    assert f"openai:echo@http://127.0.0.1:{port}/v1: stopped: the endpoint can answer nothing more" in result.stderr
    assert "the vLLM engine behind this endpoint died" in result.stderr
    journal = {e["key"]: e for e in read_jsonl(tmp_path / "run" / "work" / "generate_requests.jsonl")}
    assert sum(entry["ok"] for entry in journal.values()) == 4  # the preflight took the first answer
    assert len(journal) == 5  # and no request was sent after the one the dead engine answered

    with ScriptedServer(distinct_task, port=port) as fixed:
        result, _ = generate(config, tmp_path / "run")
        assert result.returncode == 0, result.stderr[-3000:]
        check_generate_accounting(tmp_path / "run", 20)
        assert fixed.requests == 1 + 20 - 4  # the preflight, and every request not answered before


def test_a_stage_whose_every_request_failed_exits_non_zero_and_the_run_stops_there(tmp_path):
    with ScriptedServer(lambda body: Status(503)) as teacher:
        config = write_config(tmp_path / "fails.yaml", generate=GENERATE,
                              teacher=openai_teacher(teacher.base_url, preflight=False, max_retries=0))
        result = run_distill("run", str(config), "--run-dir", str(tmp_path / "run"), "--stages", "generate,filter")
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"generate: nothing kept: 8 request(s) to openai:echo@{teacher.base_url} failed after their retries " \
           "(HTTP 503 x8)" in result.stderr
    assert "no records (the file is empty)" not in result.stderr  # the filter never ran to hide the cause
    assert not (tmp_path / "run" / "stages" / "generate.json").exists()


BAD_ENDPOINTS = {
    "key_variable_not_set": ({"api_key_env": "DISTILL_NOT_SET_ANYWHERE"}, {},
                             "key 'teacher.api_key_env': the environment variable DISTILL_NOT_SET_ANYWHERE is not set"),
    "model_not_served": ({"model": "gpt-4o-mni"}, {},
                         "key 'teacher.model': {url} does not serve 'gpt-4o-mni'; it lists: echo, gpt-4o-mini"),
    "no_price_under_a_money_budget": ({}, {"budget": {"max_cost_usd": 5}},
                                      "key 'teacher.price_input_per_mtok': budget.max_cost_usd is set"),
}


@pytest.mark.parametrize("case", list(BAD_ENDPOINTS))
def test_bad_endpoint_settings_are_refused_before_any_request(case, tmp_path):
    settings, sections, message = BAD_ENDPOINTS[case]
    with ScriptedServer(distinct_task, models=["echo", "gpt-4o-mini"]) as teacher:
        config = write_config(tmp_path / "bad.yaml", teacher=openai_teacher(teacher.base_url, **settings),
                              generate=GENERATE, **sections)
        for command in ("generate", "run"):
            result = run_distill(command, str(config), "--run-dir", str(tmp_path / f"run-{command}"))
            assert result.returncode == 2, result.stderr[-3000:]
            assert message.format(url=teacher.base_url) in result.stderr and "Traceback" not in result.stderr
        assert teacher.requests == 0
    summary = tmp_path / "run-generate" / "stages" / "generate.json"
    assert not summary.exists() and not (tmp_path / "run-run").exists()  # `run` stopped before it wrote anything


def test_every_failure_kind_is_named_in_the_journal(tmp_path):
    """The journal of a run stopped by the breaker is what a rerun reads: its lines parse, and each
    names the endpoint's error kind."""
    with ScriptedServer(lambda body: Status(404, {"error": {"message": "The model `echo` does not exist."}})) as teacher:
        config = write_config(tmp_path / "gone.yaml", generate=GENERATE,
                              teacher=openai_teacher(teacher.base_url, preflight=False, max_in_flight=1,
                                                     breaker_window=3))
        result, _ = generate(config, tmp_path / "run")
        assert result.returncode == 3 and teacher.requests == 3
    lines = (tmp_path / "run" / "work" / "generate_requests.jsonl").read_text().splitlines()
    assert [json.loads(line)["error"] for line in lines] == [
        f"{teacher.base_url}: HTTP 404 (model or path not found: The model `echo` does not exist.)"] * 3
