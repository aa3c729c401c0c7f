"""Pairwise judging: the judge sees both answers to a prompt twice, once in each order.

A verdict that changes with the order is position bias, not preference; `combine_orders`
(eval.verdict) turns the two verdicts into win / tie / loss from the student's side.
"""

from __future__ import annotations

from backends.base import ChatRequest, RequestOutcome
from eval.verdict import combine_orders, parse_verdict
from student.prompt_format import chat_user_message

PAIRWISE_TEMPLATE = "judge_pairwise"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": {"type": "string"}},
    "required": ["winner", "reason"],
}


def prompt_text(item: dict) -> str:
    """The request as a user sees it (the same user turn the chat format trains on)."""
    return chat_user_message(item["instruction"], item.get("input", ""))


def pairwise_requests(items: list[dict], student: dict, teacher: dict, template: str, max_tokens: int,
                      key_prefix: str = "judge") -> list[ChatRequest]:
    """Two requests per item: student as A then teacher as A. `student`/`teacher` map item id to answer;
    `key_prefix` tells apart the judgments of several students of one run."""
    requests = []
    for item in items:
        pairs = {"student_first": (student[item["id"]], teacher[item["id"]]),
                 "teacher_first": (teacher[item["id"]], student[item["id"]])}
        for order, (answer_a, answer_b) in pairs.items():
            prompt = template.format(instruction=prompt_text(item), answer_a=answer_a, answer_b=answer_b)
            requests.append(ChatRequest(
                key=f"{key_prefix}-{item['id']}-{order}",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.0,
                json_mode=True,
                json_schema=VERDICT_SCHEMA,
                meta={"id": item["id"], "order": order},
            ))
    return requests


def judgments(items: list[dict], outcomes: list[RequestOutcome], key_prefix: str = "judge") -> list[dict]:
    """One record per item: both raw verdicts and the combined outcome for the student."""
    by_key = {outcome.key: outcome for outcome in outcomes}
    records = []
    for item in items:
        verdicts = {}
        for order in ("student_first", "teacher_first"):
            outcome = by_key.get(f"{key_prefix}-{item['id']}-{order}")
            text = outcome.text if outcome is not None and outcome.ok else None
            verdicts[order] = (parse_verdict(text) if text is not None else None, text)
        first, first_text = verdicts["student_first"]
        second, second_text = verdicts["teacher_first"]
        records.append({
            "id": item["id"],
            "student_first": {"winner": first.winner if first else None, "reply": first_text},
            "teacher_first": {"winner": second.winner if second else None, "reply": second_text},
            "outcome": combine_orders(first.winner if first else None, second.winner if second else None),
        })
    return records
