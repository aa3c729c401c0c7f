"""An LLM judge rates every pair 0-5, AlpaGasus-style (the requests and reading their
replies; `filters.judge` is the filter step that sends them and keeps the best).

Requests are keyed by a hash of the record's content, so a rerun (or a later run over the
same records with the same judge journal) reuses every score already paid for. A reply
without a readable score in range is counted and kept out, with the reply saved; it is
never read as 0 or 5.
"""

from __future__ import annotations

from collections import Counter

from backends.base import ChatRequest, RequestOutcome
from filters.base import record_key
from filters.config import FilterConfig
from filters.score_parse import parse_rating

RATING_TEMPLATE = "rate_pair"
# Servers with structured output constrain the judge's reply to this shape; the parser
# still checks the score's range and reads looser replies from servers without it.
RATING_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number"}, "explanation": {"type": "string"}},
    "required": ["score", "explanation"],
}


def render_rating_prompt(template: str, record: dict) -> str:
    """The judge's prompt for one record."""
    return template.format(
        instruction=record["instruction"],
        input=record.get("input", "").strip() or "(none)",
        output=record.get("output", ""),
    )


def rating_requests(records: list[dict], template: str, settings: FilterConfig) -> list[ChatRequest]:
    """One rating request per record, in JSON mode."""
    return [
        ChatRequest(
            key=f"rate-{record_key(record)}",
            messages=[{"role": "user", "content": render_rating_prompt(template, record)}],
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            json_mode=True,
            json_schema=RATING_SCHEMA,
            meta={"id": record.get("id")},
        )
        for record in records
    ]


def apply_ratings(records: list[dict], outcomes: list[RequestOutcome]) -> dict:
    """Join records with their ratings. Returns the rated records (score None when the reply
    had no readable score, with the reply saved), the records never rated, and counts."""
    by_key = {outcome.key: outcome for outcome in outcomes}
    rated, not_rated = [], []
    counts: Counter = Counter()
    for record in records:
        outcome = by_key.get(f"rate-{record_key(record)}")
        if outcome is None:
            counts["not_rated:budget"] += 1
            not_rated.append({"id": record.get("id"), "stage": "filter", "reason": "not_rated:budget", "record": record})
            continue
        if not outcome.ok:
            counts["request_failed"] += 1
            not_rated.append({"id": record.get("id"), "stage": "filter", "reason": "request_failed",
                              "error": outcome.error, "record": record})
            continue
        parsed = parse_rating(outcome.text)
        entry = {**record, "score": parsed.score, "explanation": parsed.explanation}
        if parsed.score is None:
            counts[f"unscored:{parsed.problem}"] += 1
            entry.update(rating_problem=parsed.problem, judge_reply=outcome.text)
        else:
            counts[f"score:{parsed.score:g}"] += 1
        rated.append(entry)
    return {"rated": rated, "not_rated": not_rated, "counts": dict(sorted(counts.items()))}
