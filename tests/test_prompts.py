"""Every prompt template renders with sample values and leaves no placeholder unfilled."""

import re
import string

import pytest

import prompts

PROMPTS = prompts.template_names()


@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_renders(name):
    text = prompts.load_template(name)
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields, f"{name} has no placeholders"
    values = {name: f"<<{name.upper()}-SAMPLE>>" for name in fields}
    rendered = text.format(**values)
    for value in values.values():
        assert value in rendered
    # Literal braces (JSON shapes shown to the model) survive as single braces.
    assert "{{" not in rendered and not re.search(r"\{[a-z_]+\}", rendered)


def test_prompt_files_are_known():
    assert {"self_instruct", "self_instruct_json", "rate_pair", "judge_pairwise"} <= set(PROMPTS)
    assert set(prompts.template_hashes()) == {f"{name}.txt" for name in PROMPTS}
