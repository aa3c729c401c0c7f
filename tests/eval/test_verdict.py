"""Tests for eval.verdict: parse_verdict and combine_orders."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.verdict import ParsedVerdict, combine_orders, parse_verdict

READABLE = [
    # JSON, bare / fenced / in prose
    ('{"winner": "A", "reason": "more complete"}', "A"),
    ('{"winner": "b"}', "B"),
    ('```json\n{"winner": "tie", "reason": "same"}\n```', "tie"),
    ('Here is my verdict:\n{"verdict": "Answer B", "explanation": "x"}\nDone.', "B"),
    ('{"winner": "Answer A is better"}', "A"),
    ('{"better": "Output (b)"}', "B"),
    ('{"winner": "A", "reason": "B is better in style, but A is correct"}', "A"),
    # MT-Bench brackets
    ("[[A]]", "A"),
    ("After comparing both answers... [[B]]", "B"),
    ("[[C]]", "tie"),
    ("[[tie]]", "tie"),
    # labels
    ("Winner: A", "A"),
    ("Winner: Assistant B", "B"),
    ("Winner: (A)", "A"),
    ("**Verdict:** tie", "tie"),
    ("Verdict: A tie.", "tie"),
    ("Final verdict: equal.", "tie"),
    ("The better answer is B.", "B"),
    ("The result is a tie.", "tie"),
    ("Answer A is better written, but B is more accurate.\nWinner: B", "B"),
    # a bare value or first line
    ("A", "A"),
    ("b", "B"),
    ("tie", "tie"),
    ("Tie.", "tie"),
    ("equal", "tie"),
    ("both", "tie"),
    ("Output (a)", "A"),
    ("A\nBecause it is complete.", "A"),
    ("**B**\nIt answers the question.", "B"),
    # phrases
    ("Answer B is better", "B"),
    ("Response (B) is better because it cites sources.", "B"),
    ("A is the better answer.", "A"),
    ("Assistant A is clearly superior.", "A"),
    ("B wins.", "B"),
    ("I prefer A", "A"),
    ("I'd choose answer b.", "B"),
    ("Both answers are equally good.", "tie"),
    ("It's a tie.", "tie"),
    ("Neither A nor B is better.", "tie"),
    ("There is no clear winner.", "tie"),
    ("A and B are equal.", "tie"),
]


@pytest.mark.parametrize("reply, winner", READABLE)
def test_reads_verdict(reply, winner):
    parsed = parse_verdict(reply)
    assert parsed.problem is None
    assert parsed.winner == winner


UNREADABLE = [
    ("", "empty"),
    ("  \n ", "empty"),
    ("The answer is fine.", "no_verdict"),
    ("Answer A is not better.", "no_verdict"),
    ("Answer A has 3 steps and answer B has 4.", "no_verdict"),
    ('{"winner": null}', "no_verdict"),
    ("Winner: A and B", "no_verdict"),
    ("A is better. B is better.", "ambiguous"),
    ("[[A]] ... on reflection [[B]]", "ambiguous"),
    ("Winner: A\nWinner: B", "ambiguous"),
    ('{"winner": "A", "verdict": "B"}', "ambiguous"),
]


@pytest.mark.parametrize("reply, problem", UNREADABLE)
def test_flags_problem(reply, problem):
    parsed = parse_verdict(reply)
    assert parsed.problem == problem
    assert parsed.winner is None


@pytest.mark.parametrize(
    "reply, reason",
    [
        ('{"winner": "A", "reason": "more complete"}', "more complete"),
        ("A\nBecause it is complete.", "Because it is complete."),
        ("Reason: A is more complete.\nWinner: A", "A is more complete."),
        ("[[B]]", ""),
        ("", ""),
    ],
)
def test_reason(reply, reason):
    assert parse_verdict(reply).reason == reason


def test_stronger_tier_wins_over_phrases():
    # The reason praises A, the explicit label names B.
    assert parse_verdict("A is better in tone. Winner: B").winner == "B"
    # JSON beats brackets in the surrounding prose.
    assert parse_verdict('[[A]] {"winner": "B"}').winner == "B"


def test_result_is_frozen_dataclass():
    parsed = parse_verdict("[[A]]")
    assert parsed == ParsedVerdict("A", "", None)
    with pytest.raises(AttributeError):
        parsed.winner = "B"  # type: ignore[misc]


# combine_orders: first = student as A, second = student as B.
COMBINE_TABLE = [
    ("A", "B", "win"),  # win, win
    ("A", "tie", "win"),  # win, tie
    ("A", "A", "tie"),  # win, loss: position bias
    ("tie", "B", "win"),  # tie, win
    ("tie", "tie", "tie"),  # tie, tie
    ("tie", "A", "loss"),  # tie, loss
    ("B", "B", "tie"),  # loss, win: position bias
    ("B", "tie", "loss"),  # loss, tie
    ("B", "A", "loss"),  # loss, loss
    (None, "A", "invalid"),
    (None, "B", "invalid"),
    (None, "tie", "invalid"),
    ("A", None, "invalid"),
    ("B", None, "invalid"),
    ("tie", None, "invalid"),
    (None, None, "invalid"),
]


@pytest.mark.parametrize("first, second, outcome", COMBINE_TABLE)
def test_combine_orders_table(first, second, outcome):
    assert combine_orders(first, second) == outcome


def test_combine_orders_is_symmetric_under_swapping_sides():
    # Mirroring both verdicts (A <-> B) turns a win into a loss and back.
    mirror = {"A": "B", "B": "A", "tie": "tie"}
    flip = {"win": "loss", "loss": "win", "tie": "tie"}
    for first in mirror:
        for second in mirror:
            assert combine_orders(mirror[first], mirror[second]) == flip[combine_orders(first, second)]


@pytest.mark.parametrize("bad", ["a", "C", "", "win"])
def test_combine_orders_rejects_unknown_verdicts(bad):
    with pytest.raises(ValueError):
        combine_orders(bad, "A")
    with pytest.raises(ValueError):
        combine_orders("A", bad)


FRAGMENTS = st.sampled_from(
    [
        "[[A]]", "[[B]]", "[[C]]", "Winner:", "Verdict: ", "A", "B", "a", "b", "tie", "equal", "both",
        " is better", " wins", "I prefer ", "Answer ", "(", ")", "{", "}", '"winner": "', '"', "\n",
        "```json", "neither", " nor ", "not ", " and ", ".", " ",
    ]
)
FUZZ_TEXT = st.one_of(st.text(), st.lists(st.one_of(FRAGMENTS, st.text(max_size=4)), max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(FUZZ_TEXT)
def test_fuzz_never_raises_and_respects_invariants(reply):
    parsed = parse_verdict(reply)
    assert parsed.winner in ("A", "B", "tie", None)
    assert isinstance(parsed.reason, str)
    assert (parsed.problem is None) == (parsed.winner is not None)
    assert parsed.problem in (None, "no_verdict", "empty", "ambiguous")
    # The combined outcome is always one of the four labels.
    assert combine_orders(parsed.winner, parsed.winner) in ("win", "tie", "loss", "invalid")


@pytest.mark.parametrize(
    "reply",
    [
        "{" * 20000,
        " \t" * 10000 + "x",
        "Winner: answer" + " " * 20000 + "x",
        "Answer A" + " " * 20000 + "x",
        "both" + " " * 20000 + "x",
        "\n" * 20000 + "x",
        "[[" * 10000,
    ],
)
def test_pathological_input_is_fast(reply):
    start = time.perf_counter()
    parse_verdict(reply)
    assert time.perf_counter() - start < 2.0
