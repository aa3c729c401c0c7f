"""The student's prompt formats: pure string work, no model needed."""

from __future__ import annotations

import pytest

from student import prompt_format
import prompts
from student.prompt_format import (
    NO_INPUT_TEMPLATE,
    WITH_INPUT_TEMPLATE,
    render_student_prompt,
    to_prompt_completion,
)


class FakeChatTokenizer:
    """Just enough of a tokenizer for apply_chat_template, ChatML-style."""

    chat_template = "chatml"
    eos_token = "<|im_end|>"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, **kwargs):
        self.calls.append({"messages": messages, "tokenize": tokenize, "add_generation_prompt": add_generation_prompt})
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return text


def test_template_files_have_the_placeholders_and_sections():
    with_input = prompts.load_template(WITH_INPUT_TEMPLATE)
    no_input = prompts.load_template(NO_INPUT_TEMPLATE)
    for text in (with_input, no_input):
        assert "{instruction}" in text
        assert "### Instruction:" in text
        assert text.rstrip().endswith("### Response:")
    assert "{input}" in with_input and "### Input:" in with_input
    assert "{input}" not in no_input and "### Input:" not in no_input


def test_alpaca_without_input():
    prompt = render_student_prompt("Name three colours.", "", "alpaca")
    assert "### Instruction:\nName three colours.\n" in prompt
    assert "### Input:" not in prompt
    assert prompt.endswith("### Response:\n")
    assert "{" not in prompt


def test_alpaca_with_input():
    prompt = render_student_prompt("Summarise the text.", "The cat sat on the mat.", "alpaca")
    assert "### Instruction:\nSummarise the text.\n" in prompt
    assert "### Input:\nThe cat sat on the mat.\n" in prompt
    assert prompt.index("### Instruction:") < prompt.index("### Input:") < prompt.index("### Response:")
    assert prompt.endswith("### Response:\n")


def test_alpaca_blank_input_counts_as_no_input():
    assert render_student_prompt("Do it.", "   \n", "alpaca") == render_student_prompt("Do it.", "", "alpaca")


def test_alpaca_braces_in_the_text_are_kept_literally():
    prompt = render_student_prompt("Fill {input} and {0} in", "x = {'a': 1}", "alpaca")
    assert "Fill {input} and {0} in" in prompt
    assert "x = {'a': 1}" in prompt


def test_alpaca_is_deterministic_and_needs_no_tokenizer():
    assert render_student_prompt("A", "B", "alpaca") == render_student_prompt("A", "B", "alpaca", tokenizer=None)


def test_chat_uses_the_tokenizer_template_with_generation_prompt():
    tok = FakeChatTokenizer()
    prompt = render_student_prompt("Translate to French.", "Good morning", "chat", tok)
    assert tok.calls == [
        {
            "messages": [{"role": "user", "content": "Translate to French.\n\nGood morning"}],
            "tokenize": False,
            "add_generation_prompt": True,
        }
    ]
    assert prompt.endswith("<|im_start|>assistant\n")


def test_chat_without_input_is_just_the_instruction():
    tok = FakeChatTokenizer()
    render_student_prompt("Tell a joke.", "", "chat", tok)
    assert tok.calls[0]["messages"][0]["content"] == "Tell a joke."


def test_chat_needs_a_tokenizer_with_a_template():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        render_student_prompt("x", "", "chat")
    tok = FakeChatTokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        render_student_prompt("x", "", "chat", tok)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown prompt format"):
        render_student_prompt("x", "", "vicuna")  # type: ignore[arg-type]


def test_to_prompt_completion_alpaca():
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": " 5 \n"}
    pair = to_prompt_completion(record, "alpaca", None)
    assert pair == {"prompt": render_student_prompt("Add the numbers.", "2 and 3", "alpaca"), "completion": "5"}


def test_to_prompt_completion_chat():
    tok = FakeChatTokenizer()
    pair = to_prompt_completion({"instruction": "Say hi.", "input": "", "output": "Hi!"}, "chat", tok)
    assert pair["prompt"].endswith("<|im_start|>assistant\n")
    assert pair["completion"] == "Hi!"


def test_templates_are_read_once():
    prompt_format._load_template.cache_clear()
    render_student_prompt("a", "", "alpaca")
    render_student_prompt("b", "c", "alpaca")
    assert prompt_format._load_template.cache_info().misses == 2
