from selfinstruct.parse import parse_generated_tasks

CONTINUATION = """ Suggest a name for a bakery that sells vegan cakes.
4. Input:
<noinput>
4. Output:
Green Crumb Bakery
###
5. Instruction: Classify the animal as a mammal or a bird.
5. Input:
Penguin
5. Output:
Bird
###
6. Instruction: Rewrite the sentence in the passive voice.
6. Input:
The cat chased the mouse.
6. Output:
The mouse was chased"""


def test_completion_style_continuation_is_read():
    tasks, problems = parse_generated_tasks(CONTINUATION, next_index=4, finish_reason="stop")
    assert [t.instruction for t in tasks] == [
        "Suggest a name for a bakery that sells vegan cakes.",
        "Classify the animal as a mammal or a bird.",
        "Rewrite the sentence in the passive voice.",
    ]
    assert tasks[0].input == ""  # <noinput>
    assert tasks[1].input == "Penguin" and tasks[1].output == "Bird"
    assert problems == []


def test_last_task_dropped_when_cut_off_by_length():
    tasks, problems = parse_generated_tasks(CONTINUATION, next_index=4, finish_reason="length")
    assert len(tasks) == 2
    assert [p.reason for p in problems] == ["truncated"]


def test_chat_reply_that_repeats_the_marker():
    reply = "4. Instruction: List two prime numbers.\n4. Input:\n<noinput>\n4. Output:\n2 and 3"
    tasks, problems = parse_generated_tasks(reply, next_index=4, finish_reason="stop")
    assert [(t.instruction, t.input, t.output) for t in tasks] == [("List two prime numbers.", "", "2 and 3")]


def test_markdown_and_missing_separators():
    reply = (
        "Sure! Here are tasks:\n**Instruction:** Name a planet with rings.\n**Input:** <noinput>\n"
        "**Output:** Saturn\n**Instruction:** Give a synonym for happy.\n**Input:**\n\n**Output:** Glad\n"
    )
    tasks, problems = parse_generated_tasks(reply, next_index=4, finish_reason="stop")
    # The preamble before the first marker becomes the instruction of task 4 and lacks fields.
    assert [t.instruction for t in tasks] == ["Name a planet with rings.", "Give a synonym for happy."]
    assert [t.output for t in tasks] == ["Saturn", "Glad"]
    assert [p.reason for p in problems] == ["missing_field"]


def test_block_missing_a_field_is_reported_not_guessed():
    reply = " Tell a joke about cats.\n4. Output:\nWhy did the cat..."
    tasks, problems = parse_generated_tasks(reply, next_index=4, finish_reason="stop")
    assert tasks == []
    assert [p.reason for p in problems] == ["missing_field"]


def test_empty_reply():
    tasks, problems = parse_generated_tasks("", next_index=4, finish_reason="stop")
    assert tasks == []
    assert len(problems) == 1


from selfinstruct.parse import parse_json_tasks  # noqa: E402


def test_json_reply_is_read():
    reply = '{"tasks": [{"instruction": "Name a prime.", "input": "", "output": "7"}, ' \
            '{"instruction": "Sort the list.", "input": "3, 1, 2", "output": "1, 2, 3"}]}'
    tasks, problems = parse_json_tasks(reply, "stop")
    assert [(t.instruction, t.input, t.output) for t in tasks] == [("Name a prime.", "", "7"),
                                                                    ("Sort the list.", "3, 1, 2", "1, 2, 3")]
    assert problems == []


def test_json_reply_cut_off_keeps_the_complete_tasks():
    reply = '{"tasks": [{"instruction": "Name a prime.", "input": "", "output": "7"}, {"instruction": "Sort th'
    tasks, problems = parse_json_tasks(reply, "length")
    assert [t.instruction for t in tasks] == ["Name a prime."]
    assert [p.reason for p in problems] == ["truncated"]


def test_json_reply_with_missing_fields_or_none():
    tasks, problems = parse_json_tasks('{"tasks": [{"instruction": "x"}]}', "stop")
    assert tasks == [] and [p.reason for p in problems] == ["missing_field"]
    tasks, problems = parse_json_tasks("no json here", "stop")
    assert tasks == [] and [p.reason for p in problems] == ["no_tasks"]
