"""A few evaluation-style prompts the compress tests answer (id, instruction, input)."""

PROMPTS = [
    {"id": "p1", "instruction": "Name the capital of France.", "input": ""},
    {"id": "p2", "instruction": "Give a synonym for the word.", "input": "happy"},
    {"id": "p3", "instruction": "Explain why the sky is blue in one sentence.", "input": ""},
]
