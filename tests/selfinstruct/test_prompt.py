import json

from selfinstruct.prompt import format_task, load_template, render_generation_prompt, sample_examples

SEEDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Classify the sentiment of the review.", "input": "I loved it {really}.", "output": "Positive"},
    {"instruction": "Translate the sentence to French.", "input": "Good morning", "output": "Bonjour"},
]


def test_render_ends_by_opening_the_next_task():
    prompt = render_generation_prompt(load_template(), SEEDS, num_tasks=20)
    assert prompt.rstrip().endswith("###\n4. Instruction:")
    assert "Write 20 new tasks" in prompt
    assert "1. Input:\n<noinput>" in prompt
    assert "2. Input:\nI loved it {really}." in prompt  # braces in seeds survive formatting
    assert "{" not in prompt.replace("{really}", "")


def test_format_task_blocks():
    block = format_task(2, SEEDS[2])
    assert block == "###\n2. Instruction: Translate the sentence to French.\n2. Input:\nGood morning\n2. Output:\nBonjour\n"


def test_sampling_is_reproducible_per_request(repo_root):
    seeds = [json.loads(line) for line in (repo_root / "data" / "seed_tasks.jsonl").read_text().splitlines()]
    first = sample_examples(seeds, 3, seed=0, request_index=7)
    assert first == sample_examples(seeds, 3, seed=0, request_index=7)
    assert first != sample_examples(seeds, 3, seed=0, request_index=8)
    assert len({s["id"] for s in first}) == 3


def test_json_prompt_shows_examples_as_json():
    from selfinstruct.prompt import render_generation_prompt_json

    prompt = render_generation_prompt_json(load_template("json"), SEEDS, num_tasks=5)
    start = prompt.index("Examples:\n") + len("Examples:\n")
    shown = json.loads(prompt[start:prompt.index("\n\nReply with")])
    assert [t["instruction"] for t in shown["tasks"]] == [s["instruction"] for s in SEEDS]
    assert prompt.strip().endswith("holding 5 new tasks.")
