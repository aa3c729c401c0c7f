"""Every prompt template renders with sample values and leaves no placeholder unfilled."""

import re
import string
from pathlib import Path

import pytest

PROMPTS = sorted((Path(__file__).resolve().parent.parent / "prompts").glob("*.txt"))


@pytest.mark.parametrize("path", PROMPTS, ids=[p.name for p in PROMPTS])
def test_prompt_renders(path):
    text = path.read_text(encoding="utf-8")
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields, f"{path.name} has no placeholders"
    values = {name: f"<<{name.upper()}-SAMPLE>>" for name in fields}
    rendered = text.format(**values)
    for value in values.values():
        assert value in rendered
    # Literal braces (JSON shapes shown to the model) survive as single braces.
    assert "{{" not in rendered and not re.search(r"\{[a-z_]+\}", rendered)


def test_prompt_files_are_known():
    assert {"self_instruct.txt", "self_instruct_json.txt", "rate_pair.txt", "judge_pairwise.txt"} <= {p.name for p in PROMPTS}
