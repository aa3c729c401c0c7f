import prompts
from backends.base import ChatRequest, RequestOutcome
from filters.config import FilterConfig
from filters.rate import RATING_TEMPLATE, apply_ratings, rating_requests, record_key

RECORDS = [
    {"id": "a", "instruction": "Name a prime number.", "input": "", "output": "7"},
    {"id": "b", "instruction": "Sort the numbers.", "input": "3 1 2", "output": "1 2 3"},
    {"id": "c", "instruction": "Say hi.", "input": "", "output": "Hi"},
    {"id": "d", "instruction": "Give a colour.", "input": "", "output": "Blue"},
]


def test_requests_are_keyed_by_content_so_reruns_reuse_scores():
    requests = rating_requests(RECORDS, prompts.load_template(RATING_TEMPLATE), FilterConfig())
    assert all(isinstance(r, ChatRequest) and r.json_mode and r.json_schema for r in requests)
    assert requests[0].key == f"rate-{record_key(RECORDS[0])}"
    assert record_key({**RECORDS[0], "id": "other"}) == record_key(RECORDS[0])
    assert "Sort the numbers." in requests[1].messages[0]["content"] and "3 1 2" in requests[1].messages[0]["content"]


def test_apply_ratings_never_reads_a_missing_score_as_a_number():
    outcomes = [
        {"key": f"rate-{record_key(RECORDS[0])}", "ok": True, "text": '{"score": 4.5, "explanation": "right"}'},
        {"key": f"rate-{record_key(RECORDS[1])}", "ok": True, "text": "It is a fine answer."},
        {"key": f"rate-{record_key(RECORDS[2])}", "ok": False, "error": "HTTP 500"},
        # RECORDS[3] never rated: the budget ran out.
    ]
    result = apply_ratings(RECORDS, [RequestOutcome.from_journal(o) for o in outcomes])
    assert [(r["id"], r["score"]) for r in result["rated"]] == [("a", 4.5), ("b", None)]
    assert result["rated"][1]["rating_problem"] == "no_score"
    assert result["rated"][1]["judge_reply"] == "It is a fine answer."
    assert [(r["id"], r["reason"]) for r in result["not_rated"]] == [("c", "request_failed"), ("d", "not_rated:budget")]
    assert result["counts"] == {"not_rated:budget": 1, "request_failed": 1, "score:4.5": 1, "unscored:no_score": 1}
