import pytest

from selfinstruct.alpaca_filters import heuristic_rejection

GOOD_OUTPUT = "A fitting answer."


@pytest.mark.parametrize(
    "instruction, reason",
    [
        ("Name three fruits.", "too_short"),  # 3 words
        ("Name three red fruits.", None),  # 4 words
        (" ".join(["word"] * 151), "too_long"),
        (" ".join(["word"] * 150), None),
        ("Describe the image of a cat on a mat.", "blocked_word:image"),
        ("Plot the sales figures for each month.", "blocked_word:plot"),
        ("Tell me how to go to the station from here.", "blocked_word:go to"),
        ("Summarize this MUSIC review in one line.", "blocked_word:music"),
        ("Draw a picture of the sunset for me.", "blocked_word:picture"),
        ("Explain what a profile is in two sentences.", None),  # 'file' only as part of a word
        ("Write a program that sorts a list of numbers.", "write_a_program"),
        ("Write a poem that sorts feelings into kinds.", None),
        ('"Quote" this sentence back to me please.', "starts_with_punctuation"),
        ("Éxplique the meaning of this French phrase.", "starts_with_non_ascii"),
    ],
)
def test_alpaca_filters(instruction, reason):
    assert heuristic_rejection(instruction, GOOD_OUTPUT) == reason


def test_empty_output_is_dropped():
    assert heuristic_rejection("Give an example of a mammal.", "   ") == "empty_output"


def test_one_pass_over_blocked_words_decides_as_a_pass_per_word():
    """The single-regex shortcut finds a blocked word exactly when one of the per-word patterns
    does: on Alpaca's real instructions, and on copies with blocked words mixed in."""
    import json
    import random
    from pathlib import Path

    from selfinstruct.alpaca_filters import _ANY_BLOCKED, _BLOCKED, BLOCKED_WORDS

    alpaca = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_5000.json"
    records = json.loads(alpaca.read_text(encoding="utf-8"))[:2000]
    rng = random.Random(0)
    checked = hits = 0
    for record in records:
        text = record["instruction"]
        word = rng.choice(BLOCKED_WORDS)
        for variant in (text, f"{text} {word}", f"{word.upper()}s {text}", text.replace("a", "map", 1),
                        f"{text}{word}", f"un{word} {text}"):
            per_word = any(pattern.search(variant) for _, pattern in _BLOCKED)
            assert bool(_ANY_BLOCKED.search(variant)) == per_word, variant
            checked += 1
            hits += per_word
    assert checked == 12_000 and 0 < hits < checked
