"""Stanford Alpaca's heuristic filters for generated instructions.

Each filter returns the reason a task is dropped, or None to keep it. The word list and the
rules follow Alpaca's published procedure: a text-only model cannot act on images, files,
sound or places, and very short or very long instructions are rarely good tasks.
"""

from __future__ import annotations

import re
import string

# Words that point at things a text-only model cannot see, make or do.
BLOCKED_WORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)
_BLOCKED = [(word, re.compile(r"\b" + re.escape(word) + r"\b", re.IGNORECASE)) for word in BLOCKED_WORDS]
# One pass for the common case of no blocked word at all; the reason names the first word of
# the list that occurs, as a pass per word would.
_ANY_BLOCKED = re.compile(r"\b(?:" + "|".join(re.escape(word) for word in BLOCKED_WORDS) + r")\b", re.IGNORECASE)


def heuristic_rejection(instruction: str, output: str, empty_output: bool = True) -> str | None:
    """Why Alpaca's filters drop this task, or None if it passes. `empty_output` adds this
    project's own check that the output is not empty (Alpaca has none; the replication preset,
    `generate.parse: alpaca`, turns it off)."""
    words = instruction.split()
    if len(words) <= 3:
        return "too_short"
    if len(words) > 150:
        return "too_long"
    if _ANY_BLOCKED.search(instruction):
        for word, pattern in _BLOCKED:
            if pattern.search(instruction):
                return f"blocked_word:{word}"
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "starts_with_punctuation"
    if not instruction[0].isascii():
        return "starts_with_non_ascii"
    if empty_output and not output.strip():
        return "empty_output"
    return None
