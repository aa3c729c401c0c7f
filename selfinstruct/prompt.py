"""The self-instruct generation prompt: a template file plus in-context seed tasks.

As in Stanford Alpaca, a few seed tasks are shown as numbered instruction / input / output
blocks separated by "###", and the prompt ends by opening the next block, so the teacher
continues the list.
"""

from __future__ import annotations

import json
import random

import prompts

GENERATION_TEMPLATE = "self_instruct"
GENERATION_TEMPLATE_JSON = "self_instruct_json"
NO_INPUT = "<noinput>"

# The reply shape for `reply_format: json`: servers with structured output (vLLM,
# llama.cpp, OpenAI) constrain decoding to it, so even a tiny teacher's reply parses.
TASKS_SCHEMA = {
    "type": "object",
    "properties": {
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"instruction": {"type": "string"}, "input": {"type": "string"},
                               "output": {"type": "string"}},
                "required": ["instruction", "input", "output"],
            },
        }
    },
    "required": ["tasks"],
}


def load_template(reply_format: str = "numbered") -> str:
    """The template text for a reply format; it holds {num_tasks} and {examples} placeholders."""
    return prompts.load_template(GENERATION_TEMPLATE_JSON if reply_format == "json" else GENERATION_TEMPLATE)


def format_task(index: int, task: dict) -> str:
    """One numbered task block in the layout the teacher is asked to follow."""
    task_input = task.get("input", "").strip() or NO_INPUT
    return (
        f"###\n{index}. Instruction: {task['instruction'].strip()}\n"
        f"{index}. Input:\n{task_input}\n"
        f"{index}. Output:\n{task['output'].strip()}\n"
    )


def domain_guideline(domain: str | None) -> str:
    """The extra guideline that keeps a domain-specific assistant's tasks on its domain."""
    if not domain:
        return ""
    return (f"\n8. Every task must belong to this domain: {domain.strip()} "
            "Stay within it, while varying the kind of task as much as the domain allows.")


def render_generation_prompt(template: str, examples: list[dict], num_tasks: int, domain: str | None = None) -> str:
    """The full prompt: guidelines, the in-context examples, and the opening of the next task."""
    blocks = "".join(format_task(i, task) for i, task in enumerate(examples, start=1))
    blocks += f"###\n{len(examples) + 1}. Instruction:"
    return template.format(num_tasks=num_tasks, examples=blocks, domain_guideline=domain_guideline(domain))


def render_generation_prompt_json(template: str, examples: list[dict], num_tasks: int,
                                  domain: str | None = None) -> str:
    """The prompt for `reply_format: json`: the examples shown as the JSON the reply should be."""
    shown = {"tasks": [{"instruction": t["instruction"].strip(), "input": t.get("input", "").strip(),
                        "output": t["output"].strip()} for t in examples]}
    return template.format(num_tasks=num_tasks, examples=json.dumps(shown, indent=1, ensure_ascii=False),
                           domain_guideline=domain_guideline(domain))


def sample_examples(seeds: list[dict], count: int, seed: int, request_index: int) -> list[dict]:
    """The seed tasks shown in request `request_index`; the same every rerun."""
    rng = random.Random(f"{seed}:{request_index}")
    return rng.sample(seeds, min(count, len(seeds)))
