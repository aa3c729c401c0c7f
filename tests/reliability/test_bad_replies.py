"""Teachers and judges that answer badly: empty, not JSON, endless, or without a score.

The real embedded teacher cannot be made to do these on demand, so a scripted server of our own
(scripted_server.py) plays the bad model; everything else is the real request path and the real
`distill` command.
"""

from __future__ import annotations

import json

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.base import MAX_REPLY_CHARS
from backends.runner import RetryPolicy, run_requests
from cli_runs import file_hashes, openai_teacher, read_jsonl, run_distill, run_dir_with_records, write_config
from core.records import Journal
from scripted_server import ENDLESS, ScriptedServer


def one_request(key: str = "r-0") -> list[ChatRequest]:
    return [ChatRequest(key=key, messages=[{"role": "user", "content": "hello"}], max_tokens=16)]


def test_an_endless_reply_is_cut_off_by_the_attempt_deadline_retried_and_listed(tmp_path):
    # The client's own timeout (30 s) is per read, and this server never pauses that long:
    # only the runner's whole-attempt deadline can end it.
    with ScriptedServer(lambda body: ENDLESS) as server, Journal(tmp_path / "j.jsonl") as journal:
        backend = OpenAICompatibleBackend("scripted", [server.base_url], timeout_s=30)
        policy = RetryPolicy(max_retries=1, base_delay_s=0.01, attempt_timeout_s=1.0)
        (outcome,), stats = run_requests(backend, one_request(), journal, max_in_flight=1, policy=policy)
        assert server.requests == 2
    assert outcome.ok is False and outcome.attempts == 2
    assert list(outcome.attempt_errors) == ["AttemptTimeout", "AttemptTimeout"]
    assert "AttemptTimeout" in outcome.error
    assert stats.failed == 1 and stats.retries == 1
    assert read_jsonl(tmp_path / "j.jsonl") == [outcome.to_journal()]


def test_a_reply_far_past_max_tokens_is_cut_and_the_journal_stays_readable(tmp_path):
    babble = "la " * 2_000_000  # 6 MB of text for a 16-token request
    with ScriptedServer(lambda body: babble) as server:
        with Journal(tmp_path / "j.jsonl") as journal:
            (outcome,), _ = run_requests(OpenAICompatibleBackend("scripted", [server.base_url]), one_request(),
                                         journal, max_in_flight=1)
    assert outcome.ok and outcome.finish_reason == "length"
    assert outcome.cut_from_chars == len(babble) and len(outcome.text) == MAX_REPLY_CHARS
    with Journal(tmp_path / "j.jsonl") as journal:  # a resumed run reads it back
        assert journal.get("r-0")["text"] == babble[:MAX_REPLY_CHARS]


def test_empty_and_non_json_teacher_replies_are_listed_then_filter_stops_on_the_empty_file(tmp_path):
    replies = ["", "Sure! Here are twenty tasks for you.", '{"tasks": [{"instruction": "Name a',
               "{\"tasks\": 5}"]
    # The preflight's one-token request carries no seed.
    with ScriptedServer(lambda body: replies[int(body.get("seed", 0)) % len(replies)]) as server:
        config = write_config(tmp_path / "bad-teacher.yaml", teacher=openai_teacher(server.base_url),
                              generate={"max_requests": 8, "requests_per_shard": 4, "reply_format": "json",
                                        "max_tokens": 64})
        run_dir = tmp_path / "run"
        result = run_distill("generate", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((run_dir / "stages" / "generate.json").read_text())
        assert summary["requests"] == 8 and summary["kept"] == 0 and summary["requests_failed"] == 0
        assert summary["dropped"] == {"parse:malformed_json": 2, "parse:no_tasks": 6}
        rejected = read_jsonl(run_dir / "rejected.jsonl")
        assert sorted(r["id"].rsplit("-p", 1)[0] for r in rejected) == [f"gen-{i:06d}" for i in range(8)]
        assert {r["text"] for r in rejected} == {"", replies[1], replies[3], '{"instruction": "Name a'}
        assert (run_dir / "generated.jsonl").read_text() == ""

        # The next stage has nothing to rate: it says so, exits non-zero, and changes nothing.
        before = file_hashes(run_dir)
        result = run_distill("filter", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 2
        assert f"{run_dir / 'generated.jsonl'}: no records (the file is empty)" in result.stderr
        assert file_hashes(run_dir) == before


def test_a_judge_that_never_gives_a_score_keeps_nothing_and_finetune_stops_clearly(tmp_path):
    run_dir = tmp_path / "run"
    run_dir_with_records(run_dir, "Name a colour number {}.", 5)
    with ScriptedServer(lambda body: "What a thoughtful and helpful answer this is.") as judge:
        config = write_config(tmp_path / "no-score.yaml", teacher=openai_teacher(judge.base_url),
                              filter={"selection": "top_k", "top_k": 3})
        result = run_distill("filter", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stderr[-3000:]
        assert judge.requests == 5 + 1  # and the preflight's one-token request
    summary = json.loads((run_dir / "stages" / "filter.json").read_text())
    assert summary["rated"] == 0 and summary["kept"] == 0
    assert sum(n for reason, n in summary["counts"].items() if reason.startswith("unscored:")) == 5
    # Never read as a 0 or a 5: every record is kept out with the judge's reply saved.
    rejected = read_jsonl(run_dir / "rejected.jsonl")
    assert sorted(r["id"] for r in rejected) == [f"r{i}" for i in range(5)]
    assert all(r["judge_reply"] == "What a thoughtful and helpful answer this is." for r in rejected)
    assert (run_dir / "filtered.jsonl").read_text() == ""

    before = file_hashes(run_dir)
    result = run_distill("finetune", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert "finetune has nothing to learn from" in result.stderr and "filtered.jsonl" in result.stderr
    assert file_hashes(run_dir) == before
