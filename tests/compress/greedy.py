"""Greedy decoding with llama.cpp from given prompt ids, token by token, for comparing with transformers."""

from __future__ import annotations

import numpy as np


def llama_greedy(llm, prompt_ids: list[int], count: int) -> list[int]:
    """The ``count`` tokens llama.cpp's ``llm`` (a ``llama_cpp.Llama`` with ``logits_all``) picks greedily
    after ``prompt_ids``, never stopping early."""
    llm.reset()
    llm.eval(prompt_ids)
    generated: list[int] = []
    for _ in range(count):
        generated.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(generated[-1:])
    return generated
