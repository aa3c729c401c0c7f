"""How an instruction record is shown to the student, in training and at evaluation time.

Two formats:

* ``alpaca``: a plain-text template with ``### Instruction:`` / ``### Input:`` /
  ``### Response:`` sections. The two templates (with and without an input) live in
  ``prompts/student_with_input.txt`` and ``prompts/student_no_input.txt`` and use the
  placeholders ``{instruction}`` and ``{input}``.
* ``chat``: the tokenizer's own chat template, with the instruction (and the input, if
  any) as a single user message and the assistant turn opened.

Everything here is pure (no model, no I/O besides reading the two template files once),
so the evaluator uses :func:`render_student_prompt` to prompt the fine-tuned student
exactly as it was trained.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, Sequence

import prompts

WITH_INPUT_TEMPLATE = "student_with_input"
NO_INPUT_TEMPLATE = "student_no_input"

PromptFormat = Literal["alpaca", "chat"]
FORMATS: tuple[str, ...] = ("alpaca", "chat")


@lru_cache(maxsize=None)
def _load_template(name: str) -> str:
    """A template's text, ending in exactly one newline (after "### Response:")."""
    return prompts.load_template(name).rstrip() + "\n"


def load_templates() -> tuple[str, str]:
    """The alpaca templates as ``(with_input, no_input)`` strings."""
    return _load_template(WITH_INPUT_TEMPLATE), _load_template(NO_INPUT_TEMPLATE)


def chat_user_message(instruction: str, input: str = "") -> str:  # noqa: A002 - matches the record field
    """The user turn of the chat format: the instruction, then the input after a blank line."""
    instruction = instruction.strip()
    input = (input or "").strip()
    return f"{instruction}\n\n{input}" if input else instruction


def render_student_prompt(
    instruction: str,
    input: str = "",  # noqa: A002 - matches the record field
    fmt: PromptFormat = "alpaca",
    tokenizer: Any = None,
) -> str:
    """The prompt the student sees for one task; its answer is expected right after it.

    ``fmt="alpaca"`` fills the matching template (the with-input one only when ``input``
    is non-blank); the result ends with ``"### Response:\\n"``.
    ``fmt="chat"`` needs ``tokenizer`` (with a chat template): the instruction (+ input)
    becomes the user message and the generation prompt of the assistant turn is added.
    """
    if fmt == "alpaca":
        with_input, no_input = load_templates()
        instruction = instruction.strip()
        input = (input or "").strip()
        if input:
            return with_input.format_map({"instruction": instruction, "input": input})
        return no_input.format_map({"instruction": instruction})
    if fmt == "chat":
        if tokenizer is None:
            raise ValueError("prompt format 'chat' needs a tokenizer (for its chat template)")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt format 'chat' needs a tokenizer with a chat template; "
                f"{type(tokenizer).__name__} has none (use prompt_format: alpaca)"
            )
        messages = [{"role": "user", "content": chat_user_message(instruction, input)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(FORMATS)}")


def to_prompt_completion(record: dict, fmt: PromptFormat, tokenizer: Any = None) -> dict[str, str]:
    """One training example for trl: ``{"prompt": ..., "completion": ...}``.

    The completion is the record's output, stripped; the end-of-sequence token is left
    for the trainer to append (trl does so for prompt-completion data).
    """
    prompt = render_student_prompt(record["instruction"], record.get("input", "") or "", fmt, tokenizer)
    return {"prompt": prompt, "completion": record["output"].strip()}


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """How many leading tokens two sequences share (where trl's prompt / completion rule starts the
    completion: the prompt tokenized alone against prompt + completion tokenized whole)."""
    length = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        length += 1
    return length
