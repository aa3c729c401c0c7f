"""Magnitude pruning patterns, on plain tensors and on the merged student."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from compress.prune import prune_linear_layers, prune_weight  # noqa: E402


def test_unstructured_zeroes_the_smallest_half_of_each_row():
    weight = torch.tensor([[0.1, -4.0, 0.3, 2.0], [5.0, -0.2, 0.05, -1.0]])
    assert prune_weight(weight, "unstructured", 0.5).tolist() == [[0.0, -4.0, 0.0, 2.0], [5.0, 0.0, 0.0, -1.0]]


def test_two_of_four_keeps_the_two_largest_of_every_group():
    weight = torch.tensor([[1.0, -3.0, 2.0, 0.5, -0.1, 0.2, 0.3, -0.4]])
    expected = torch.tensor([[0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.3, -0.4]])
    assert torch.equal(prune_weight(weight, "2:4"), expected)
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_weight(torch.ones(2, 6), "2:4")


def test_pruning_the_student_zeroes_half_of_its_block_weights_only(merged_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    embeddings = model.get_input_embeddings().weight.clone()
    block_weights = sum(m.weight.numel() for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".layers." in n)
    zeroed = prune_linear_layers(model, "unstructured", 0.5)
    assert abs(zeroed - block_weights / 2) < block_weights * 0.01
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
