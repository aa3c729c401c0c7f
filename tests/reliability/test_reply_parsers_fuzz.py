"""Fuzzing the parsers of the teacher's generation replies (numbered and JSON layouts).

Whatever the teacher sends, parsing never raises, and every reply comes out as tasks or as
problems (never silently as nothing); well-formed replies come back task for task. The rating
and verdict parsers are fuzzed in tests/quality/test_score_parse.py and tests/eval/test_verdict.py.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from selfinstruct.parse import ParsedTask, parse_generated_tasks, parse_json_tasks

FINISH = st.sampled_from(["stop", "length", None])
# Text in which the parsers' markers may turn up: field names, numbering, separators, JSON.
MARKERS = st.sampled_from(["Instruction:", "Input:", "Output:", "###", "1.", "2)", "**", "\n", "{", "}", "[",
                           "]", '"tasks"', '"instruction": ', ",", "<noinput>", ":"])
NOISY_TEXT = st.lists(st.one_of(st.text(max_size=12), MARKERS), max_size=40).map("".join)
# Words that cannot spell a marker (no i, o, u, '#', ':' or '/'), for round trips.
PLAIN = st.text(alphabet="abcdefghjklmqrvwxyz ,.?!0123456789", min_size=1, max_size=40).filter(lambda s: s.strip())
TASKS = st.lists(st.tuples(PLAIN, PLAIN, PLAIN), min_size=1, max_size=6)


def well_typed(tasks, problems) -> bool:
    return (all(isinstance(t, ParsedTask) and all(isinstance(v, str) for v in (t.instruction, t.input, t.output))
                for t in tasks)
            and all(isinstance(p.reason, str) and isinstance(p.text, str) for p in problems))


@settings(max_examples=300, deadline=None)
@given(NOISY_TEXT, FINISH, st.integers(min_value=1, max_value=30))
def test_numbered_parser_never_raises_and_accounts_for_every_reply(reply, finish_reason, next_index):
    tasks, problems = parse_generated_tasks(reply, next_index, finish_reason)
    assert well_typed(tasks, problems)
    assert tasks or problems


@settings(max_examples=300, deadline=None)
@given(NOISY_TEXT, FINISH)
def test_json_parser_never_raises_and_accounts_for_every_reply(reply, finish_reason):
    tasks, problems = parse_json_tasks(reply, finish_reason)
    assert well_typed(tasks, problems)
    assert tasks or problems
    assert all(len(p.text) <= 2000 for p in problems)


@settings(max_examples=150, deadline=None)
@given(TASKS)
def test_well_formed_numbered_replies_come_back_task_for_task(tasks):
    reply = "\n###\n".join(f"{n}. Instruction: {i}\n{n}. Input:\n{x}\n{n}. Output:\n{o}"
                           for n, (i, x, o) in enumerate(tasks, start=4))
    parsed, problems = parse_generated_tasks(reply, 4, "stop")
    assert problems == []
    assert parsed == [ParsedTask(i.strip(), x.strip(), o.strip()) for i, x, o in tasks]


@settings(max_examples=150, deadline=None)
@given(TASKS, st.booleans())
def test_well_formed_json_replies_come_back_and_a_cut_keeps_the_complete_tasks(tasks, cut):
    reply = json.dumps({"tasks": [{"instruction": i, "input": x, "output": o} for i, x, o in tasks]})
    expected = [ParsedTask(i.strip(), x.strip(), o.strip()) for i, x, o in tasks]
    if not cut:
        assert parse_json_tasks(reply, "stop") == (expected, [])
        return
    # Cut inside the last task object, as a reply that hit the token limit is.
    last = reply.rindex('{"instruction"')
    parsed, problems = parse_json_tasks(reply[: last + 20], "length")
    assert parsed == expected[:-1]
    assert [p.reason for p in problems] == ["truncated"]
