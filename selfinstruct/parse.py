"""Parse a teacher's reply into instruction / input / output tasks.

The reply continues a numbered list ("N. Instruction: ... N. Input: ... N. Output: ...")
whose blocks are separated by "###". A completion-style teacher starts right after the
opening "N. Instruction:" of the prompt; a chat teacher often repeats the marker; both are
read. Blocks that lack a field are reported, not guessed at; when the reply was cut off by
the length limit its last block is dropped, as in Alpaca.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from selfinstruct.prompt import NO_INPUT

# "3. Instruction:", "3) Input:", "**Output:**", "Instruction:" (number optional, markdown tolerated)
_FIELD = re.compile(
    r"^[ \t]*(?:\*\*)?[ \t]*(?:(\d+)[ \t]*[.)][ \t]*)?(?:\*\*)?[ \t]*(Instruction|Input|Output)[ \t]*(?:\*\*)?[ \t]*:(?:\*\*)?",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True)
class ParsedTask:
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class ParseProblem:
    reason: str  # "missing_field", "truncated", "no_tasks"
    text: str


def _blocks(text: str) -> list[str]:
    """Split on '###' separators, and also where a new 'Instruction:' field starts."""
    blocks = []
    for chunk in re.split(r"^[ \t]*#{3,}[ \t]*$|#{3,}", text, flags=re.MULTILINE):
        starts = [m.start() for m in _FIELD.finditer(chunk) if m.group(2).lower() == "instruction"]
        if not starts or starts[0] != 0:
            starts = [0] + starts
        for begin, end in zip(starts, starts[1:] + [len(chunk)]):
            if chunk[begin:end].strip():
                blocks.append(chunk[begin:end])
    return blocks


def _parse_block(block: str) -> ParsedTask | None:
    fields: dict[str, str] = {}
    matches = list(_FIELD.finditer(block))
    for match, following in zip(matches, matches[1:] + [None]):
        name = match.group(2).lower()
        end = following.start() if following else len(block)
        if name in fields:  # a second field of the same name: the block is malformed
            return None
        fields[name] = block[match.end():end].strip()
    if set(fields) != {"instruction", "input", "output"}:
        return None
    task_input = fields["input"]
    if task_input.strip().lower() in {NO_INPUT, "<no input>", "none", "n/a", ""}:
        task_input = ""
    return ParsedTask(fields["instruction"], task_input, fields["output"])


def parse_generated_tasks(
    reply: str, next_index: int, finish_reason: str | None
) -> tuple[list[ParsedTask], list[ParseProblem]]:
    """Tasks read from a reply, and a problem for every block that could not be read."""
    text = reply
    # The prompt ended with "N. Instruction:"; a reply that does not open with a field
    # marker (after any "###") continues that instruction.
    first = _FIELD.search(text)
    opening = text[: first.start()] if first else text
    if first is None or first.group(2).lower() != "instruction" or opening.replace("#", "").strip():
        text = f"{next_index}. Instruction: " + text
    tasks: list[ParsedTask] = []
    problems: list[ParseProblem] = []
    blocks = _blocks(text)
    for position, block in enumerate(blocks):
        is_last = position == len(blocks) - 1
        if is_last and finish_reason == "length":
            problems.append(ParseProblem("truncated", block.strip()))
            continue
        task = _parse_block(block)
        if task is None:
            problems.append(ParseProblem("missing_field", block.strip()))
        else:
            tasks.append(task)
    if not blocks:
        problems.append(ParseProblem("no_tasks", reply.strip()))
    return tasks, problems


def parse_alpaca_tasks(
    reply: str, next_index: int, finish_reason: str | None
) -> tuple[list[ParsedTask], list[ParseProblem]]:
    """Tasks read from a reply exactly as Stanford Alpaca's post-processing reads it
    (`generate.parse: alpaca`, the replication preset).

    Alpaca puts the prompt's last words back in front of the reply ("N. Instruction:", N the
    prompt's next index), splits the text on every "###", drops the last block when the reply
    hit the length limit, and reads block i (numbered N + i) by splitting it on its own number
    only: "N+i. Instruction:", "N+i. Input:", "N+i. Output:" with whitespace after the dot. A
    block that does not split into exactly those three fields is dropped, whatever else it
    holds, so a line of a task's own text that starts with an unnumbered "Input:" or with
    another number is text, not a field. The three fields are taken by position and stripped;
    an input that reads "<noinput>" (any case) is empty; nothing else is mapped.

    One difference, for chat teachers: a reply that itself opens with "N. Instruction:" (a chat
    model repeats the prompt's last words; a completion model never does) has that one opening
    marker removed first, so its first task is not lost to a doubled marker. On replies in
    Alpaca's own format this never applies.

    Blocks dropped are reported as problems ("truncated", "missing_field"); empty blocks (a
    trailing "###") are not tasks and are not reported.
    """
    opening = f"{next_index}. Instruction:"
    text = reply
    if text.lstrip().startswith(opening):
        text = text.lstrip()[len(opening):]
    blocks = re.split("###", opening + text)
    tasks: list[ParsedTask] = []
    problems: list[ParseProblem] = []
    for position, block in enumerate(blocks):
        if position == len(blocks) - 1 and finish_reason == "length":
            if block.strip():
                problems.append(ParseProblem("truncated", block.strip()))
            continue
        parts = re.split(rf"{next_index + position}\.\s+(Instruction|Input|Output):", block)
        if len(parts) != 7:
            if block.strip():
                problems.append(ParseProblem("missing_field", block.strip()))
            continue
        task_input = parts[4].strip()
        tasks.append(ParsedTask(parts[2].strip(), "" if task_input.lower() == NO_INPUT else task_input,
                                parts[6].strip()))
    return tasks, problems


def parse_json_tasks(reply: str, finish_reason: str | None) -> tuple[list[ParsedTask], list[ParseProblem]]:
    """Tasks read from a `{"tasks": [...]}` reply; when the reply was cut off, every complete
    task object before the cut is kept and the cut one is reported as truncated."""
    problems: list[ParseProblem] = []
    start = reply.find("[")
    if start < 0:
        return [], [ParseProblem("no_tasks", reply.strip()[:2000])]
    decoder = json.JSONDecoder()
    tasks: list[ParsedTask] = []
    position = start + 1
    while True:
        brace = reply.find("{", position)
        if brace < 0:
            break
        try:
            value, position = decoder.raw_decode(reply, brace)
        except json.JSONDecodeError:
            reason = "truncated" if finish_reason == "length" else "malformed_json"
            problems.append(ParseProblem(reason, reply[brace:brace + 2000]))
            break
        fields = value if isinstance(value, dict) else {}
        if all(isinstance(fields.get(k), str) for k in ("instruction", "input", "output")):
            task_input = "" if fields["input"].strip().lower() in {NO_INPUT, "<no input>", "none", "n/a"} else fields["input"]
            tasks.append(ParsedTask(fields["instruction"].strip(), task_input.strip(), fields["output"].strip()))
        else:
            problems.append(ParseProblem("missing_field", json.dumps(value)[:2000]))
    if not tasks and not problems:
        problems.append(ParseProblem("no_tasks", reply.strip()[:2000]))
    return tasks, problems
