"""Magnitude pruning of a merged student's linear layers, for measuring what it buys.

Two patterns: unstructured (the smallest-magnitude ``sparsity`` share of each weight
matrix set to zero) and 2:4 (in every group of four consecutive inputs of a row, the two
smallest zeroed: the pattern NVIDIA's sparse tensor cores run at up to twice the speed).
Neither is a variant the compress stage offers: zeros are still stored and multiplied by
llama.cpp's and PyTorch's dense CPU kernels, so neither size nor speed improves, while
quality drops (``bench/bench_compress.py --pruning`` measures all three; the figures are
in docs/benchmarks.md).
"""

from __future__ import annotations

PATTERNS = ("unstructured", "2:4")


def prune_weight(weight, pattern: str = "unstructured", sparsity: float = 0.5):
    """A copy of the 2-D ``weight`` with its smallest-magnitude entries zeroed: ``sparsity``
    of each row (unstructured), or two of every four consecutive entries of a row (2:4)."""

    if pattern == "2:4":
        rows, cols = weight.shape
        if cols % 4:
            raise ValueError(f"2:4 pruning needs a column count divisible by 4, got {cols}")
        groups = weight.reshape(rows, cols // 4, 4)
        smallest = groups.abs().topk(2, dim=-1, largest=False).indices
        return groups.scatter(-1, smallest, 0.0).reshape(rows, cols)
    if pattern != "unstructured":
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    drop = int(weight.shape[1] * sparsity)
    if drop == 0:
        return weight.clone()
    smallest = weight.abs().topk(drop, dim=1, largest=False).indices
    return weight.scatter(1, smallest, 0.0)


def prune_linear_layers(model, pattern: str = "unstructured", sparsity: float = 0.5) -> int:
    """Prune every linear layer of the decoder blocks of ``model`` in place (embeddings and
    the output head are kept); return how many weights were zeroed."""
    import torch

    zeroed = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
                before = int((module.weight == 0).sum())
                module.weight.copy_(prune_weight(module.weight, pattern, sparsity))
                zeroed += int((module.weight == 0).sum()) - before
    return zeroed
