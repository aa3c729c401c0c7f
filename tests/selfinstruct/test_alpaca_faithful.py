"""The replication preset keeps exactly what Stanford Alpaca keeps, on replies in Alpaca's own
numbered format built from real Alpaca records (../shared/data/alpaca_5000.json).

`alpaca_post_process` below is this test's own reimplementation of the procedure Alpaca
published for its generated replies (generate_instruction.py, post_process_gpt3_response):
put "N. Instruction:" back in front of the reply, split on "###", skip the last block when the
reply hit the length limit, split block i on its own number's "N+i. Instruction:",
"N+i. Input:", "N+i. Output:" (a regex with whitespace after the dot), keep it only when that
gives exactly the three fields, map "<noinput>" to an empty input, then drop instructions of
<= 3 or > 150 words, with a blocked word (whole word, any case), starting with "Write a
program", with punctuation or with a non-ASCII character. The project's side is the real
generate loop (`SelfInstructRun.absorb`) with `generate.parse: alpaca`, near-duplicate removal
off (ROUGE-L threshold 1: only the post-processing is compared).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.base import RequestOutcome
from selfinstruct.config import GenerateConfig
from selfinstruct.generate import SelfInstructRun

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
REPLIES = 450
FIRST_INDEX = 4  # three seed tasks in the prompt, as Alpaca shows them

ALPACA_BLACKLIST = ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]


def alpaca_fields(num_prompt_instructions: int, text: str, finish_reason) -> list[tuple[str, str, str]]:
    """The (instruction, input, output) of every block Alpaca's published rule reads."""
    raw_blocks = re.split("###", f"{num_prompt_instructions + 1}. Instruction:" + text)
    fields = []
    for number, block in enumerate(raw_blocks):
        if number == len(raw_blocks) - 1 and finish_reason == "length":
            continue
        index = number + num_prompt_instructions + 1
        pieces = re.split(rf"{index}\.\s+(Instruction|Input|Output):", block)
        if len(pieces) != 7:
            continue
        task_input = pieces[4].strip()
        fields.append((pieces[2].strip(), "" if task_input.lower() == "<noinput>" else task_input, pieces[6].strip()))
    return fields


def alpaca_post_process(num_prompt_instructions: int, text: str, finish_reason: str) -> list[dict]:
    """Alpaca's published post-processing rule, written out for this test: its fields, then its filters."""
    kept = []
    for instruction, task_input, output in alpaca_fields(num_prompt_instructions, text, finish_reason):
        words = instruction.split()
        if len(words) <= 3 or len(words) > 150:
            continue
        if any(re.search(rf"\b({word})\b", instruction, flags=re.IGNORECASE) for word in ALPACA_BLACKLIST):
            continue
        if instruction.startswith("Write a program"):
            continue
        if instruction[0] in string.punctuation or not instruction[0].isascii():
            continue
        kept.append({"instruction": instruction, "input": task_input, "output": output})
    return kept


def alpaca_block(index: int, record: dict, opening: bool, rng: random.Random) -> str:
    """One task in Alpaca's prompt layout (the first one continues the prompt's "N. Instruction:")."""
    task_input = record["input"].strip()
    if not task_input:  # as Alpaca's prompt writes an empty input; now and then a variant a model types
        task_input = rng.choice(["<noinput>"] * 8 + ["<No input>", "<no input>", "None", "<NoInput>"])
    head = " " if opening else f"###\n{index}. Instruction: "
    return (f"{head}{record['instruction'].strip()}\n{index}. Input:\n{task_input}\n"
            f"{index}. Output:\n{record['output'].strip()}\n")


def build_replies() -> list[tuple[str, str]]:
    """(reply, finish_reason) pairs: 1-17 consecutive real records each, numbered from 4; some end
    with a stray "###", some are cut mid-task by the length limit."""
    records = json.loads((SHARED_DATA / "alpaca_5000.json").read_text(encoding="utf-8"))
    rng = random.Random(18)
    replies, start = [], 0
    for _ in range(REPLIES):
        count = rng.randint(1, 17)
        chosen = [records[(start + i) % len(records)] for i in range(count)]
        start += count
        text = "".join(alpaca_block(FIRST_INDEX + i, record, i == 0, rng) for i, record in enumerate(chosen))
        finish = "stop"
        shape = rng.random()
        if shape < 0.25:
            text = text[: rng.randint(len(text) // 2, len(text) - 1)]  # cut by the length limit
            finish = "length"
        elif shape < 0.4:
            text += "###\n"
        replies.append((text, finish))
    return replies


def project_keeps(text: str, finish_reason: str, parse: str) -> list[dict]:
    settings = GenerateConfig(parse=parse, rouge_threshold=1.0, target_records=10**6)
    run = SelfInstructRun(settings, seeds=[], template="")
    run.absorb([RequestOutcome(key="gen-000000", meta={"next_index": FIRST_INDEX}, ok=True, text=text,
                               finish_reason=finish_reason, completion_tokens=1)])
    return [{key: record[key] for key in ("instruction", "input", "output")} for record in run.kept]


def test_the_alpaca_preset_keeps_exactly_what_alpaca_keeps_on_alpaca_format_replies():
    replies = build_replies()
    tasks = sum(text.count("###") + 1 for text, _ in replies)
    assert len(replies) >= 400 and tasks > 3000
    differing = [number for number, (text, finish) in enumerate(replies)
                 if project_keeps(text, finish, "alpaca") != alpaca_post_process(FIRST_INDEX - 1, text, finish)]
    assert differing == []
    kept = sum(len(alpaca_post_process(FIRST_INDEX - 1, text, finish)) for text, finish in replies)
    assert kept > 2000  # the comparison is over thousands of kept tasks, not a few

    # The lenient reading (the default, for other formats) is not Alpaca's on the same replies:
    # unnumbered "Input:" / "Output:" lines inside real tasks, its empty-output check, and the
    # "<no input>" variants make it keep other tasks.
    lenient = [number for number, (text, finish) in enumerate(replies)
               if project_keeps(text, finish, "lenient") != alpaca_post_process(FIRST_INDEX - 1, text, finish)]
    assert len(lenient) > 10


def test_a_line_starting_with_an_unnumbered_field_is_text_of_the_task():
    text = (" Rewrite the dialogue below as indirect speech.\n4. Input:\nInput: How are you?\nOutput: Fine.\n"
            "4. Output:\nShe asked how he was, and he said he was fine.\n###\n"
            "5. Instruction: Name the largest ocean on Earth.\n5. Input:\n<No input>\n5. Output:\n\n")
    kept = project_keeps(text, "stop", "alpaca")
    assert kept == alpaca_post_process(3, text, "stop") == [
        {"instruction": "Rewrite the dialogue below as indirect speech.",
         "input": "Input: How are you?\nOutput: Fine.", "output": "She asked how he was, and he said he was fine."},
        {"instruction": "Name the largest ocean on Earth.", "input": "<No input>", "output": ""},
    ]
    # The lenient reading takes the inner lines for fields and loses the first task.
    assert [t["instruction"] for t in project_keeps(text, "stop", "lenient")] == []


def test_a_chat_reply_that_repeats_the_opening_marker_keeps_its_first_task():
    reply = "4. Instruction: List two prime numbers below ten.\n4. Input:\n<noinput>\n4. Output:\n2 and 3\n"
    assert alpaca_post_process(3, reply, "stop") == []  # Alpaca's rule loses it to the doubled marker
    assert project_keeps(reply, "stop", "alpaca") == [
        {"instruction": "List two prime numbers below ten.", "input": "", "output": "2 and 3"}]


def test_the_replication_preset_reads_replies_as_alpaca(repo_root):
    from pipeline.config import load_config

    assert load_config(repo_root / "configs" / "alpaca.yaml").generate.parse == "alpaca"
    assert load_config(repo_root / "configs" / "demo.yaml").generate.parse == "lenient"
    with pytest.raises(ValueError, match="parse alpaca .* reply_format numbered"):
        GenerateConfig(parse="alpaca", reply_format="json")


MARKERS = ["Instruction:", "Input:", "Output:", "###", "4.", "5. ", "4. Instruction:", "5. Input:", "\n",
           "<noinput>", ":"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(MARKERS)), max_size=40).map("".join),
       st.sampled_from(["stop", "length", None]))
def test_the_alpaca_reading_never_raises_and_accounts_for_every_reply(reply, finish_reason):
    from selfinstruct.parse import parse_alpaca_tasks

    tasks, problems = parse_alpaca_tasks(reply, 4, finish_reason)
    assert tasks or problems
    if not reply.lstrip().startswith("4. Instruction:"):  # the chat-reply normalization aside, Alpaca's fields
        assert [(t.instruction, t.input, t.output) for t in tasks] == alpaca_fields(3, reply, finish_reason)

