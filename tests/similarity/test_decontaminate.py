"""Decontamination (similarity.decontaminate) against every shipped evaluation prompt: exact
copies, copies with case, punctuation and whitespace mangled, copies behind a short lead-in,
lightly reworded copies; and real Alpaca records, which must nearly all be kept."""

import json
import re
from pathlib import Path

import pytest

from eval.sets import EVAL_SETS
from similarity.decontaminate import Decontaminator, normalized_words, prompt_text

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LEAD_INS = ["Here is a task for you.", "Please answer the following question:", "Quick one.",
            "I was asked this at work today, can you help?"]


@pytest.fixture(scope="module")
def shipped():
    prompts = [{**prompt, "set": name} for name, eval_set in EVAL_SETS.items() for prompt in eval_set.prompts()]
    return prompts, Decontaminator(prompts)


def mangled(text: str) -> str:
    """Upper case, punctuation dropped or doubled, whitespace widened and broken across lines."""
    text = re.sub(r"[.,?!:;']", lambda m: " " if m.start() % 2 else m.group(0) * 2, text.upper())
    return re.sub(r"\s+", lambda m: "  \n " if m.start() % 3 == 0 else "   ", text)


def matches(result, prompt) -> bool:
    return result is not None and result.prompt == prompt_text(prompt["instruction"], prompt["input"])


def test_every_shipped_prompt_is_caught_copied_mangled_or_behind_a_lead_in(shipped):
    prompts, checker = shipped
    assert len(checker) == sum(len(s.prompts()) for s in EVAL_SETS.values()) == 332
    for prompt in prompts:
        instruction, input_text = prompt["instruction"], prompt["input"]
        assert matches(checker.check(instruction, input_text), prompt), prompt["id"]
        assert matches(checker.check(mangled(instruction), mangled(input_text)), prompt), prompt["id"]
        for lead in LEAD_INS:
            found = checker.check(f"{lead} {instruction}", input_text)
            assert found is not None and found.method == "ngram", (prompt["id"], lead)


def test_the_match_names_the_prompt_and_how(shipped):
    _, checker = shipped
    vicuna = EVAL_SETS["vicuna_80"].prompts()[0]
    found = checker.check("Please help. " + vicuna["instruction"].upper())
    assert found.set == "vicuna_80" and found.prompt_id == vicuna["id"] and found.method == "ngram"
    assert found.to_json()["matched_prompt"] == vicuna["instruction"]
    assert found.shared_words in " ".join(normalized_words(vicuna["instruction"]))


def test_a_reworded_copy_is_caught_by_rouge_l():
    checker = Decontaminator([{"id": "p1", "set": "mine", "instruction": "Give three tips for staying healthy "
                               "during a long winter in a cold city.", "input": ""}])
    found = checker.check("Give three good tips for staying healthy during a long winter in a cold town.")
    assert found.method == "rouge_l" and found.rouge_l > 0.7 and found.prompt_id == "p1"
    assert checker.check("Give three tips for planting tomatoes.") is None


def test_short_prompts_match_whole_only_above_min_words():
    prompts = [{"id": "short", "set": "s", "instruction": "Write a poem.", "input": ""},
               {"id": "six", "set": "s", "instruction": "Suggest a recipe for vegan dessert.", "input": ""}]
    checker = Decontaminator(prompts, min_words=6)
    assert checker.check("Write a poem about the sea and the moon at night.") is None
    assert checker.check("For my party: suggest a recipe for vegan dessert, please!").prompt_id == "six"
    assert checker.check("Write a poem.").method == "rouge_l"  # an exact copy still is one


@pytest.mark.skipif(not (SHARED_DATA / "alpaca_5000.json").is_file(), reason="../shared/data/alpaca_5000.json absent")
def test_real_alpaca_records_are_kept(shipped):
    _, checker = shipped
    records = json.loads((SHARED_DATA / "alpaca_5000.json").read_text(encoding="utf-8"))[:2000]
    dropped = [r for r in records if checker.check(r["instruction"], r.get("input", ""))]
    assert len(records) - len(dropped) >= 0.98 * len(records)
