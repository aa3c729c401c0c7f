"""Reading JSON objects out of a model's free-form reply (bare, fenced in ```json, or inside
prose), as both the filter's rating parser and the evaluator's verdict parser need."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class JsonSpan:
    """A JSON object found in a text, with its character span ``[start, end)``."""

    value: dict[str, Any]
    start: int
    end: int


def find_json_objects(text: str, max_failures: int = 200) -> list[JsonSpan]:
    """Return the top-level JSON objects embedded in ``text``, left to right.

    Works whether the object is bare, fenced in ```json, or surrounded by
    prose.  Objects nested inside a found object are not reported separately.
    Malformed candidates are skipped; after ``max_failures`` of them the search
    stops, which keeps pathological input (thousands of "{") fast.
    """
    found: list[JsonSpan] = []
    failures = 0
    pos = text.find("{")
    while pos != -1 and failures < max_failures:
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            failures += 1
            pos = text.find("{", pos + 1)
            continue
        found.append(JsonSpan(value, pos, end))  # raw_decode at "{" gives a dict
        pos = text.find("{", end)
    return found


def text_outside(text: str, spans: list[JsonSpan]) -> str:
    """Return ``text`` with the given JSON spans cut out."""
    pieces, last = [], 0
    for span in spans:
        pieces.append(text[last : span.start])
        last = span.end
    pieces.append(text[last:])
    return "".join(pieces)


def iter_dicts(obj: dict[str, Any], max_depth: int = 3) -> Iterator[dict[str, Any]]:
    """Yield ``obj`` and the dicts nested in its values, breadth first."""
    level = [obj]
    for _ in range(max_depth + 1):
        nested: list[dict[str, Any]] = []
        for d in level:
            yield d
            nested.extend(v for v in d.values() if isinstance(v, dict))
        level = nested


def normalize_key(key: str) -> str:
    """Lower-case a JSON key and turn spaces/dashes into underscores."""
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def first_text_value(objects: list[JsonSpan], keys: tuple[str, ...]) -> str:
    """Return the first non-empty string stored under one of ``keys``, or ""."""
    for span in objects:
        for d in iter_dicts(span.value):
            for key, value in d.items():
                if normalize_key(str(key)) in keys and isinstance(value, str) and value.strip():
                    return value.strip()
    return ""
