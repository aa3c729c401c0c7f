"""Read the 0-5 quality rating out of a judge LLM's free-form reply.

The judge is asked to rate one generated (instruction, input, output) record
AlpaGasus-style, but small judges answer in many shapes.  This module turns a
reply into a :class:`ParsedRating` without ever guessing: when the score cannot
be read with confidence, ``score`` is ``None`` and ``problem`` says why.

What counts as a score marker
-----------------------------
Only *explicit* markers are read; a number elsewhere in the prose ("the answer
lists 3 items") is never taken as the score.  The markers are:

1. **JSON** -- an object anywhere in the reply (bare, inside a ```json fence,
   or surrounded by prose) with a key ``score`` / ``rating`` (also
   ``overall_score``, ``final_rating`` ...; case-insensitive, searched a few
   levels deep).  The value may be a number or a string such as ``"4.5"`` or
   ``"4/5"``.  Text *inside* the object (e.g. its explanation) is not searched
   for further markers.
2. **Label** -- the word ``score`` or ``rating`` followed by a number, with an
   optional separator and markdown: ``Score: 4``, ``**Score**: 5``,
   ``Rating - 3``, ``score is 4``, ``a score of 4``, ``Rating (0-5): 4``,
   ``score: 4.5/5``.  A range such as ``Score: 3-4`` yields both ends.
3. **Fraction on the scale** -- ``4/5`` or ``4 out of 5`` where the
   denominator equals ``high``.  Fractions with another denominator are
   ignored when they stand alone ("3/4 of the steps"), but a label carrying
   one (``Score: 8/10``) is reported as out of range, never rescaled.
4. **Rating verb** -- ``I would rate this 4``, ``I'd rate it a 4``,
   ``I give this answer a 4``.
5. **Bare first line** -- the AlpaGasus format: the first non-empty line is
   only a number (``4.5``, ``**4**``), the explanation follows on later lines.

Precedence and conflicts
------------------------
All markers found are pooled (JSON values, then markers in the prose outside
the JSON objects).  If they all agree, that value is the score; if two markers
disagree, the reply is ``"ambiguous"`` -- no marker silently wins over another.
The agreed value must lie in ``[low, high]`` (and on the ``high`` scale);
otherwise the problem is ``"out_of_range"`` and the value is *not* clamped.

Problems, checked in this order: ``"empty"`` (blank reply), ``"no_score"`` (no
marker at all), ``"ambiguous"`` (markers disagree), ``"out_of_range"``.

Explanation
-----------
Taken from the JSON object's ``explanation`` / ``reason`` / ``rationale`` ...
key when there is one.  Otherwise it is the prose with the lines that hold
nothing but a score marker removed, and a leading ``Explanation:`` label
dropped.  A reply with no score keeps its text as the explanation, which helps
when inspecting failures.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.reply_json import (
    JsonSpan,
    find_json_objects,
    first_text_value,
    iter_dicts,
    normalize_key,
    text_outside,
)

EMPTY = "empty"
NO_SCORE = "no_score"
OUT_OF_RANGE = "out_of_range"
AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class ParsedRating:
    """A judge's rating: the score (or None) with the reason it is missing."""

    score: float | None
    explanation: str
    problem: str | None


# ---------------------------------------------------------------------------
# Marker patterns (each confined to one line)
# ---------------------------------------------------------------------------

_NUM = r"[-+]?\d+(?:\.\d+)?"
# A number must not be glued to a preceding word, decimal point or slash ...
_START = r"(?<![\w./])"
# ... nor run on into more digits, a date, a word, a hyphenated word or a "%".
_END = r"(?![\d/]|\.\d|[^\W\d_]|-\w|[ \t]*%)"
# Optional denominator: "/5" or "out of 5".
_DENOM = r"(?:[ \t]*(?:/|\bout[ \t]+of\b)[ \t]*(?P<denom>" + _NUM + r"))?"

_LABEL_RE = re.compile(
    r"\b(?:score|rating)s?\b"  # the label word
    r"(?:[ \t]*\([^()\n]{0,20}\))?"  # a note such as "(0-5)"
    r"[\"'*_ \t]*"  # closing quote of a JSON-ish key, markdown emphasis
    r"(?:(?:[:=]|-(?=\s)|[\u2013\u2014]|\bis\b|\bof\b)[\"'*_ \t]*)?"  # separator
    + _START
    + r"(?P<value>" + _NUM + r")"
    + r"(?:[ \t]*(?:-|\u2013|\bto\b)[ \t]*(?P<upper>" + _NUM + r"))?"  # a range
    + _DENOM
    + _END,
    re.IGNORECASE,
)

_FRACTION_RE = re.compile(
    _START
    + r"(?P<value>" + _NUM + r")"
    + r"[ \t]*(?:/|\bout[ \t]+of\b)[ \t]*(?P<denom>" + _NUM + r")"
    + _END,
    re.IGNORECASE,
)

_VERB_RE = re.compile(
    r"\b(?:rate|give|assign|award)\b[ \t]+"
    r"(?:(?:this|that|the)(?:[ \t]+(?!(?:an?|as|at)\b)[^\W\d_]+)?|it)"  # object
    r"[ \t]+(?:(?:an?|as|at)[ \t]+(?:an?[ \t]+)?)?"
    + _START
    + r"(?P<value>" + _NUM + r")"
    + _DENOM
    + _END,
    re.IGNORECASE,
)

_NUM_RE = re.compile(_NUM)
# A score given as a JSON string: "4.5", "4/5", "4 out of 5".
_JSON_SCORE_TEXT_RE = re.compile(r"(?P<value>" + _NUM + r")" + _DENOM, re.IGNORECASE)
# Markdown and punctuation allowed around a number that stands alone on a line.
_BARE_LEFT = "*_`#> \t\r\n\f\v"
_BARE_RIGHT = "*_`. \t\r\n\f\v"

_EXPLANATION_LABEL_RE = re.compile(
    r"^[*_#>\"' \t-]*(?:explanation|reason|reasoning|rationale|justification)[*_\"' \t]*[:\-][ \t]*",
    re.IGNORECASE | re.MULTILINE,
)

_FENCE_LINE_RE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.MULTILINE)

_SCORE_KEYS = (
    "score",
    "rating",
    "overall_score",
    "overall_rating",
    "final_score",
    "final_rating",
)
_EXPLANATION_KEYS = (
    "explanation",
    "reason",
    "reasoning",
    "rationale",
    "justification",
    "comment",
    "comments",
    "feedback",
)
# An explanation in JSON-like text that did not parse (single quotes, cut off).
_QUOTED_EXPLANATION_RE = re.compile(
    r"[\"'](?:" + "|".join(_EXPLANATION_KEYS) + r")[\"']\s*:\s*[\"'](?P<text>.*?)(?:[\"']\s*[,}]|\Z)",
    re.IGNORECASE | re.DOTALL,
)


# ---------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    value: float
    scale: float | None  # denominator written with the value, if any


def _to_float(text: str) -> float:
    return float(text) + 0.0  # "+ 0.0" turns -0.0 into 0.0


def _json_candidates(objects: list[JsonSpan]) -> list[_Candidate]:
    """Score values stored under a score/rating key in the JSON objects."""
    out: list[_Candidate] = []
    for span in objects:
        for d in iter_dicts(span.value):
            for key, value in d.items():
                if normalize_key(str(key)) not in _SCORE_KEYS:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    try:
                        out.append(_Candidate(float(value) + 0.0, None))
                    except OverflowError:  # an integer too large for a float
                        out.append(_Candidate(math.inf, None))
                elif isinstance(value, str):
                    match = _JSON_SCORE_TEXT_RE.fullmatch(value.strip())
                    if match:
                        out.append(_candidate_from_match(match)[0])
    return out


def _candidate_from_match(match: re.Match[str]) -> list[_Candidate]:
    denom = match.groupdict().get("denom")
    scale = _to_float(denom) if denom else None
    found = [_Candidate(_to_float(match["value"]), scale)]
    upper = match.groupdict().get("upper")
    if upper:
        found.append(_Candidate(_to_float(upper), scale))
    return found


def _bare_number(line: str) -> str | None:
    """The number on a line that holds nothing else (markdown aside), or None."""
    core = line.lstrip(_BARE_LEFT).rstrip(_BARE_RIGHT)
    return core if _NUM_RE.fullmatch(core) else None


def _bare_first_line(prose: str) -> str | None:
    """The first non-empty line, if it is nothing but a number."""
    for line in prose.splitlines():
        if line.strip():
            return _bare_number(line)
    return None


def _prose_candidates(prose: str, high: float) -> list[_Candidate]:
    """Markers found in the reply's prose (outside JSON objects)."""
    out: list[_Candidate] = []
    for pattern in (_LABEL_RE, _VERB_RE):
        for match in pattern.finditer(prose):
            out.extend(_candidate_from_match(match))
    for match in _FRACTION_RE.finditer(prose):
        if _to_float(match["denom"]) == high:  # only fractions on our scale
            out.extend(_candidate_from_match(match))
    bare = _bare_first_line(prose)
    if bare is not None:
        out.append(_Candidate(_to_float(bare), None))
    return out


def _is_marker_only(line: str) -> bool:
    """True when the line holds a score marker and nothing else worth keeping."""
    if _bare_number(line) is not None:
        return True
    rest = line
    for pattern in (_LABEL_RE, _VERB_RE, _FRACTION_RE):
        rest = pattern.sub(" ", rest)
    return rest != line and not re.search(r"[^\W_]", rest)


def _explanation_line(line: str) -> str | None:
    """A prose line as it should appear in the explanation (None: drop it).

    A leading label ("Score: 4 - clear and correct") is cut off the line, and a
    line holding only a marker ("Score: 4", "4/5", "4.5") is dropped.
    """
    body = line.lstrip(" \t*_#>-")
    label = _LABEL_RE.match(body)
    if label:
        line = body[label.end() :].lstrip(" \t*_.,;:-\u2013\u2014")
    if not re.search(r"[^\W_]", line) or _is_marker_only(line):
        return None
    return line


def _prose_explanation(prose: str) -> str:
    """The prose minus score markers, fences and an 'Explanation:' label."""
    prose = _FENCE_LINE_RE.sub("", prose)
    kept: list[str] = []
    for line in prose.splitlines():
        cleaned = _explanation_line(line)
        if cleaned is not None:
            kept.append(cleaned)
    text = "\n".join(kept).strip()
    label = _EXPLANATION_LABEL_RE.search(text)
    if label:
        text = text[label.end() :]
    return text.strip()



def _loose_json_explanation(prose: str) -> str:
    """Explanation from JSON-like text that did not parse (single quotes, cut off)."""
    match = _QUOTED_EXPLANATION_RE.search(prose)
    return match["text"].strip() if match else ""


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def parse_rating(reply: str, low: float = 0.0, high: float = 5.0) -> ParsedRating:
    """Parse a judge's rating reply into a score on ``[low, high]``.

    Returns a :class:`ParsedRating` whose ``score`` is ``None`` exactly when
    ``problem`` is set (``"empty"``, ``"no_score"``, ``"ambiguous"`` or
    ``"out_of_range"``).  Never raises on any text; see the module docstring
    for the accepted formats and their precedence.
    """
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if reply is None or not reply.strip():
        return ParsedRating(None, "", EMPTY)

    objects = find_json_objects(reply)
    prose = text_outside(reply, objects)
    candidates = _json_candidates(objects) + _prose_candidates(prose, high)

    explanation = (
        first_text_value(objects, _EXPLANATION_KEYS)
        or _loose_json_explanation(prose)
        or _prose_explanation(prose)
    )

    if not candidates:
        return ParsedRating(None, explanation, NO_SCORE)

    # A value written without a denominator is read on our own scale.
    distinct = {(c.value, high if c.scale is None else c.scale) for c in candidates}
    if len(distinct) > 1:
        return ParsedRating(None, explanation, AMBIGUOUS)

    value, scale = distinct.pop()
    if scale != high or not math.isfinite(value) or not low <= value <= high:
        return ParsedRating(None, explanation, OUT_OF_RANGE)
    return ParsedRating(value, explanation, None)
