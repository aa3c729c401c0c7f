"""Read a pairwise judge's verdict and combine the two answer orders.

The pairwise judge sees an instruction with two answers, A and B, and is asked
for JSON such as ``{"winner": "A" | "B" | "tie", "reason": "..."}``.  Small
judges reply loosely, so :func:`parse_verdict` accepts several shapes and
reports ``problem`` instead of guessing when the verdict cannot be read.

Accepted shapes, from strongest to weakest tier
-----------------------------------------------
1. **JSON** -- an object (bare, fenced or inside prose) with a key such as
   ``winner``, ``verdict``, ``better``, ``preferred`` or ``choice`` whose value
   names a side: ``"A"``, ``"Answer B"``, ``"Output (a)"``, ``"tie"`` ...
2. **Bracket tags** -- MT-Bench style ``[[A]]``, ``[[B]]``, ``[[C]]`` (C is a
   tie) or ``[[tie]]``.
3. **Labels and a bare first line** -- ``Winner: A``, ``**Verdict:** tie``,
   ``The better answer is B``, or a first line that is only a choice (``A``,
   ``Answer B``, ``Tie``).
4. **Phrases** -- ``Answer B is better``, ``A is clearly superior``,
   ``B wins``, ``I prefer A``, and tie phrases like ``it's a tie``,
   ``both answers are equally good``, ``neither is better``,
   ``no clear winner``.

The highest tier that yields anything decides: a reason that compares the
answers ("A is better written, ...") does not override an explicit
``Winner: B``.  If one tier yields two different sides, the reply is
``"ambiguous"``.  Words like "equal", "both" or "neither" on their own only
count as a tie as a whole value (JSON value, label value, first line), since
in free prose they usually start a comparison.

Problems: ``"empty"`` (blank reply), ``"no_verdict"`` (nothing readable),
``"ambiguous"``.  ``winner`` is ``None`` exactly when ``problem`` is set.

Combining both orders
---------------------
Each pair is judged twice with the answers swapped to cancel position bias.
:func:`combine_orders` follows AlpaGasus: from the student's side, a win in
one order and a win or tie in the other is a win; a loss and a loss or tie is
a loss; everything else (tie/tie, or win/loss where the verdict followed the
position) is a tie.  MT-Bench is stricter (it only counts a win when both
orders agree) -- that is *not* what is implemented here.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

from core.reply_json import (
    find_json_objects,
    first_text_value,
    iter_dicts,
    normalize_key,
    text_outside,
)

Winner = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "loss", "invalid"]

EMPTY = "empty"
NO_VERDICT = "no_verdict"
AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class ParsedVerdict:
    """A judge's pairwise verdict (or None) with the reason it is missing."""

    winner: Winner | None
    reason: str
    problem: str | None


_WINNER_KEYS = (
    "winner",
    "verdict",
    "final_verdict",
    "better",
    "better_answer",
    "better_response",
    "preferred",
    "preferred_answer",
    "preference",
    "choice",
    "decision",
    "result",
)
_REASON_KEYS = (
    "reason",
    "reasoning",
    "explanation",
    "rationale",
    "justification",
    "comment",
    "comments",
)

# Words that may name a side: "Answer A", "Response (b)", "Output (a)".
_SIDE_NOUN = r"\b(?i:answer|response|assistant|output|option|model|candidate)"
_TIE_VALUE = r"(?i:a\s+tie|tie|tied|draw|equal|equally\s+good|both|neither|same|c)"

# A whole value (JSON value, label value, first line) naming a side or a tie.
# Matched against the value once surrounding punctuation is stripped.
_CHOICE_RE = re.compile(
    r"(?:" + _SIDE_NOUN + r"\s*)?(?:[\[(]+\s*)?(?P<side>[ABab])"
    r"|(?P<tie>" + _TIE_VALUE + r")"
)
_CHOICE_STRIP = string.whitespace + string.punctuation

_BRACKET_RE = re.compile(r"\[\[\s*(?P<value>[ABCabc]|(?i:tie))\s*\]\]")

# "Winner: A", "The better answer is B", "Final verdict - tie".
_LABEL_RE = re.compile(
    r"(?i:\b(?:final\s+)?(?:winner|verdict|decision|choice|preference|result"
    r"|preferred(?:\s+(?:answer|response|output))?"
    r"|better\s+(?:answer|response|output|one)))\b"
    r"[\"'*_ \t]*(?:[:=]|-(?=\s)|\bis\b)[\"'*_ \t]*"
    r"(?:"
    # a tie, written to the end of the clause ("Verdict: equal." not "both are ...")
    r"(?P<tie>(?i:(?:a\s+)?(?:tie|tied|draw)\b|(?:equal|both|neither|c)"
    r"(?=[ \t]*(?:$|[.,;!)\]\n(]))))"
    # a named side: "Answer A", "[[B]]", "A" (upper case), "a" (alone)
    r"|(?:" + _SIDE_NOUN + r"\s*(?:[\[(]+\s*)?(?P<side1>[ABab])"
    r"|[\[(]*(?P<side2>[AB])"
    r"|(?P<side3>[ab])(?=[ \t]*(?:$|[.,;!)\]\n])))"
    r"[\])]*(?!\w)(?![ \t]+(?i:and|&|or|nor|vs)\b)"
    r")",
    re.MULTILINE,
)

_ADVERBS = r"(?:(?i:clearly|slightly|much|significantly|definitely|overall|far|somewhat|the|a\s+bit)\s+)*"
_BETTER = (
    r"(?i:better|superior|preferable|preferred|stronger|the\s+winner|the\s+stronger"
    r"|more\s+(?:helpful|accurate|complete|correct|relevant))\b"
)
# Not preceded by "nor"/"not" ("neither A nor B is better").
_SIDE = (
    r"(?<!nor )(?<!not )(?:" + _SIDE_NOUN + r"\s*(?:[\[(]\s*)?(?P<s1>[ABab])(?:\s*[\])])?|\b(?P<s2>[AB]))(?!\w)"
)

_PHRASE_SIDE_RES = (
    # "Answer B is better", "A is clearly superior"
    re.compile(_SIDE + r"\s+(?i:is|was|seems|appears)\s+" + _ADVERBS + _BETTER),
    # "B wins"
    re.compile(_SIDE + r"\s+(?i:wins)\b"),
    # "I prefer A", "I would choose answer B"
    re.compile(
        r"(?i:\bI(?:\s+would|'d)?\s+(?:prefer|choose|pick|select))\s+" + _SIDE
    ),
)

_PHRASE_TIE_RE = re.compile(
    r"(?i:\b(?:"
    r"(?:it'?s|it\s+is|this\s+is|result\s+is)\s+a\s+(?:tie|draw)"
    r"|tie|tied|draw"
    r"|equally\s+(?:good|bad|helpful|accurate|correct|strong|weak|valid|poor)"
    r"|(?:both|the\s+two)(?:\s+(?:answers|responses|outputs))?\s+(?:are\s+)?"
    r"(?:equally|equivalent|of\s+(?:equal|similar|the\s+same)\s+quality)"
    r"|neither(?:\s+(?:answer|response|output|one))?\s+is\s+(?:clearly\s+)?better"
    r"|neither\s+(?:\w+\s+)?\(?[AB]\)?\s+nor\s+(?:\w+\s+)?\(?[AB]\)?"
    r"|no\s+clear\s+winner"
    r"|(?:answers?\s+|responses?\s+)?[AB]\s+and\s+(?:answers?\s+|responses?\s+)?[AB]\s+are\s+(?:equal|equivalent|equally\s+\w+)"
    r"|equal\s+quality"
    r")\b)"
)

_REASON_LABEL_RE = re.compile(
    r"^[*_#>\"' \t-]*(?:reason|reasoning|explanation|rationale|justification)[*_\"' \t]*[:\-][ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_FENCE_LINE_RE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.MULTILINE)


# ---------------------------------------------------------------------------
# Reading one reply
# ---------------------------------------------------------------------------


def _side(letter: str) -> Winner:
    return "A" if letter.upper() == "A" else "B"


def _choice(value: str) -> Winner | None:
    """Read a whole value such as "A", "Answer B", "[[C]]" or "tie"."""
    bracket = _BRACKET_RE.fullmatch(value.strip())
    if bracket:
        return _bracket_value(bracket["value"])
    match = _CHOICE_RE.fullmatch(value.strip(_CHOICE_STRIP))
    if not match:
        return None
    if match["side"]:
        return _side(match["side"])
    return "tie"


def _bracket_value(value: str) -> Winner:
    return "tie" if value.lower() in ("c", "tie") else _side(value)


def _json_tier(objects) -> set[Winner]:
    found: set[Winner] = set()
    for span in objects:
        for d in iter_dicts(span.value):
            for key, value in d.items():
                if normalize_key(str(key)) not in _WINNER_KEYS or not isinstance(value, str):
                    continue
                choice = _choice(value)
                if choice is not None:
                    found.add(choice)
                else:  # e.g. "Answer A is better"
                    found |= _phrase_tier(value)
    return found


def _bracket_tier(prose: str) -> set[Winner]:
    return {_bracket_value(m["value"]) for m in _BRACKET_RE.finditer(prose)}


def _first_line(prose: str) -> str | None:
    for line in prose.splitlines():
        if line.strip():
            return line
    return None


def _label_tier(prose: str) -> set[Winner]:
    found: set[Winner] = set()
    for match in _LABEL_RE.finditer(prose):
        letter = match["side1"] or match["side2"] or match["side3"]
        found.add(_side(letter) if letter else "tie")
    first = _first_line(prose)
    if first is not None:
        choice = _choice(first)
        if choice is not None:
            found.add(choice)
    return found


def _phrase_tier(prose: str) -> set[Winner]:
    found: set[Winner] = set()
    for pattern in _PHRASE_SIDE_RES:
        for match in pattern.finditer(prose):
            found.add(_side(match["s1"] or match["s2"]))
    if _PHRASE_TIE_RE.search(prose):
        found.add("tie")
    return found


def _is_marker_only(line: str) -> bool:
    """True for a line that only states the verdict ("Winner: A", "[[B]]", "A")."""
    if _choice(line) is not None:
        return True
    rest = _LABEL_RE.sub(" ", _BRACKET_RE.sub(" ", line))
    return rest != line and not re.search(r"[^\W_]", rest)


def _prose_reason(prose: str) -> str:
    prose = _FENCE_LINE_RE.sub("", prose)
    kept = [line for line in prose.splitlines() if not _is_marker_only(line)]
    text = "\n".join(kept).strip()
    label = _REASON_LABEL_RE.search(text)
    if label:
        text = text[label.end() :]
    return text.strip()


def parse_verdict(reply: str) -> ParsedVerdict:
    """Parse a pairwise judge reply into ``"A"``, ``"B"``, ``"tie"`` or None.

    ``problem`` is ``None`` when a winner was read, else ``"empty"``,
    ``"no_verdict"`` or ``"ambiguous"``.  Never raises on any text; see the
    module docstring for the accepted shapes and their precedence.
    """
    if reply is None or not reply.strip():
        return ParsedVerdict(None, "", EMPTY)

    objects = find_json_objects(reply)
    prose = text_outside(reply, objects)
    reason = first_text_value(objects, _REASON_KEYS) or _prose_reason(prose)

    tiers = (
        lambda: _json_tier(objects),
        lambda: _bracket_tier(prose),
        lambda: _label_tier(prose),
        lambda: _phrase_tier(prose),
    )
    for tier in tiers:
        found = tier()
        if len(found) == 1:
            return ParsedVerdict(found.pop(), reason, None)
        if len(found) > 1:
            return ParsedVerdict(None, reason, AMBIGUOUS)
    return ParsedVerdict(None, reason, NO_VERDICT)


# ---------------------------------------------------------------------------
# Combining the two orders
# ---------------------------------------------------------------------------

# The student's result in one judgment, keyed by the verdict.
_AS_A = {"A": "win", "B": "loss", "tie": "tie"}  # student shown as answer A
_AS_B = {"A": "loss", "B": "win", "tie": "tie"}  # student shown as answer B


def combine_orders(first: str | None, second: str | None) -> Outcome:
    """Combine the verdicts of both answer orders into the student's outcome.

    ``first`` is the verdict with the student as answer A (teacher as B);
    ``second`` the verdict with the orders swapped (student as B).  Each is
    ``"A"``, ``"B"``, ``"tie"`` or ``None`` (unreadable).

    AlpaGasus rule, from the student's side: (win, win), (win, tie) and
    (tie, win) are a ``"win"``; (loss, loss), (loss, tie) and (tie, loss) a
    ``"loss"``; (tie, tie) and a verdict that follows the position
    (win, loss) / (loss, win) a ``"tie"``.  ``"invalid"`` when either verdict
    is ``None``.  Raises ``ValueError`` for any other string.
    """
    for verdict in (first, second):
        if verdict is not None and verdict not in _AS_A:
            raise ValueError(f"verdict must be 'A', 'B', 'tie' or None, got {verdict!r}")
    if first is None or second is None:
        return "invalid"

    results = {_AS_A[first], _AS_B[second]}
    if results in ({"win"}, {"win", "tie"}):
        return "win"
    if results in ({"loss"}, {"loss", "tie"}):
        return "loss"
    return "tie"  # tie/tie, or win/loss when the judge followed the position
