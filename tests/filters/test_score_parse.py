"""Tests for filters.score_parse.parse_rating."""

import math

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.score_parse import ParsedRating, find_json_objects, parse_rating

# (reply, expected score) for replies that must be read.
READABLE = [
    ("4.5", 4.5),
    ("5", 5.0),
    ("0", 0.0),
    ("Score: 4", 4.0),
    ("score: 4.5/5", 4.5),
    ("4/5", 4.0),
    ("Rating - 3", 3.0),
    ("Rating: 2.5", 2.5),
    ("**Score**: 5", 5.0),
    ("**Score: 3**", 3.0),
    ("The score is 4.", 4.0),
    ("I give it a score of 2.", 2.0),
    ("Rating (0-5): 4", 4.0),
    ("Score = 1", 1.0),
    ("I would rate this 4 out of 5", 4.0),
    ("I'd rate it a 3 because it is vague.", 3.0),
    ("I give this answer a 4.", 4.0),
    ("4 out of 5 - accurate but terse.", 4.0),
    ('{"score": 4, "explanation": "Accurate and concise."}', 4.0),
    ('{"rating": "4.5", "reason": "Good."}', 4.5),
    ('{"Score": 3.5}', 3.5),
    ('{"score": "4/5"}', 4.0),
    ('{"evaluation": {"score": 2, "explanation": "weak"}}', 2.0),
    ('```json\n{"score": 4, "explanation": "ok"}\n```', 4.0),
    ('Here is my evaluation:\n```json\n{"rating": 5}\n```\nThanks!', 5.0),
    ('Sure. {"score": 1, "explanation": "wrong"} Let me know.', 1.0),
    ("{'score': 4, 'explanation': 'single quotes are not JSON'}", 4.0),
    ("4\nThe answer is accurate and well organised.", 4.0),
    ("4.5\n\nExplanation: correct, could be shorter.", 4.5),
    ("**4**\nGood answer.", 4.0),
    ("Score: 4\nThe answer lists 3 items, all correct.", 4.0),
    ("Score: 4/5\nThe answer covers 3/4 of the steps.", 4.0),
    # markers that agree are fine
    ("Score: 4\nOverall, 4/5.", 4.0),
    # the explanation quoting a different number does not count inside JSON
    ('{"score": 3, "explanation": "not a 5/5 because of errors"}', 3.0),
]


@pytest.mark.parametrize("reply, expected", READABLE)
def test_reads_score(reply, expected):
    parsed = parse_rating(reply)
    assert parsed.problem is None
    assert parsed.score == expected


# (reply, expected problem) for replies that must not be read.
UNREADABLE = [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("The answer is good.", "no_score"),
    ("The answer lists 3 items.", "no_score"),
    ("It covers 3/4 of the steps.", "no_score"),
    ("Posted on 12/5/2023.", "no_score"),
    ("Accuracy is 95%.", "no_score"),
    ("Score: N/A", "no_score"),
    ("Score:\n1. accurate\n2. concise", "no_score"),
    ('{"explanation": "no score key"}', "no_score"),
    ("Score: 7", "out_of_range"),
    ("-1", "out_of_range"),
    ("Score: -1", "out_of_range"),
    ("Score: 5.5", "out_of_range"),
    ("Score: 8/10", "out_of_range"),
    ('{"score": 6}', "out_of_range"),
    ('{"score": NaN}', "out_of_range"),
    ("Score: 4\nScore: 3", "ambiguous"),
    ("Score: 3-4", "ambiguous"),
    ("4\nScore: 3", "ambiguous"),
    ('Score: 2\n{"score": 4}', "ambiguous"),
    ('{"score": 4, "rating": 3}', "ambiguous"),
]


@pytest.mark.parametrize("reply, problem", UNREADABLE)
def test_flags_problem(reply, problem):
    parsed = parse_rating(reply)
    assert parsed.problem == problem
    assert parsed.score is None


def test_out_of_range_is_not_clamped_with_custom_scale():
    assert parse_rating("Score: 7", low=1, high=10).score == 7.0
    assert parse_rating("Score: 0", low=1, high=10).problem == "out_of_range"
    assert parse_rating("7/10", low=0, high=10).score == 7.0
    # a fraction on another scale is not read as a score
    assert parse_rating("4/5", low=0, high=10).problem == "no_score"


def test_rejects_inverted_bounds():
    with pytest.raises(ValueError):
        parse_rating("3", low=5, high=0)


@pytest.mark.parametrize(
    "reply, explanation",
    [
        ('{"score": 4, "explanation": "Accurate and concise."}', "Accurate and concise."),
        ('```json\n{"rating": 3, "reason": "Too long."}\n```', "Too long."),
        ("4\nThe answer is accurate.", "The answer is accurate."),
        ("Score: 4\nExplanation: clear and correct", "clear and correct"),
        ("Score: 4 - The answer is good", "The answer is good"),
        ("Score: 5", ""),
        ("{'score': 4, 'explanation': 'loose json'}", "loose json"),
        ("The answer is good.", "The answer is good."),
        ("", ""),
    ],
)
def test_explanation(reply, explanation):
    assert parse_rating(reply).explanation == explanation


def test_result_is_frozen_dataclass():
    parsed = parse_rating("Score: 4")
    assert parsed == ParsedRating(4.0, "", None)
    with pytest.raises(AttributeError):
        parsed.score = 1.0  # type: ignore[misc]


def test_find_json_objects_spans():
    text = 'a {"x": 1} b {bad} {"y": {"z": 2}}'
    found = find_json_objects(text)
    assert [o.value for o in found] == [{"x": 1}, {"y": {"z": 2}}]
    assert all(text[o.start : o.end].startswith("{") for o in found)


# Fragments that steer random text towards the parser's branches.
FRAGMENTS = st.sampled_from(
    [
        "Score:", "score", "Rating -", "**", "/5", "/10", " out of 5", "-1", "4.5", "7",
        "3", "{", "}", '"score":', '"rating": "', "```json", "\n", " ", "NaN", "1e999",
        "Explanation:", "I would rate this", "1" * 400, "[[A]]", ".", "%", "-", "to",
    ]
)
FUZZ_TEXT = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(
    reply=FUZZ_TEXT,
    bounds=st.sampled_from([(0.0, 5.0), (1.0, 5.0), (0.0, 10.0), (1.0, 1.0)]),
)
def test_fuzz_never_raises_and_respects_invariants(reply, bounds):
    low, high = bounds
    parsed = parse_rating(reply, low=low, high=high)
    assert isinstance(parsed.explanation, str)
    assert (parsed.problem is None) == (parsed.score is not None)
    assert parsed.problem in (None, "no_score", "out_of_range", "ambiguous", "empty")
    if parsed.score is not None:
        assert math.isfinite(parsed.score)
        assert low <= parsed.score <= high


@pytest.mark.parametrize(
    "reply",
    [
        "{" * 20000,
        '{"a": ' * 3000,
        "Score" + " " * 20000 + "x",
        "4" + " " * 20000 + "x",
        "\n" * 20000 + "x",
        "rate this" + " " * 20000 + "x",
        ("The answer is detailed. " * 2000) + "\nScore: 4",
    ],
)
def test_pathological_input_is_fast(reply):
    start = time.perf_counter()
    parse_rating(reply)
    assert time.perf_counter() - start < 2.0
