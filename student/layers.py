"""A smaller student made from the teacher's own weights: some of its decoder layers kept, the
rest dropped (DistilBERT kept every other layer of BERT; later work drops the layers whose
removal changes the output least). The kept layers are trained on the teacher's data afterwards.

* :func:`keep_layers`: cut a causal LM down to the given layers, in place (the embeddings, the
  final norm and the output head stay).
* :func:`layer_subset`: the same, only while a ``with`` block runs (for trying many choices on
  one loaded model).
* :func:`removal_order`: the layers ranked by how little removing each one alone raises a score
  (the NLL of the teacher's answers): one trial per layer. :func:`greedy_drop_order` re-ranks
  after every removal (a trial per remaining layer per step: about 15 times the work for 15
  layers, too slow on a 2-core CPU for the bench's default). ``bench/bench_student_layers.py``
  measures the choices.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence


class LayerChoiceError(ValueError):
    """A set of layers to keep that the model cannot be cut down to."""


def decoder_layers(model: Any):
    """The ``nn.ModuleList`` of decoder layers of a causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise LayerChoiceError(f"{type(model).__name__} has no model.layers list of decoder layers to cut")
    return layers


def check_keep(keep: Sequence[int], layer_count: int) -> tuple[int, ...]:
    """``keep`` sorted, after checking that it names distinct existing layers and at least one."""
    keep = tuple(keep)
    if not keep:
        raise LayerChoiceError("keep at least one decoder layer")
    bad = [index for index in keep if not isinstance(index, int) or not 0 <= index < layer_count]
    if bad:
        raise LayerChoiceError(f"layers {bad} do not exist: the model has layers 0 to {layer_count - 1}")
    if len(set(keep)) != len(keep):
        raise LayerChoiceError(f"layers to keep are named twice: {sorted(keep)}")
    return tuple(sorted(keep))


def _apply(model: Any, layers: list) -> None:
    """Make ``layers`` the model's decoder layers, numbered 0.. for the key/value cache."""
    import torch

    model.model.layers = torch.nn.ModuleList(layers)
    for index, layer in enumerate(layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = index
    model.config.num_hidden_layers = len(layers)


def keep_layers(model: Any, keep: Sequence[int]) -> Any:
    """Cut ``model`` down to the decoder layers ``keep`` (indices into its current layers), in
    place, and return it. Per-layer config lists (``layer_types``) are cut alike."""
    layers = list(decoder_layers(model))
    keep = check_keep(keep, len(layers))
    layer_types = getattr(model.config, "layer_types", None)
    _apply(model, [layers[index] for index in keep])
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        model.config.layer_types = [layer_types[index] for index in keep]
    return model


@contextlib.contextmanager
def layer_subset(model: Any, keep: Sequence[int]):
    """Run the ``with`` block on ``model`` cut down to the layers ``keep``; restored afterwards."""
    layers = list(decoder_layers(model))
    keep = check_keep(keep, len(layers))
    count = model.config.num_hidden_layers
    try:
        _apply(model, [layers[index] for index in keep])
        yield model
    finally:
        _apply(model, layers)
        model.config.num_hidden_layers = count


def removal_order(model: Any, score: Callable[[Any], float],
                  progress: Callable[[int, float], None] | None = None) -> list[int]:
    """Every layer, ranked by ``score(model)`` with that layer alone removed, lowest first (the
    layer whose removal changes the output least comes first); ties by index."""
    count = len(decoder_layers(model))
    trials = {}
    for candidate in range(count):
        with layer_subset(model, [index for index in range(count) if index != candidate]):
            trials[candidate] = score(model)
        if progress:
            progress(candidate, trials[candidate])
    return sorted(trials, key=lambda index: (trials[index], index))


def greedy_drop_order(model: Any, score: Callable[[Any], float], drop: int,
                      progress: Callable[[int, float], None] | None = None) -> list[int]:
    """Which ``drop`` layers to remove, in order: each step removes the layer (of those left)
    whose removal gives the lowest ``score(model)`` (say, the NLL of the teacher's answers).
    ``progress(layer, score)`` is told each choice."""
    count = len(decoder_layers(model))
    if not 0 <= drop < count:
        raise LayerChoiceError(f"can drop 0 to {count - 1} of {count} layers, not {drop}")
    left = list(range(count))
    order: list[int] = []
    for _ in range(drop):
        trials = {}
        for candidate in left:
            with layer_subset(model, [index for index in left if index != candidate]):
                trials[candidate] = score(model)
        chosen = min(trials, key=lambda index: (trials[index], index))
        left.remove(chosen)
        order.append(chosen)
        if progress:
            progress(chosen, trials[chosen])
    return order


def parameter_count(model: Any) -> int:
    """Distinct parameters of ``model`` (tied weights counted once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total
