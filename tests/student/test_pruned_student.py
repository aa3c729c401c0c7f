"""The smaller embedded student: SmolLM2-135M-Instruct cut down to some of its decoder layers,
built from the real embedded model."""

import json

import pytest

from finetune.config import FinetuneConfig
from student.embedded import (
    EMBEDDED_STUDENTS,
    MARKER_FILE,
    PRUNED_PREFIX,
    SMOLLM2_DROP_ORDER,
    EmbeddedStudentError,
    embedded_student,
    ensure_embedded_student,
    ensure_plain_student,
    is_embedded_student,
)
from student.layers import LayerChoiceError, check_keep, keep_layers, layer_subset, parameter_count

DEMO_STUDENT = "smollm2-135m-pruned-18"


def test_drop_order_names_distinct_layers():
    assert len(set(SMOLLM2_DROP_ORDER)) == len(SMOLLM2_DROP_ORDER) and all(0 <= i < 30 for i in SMOLLM2_DROP_ORDER)


def test_demo_student_is_registered_and_keeps_18_layers():
    student = EMBEDDED_STUDENTS[DEMO_STUDENT]
    assert len(student.keep) == 18 and set(student.keep).isdisjoint(SMOLLM2_DROP_ORDER[:12])
    assert embedded_student("smollm2-135m-pruned-15").keep == tuple(sorted(set(range(30)) - set(SMOLLM2_DROP_ORDER)))


@pytest.mark.parametrize("name", [f"{PRUNED_PREFIX}30", f"{PRUNED_PREFIX}3", f"{PRUNED_PREFIX}x", f"{PRUNED_PREFIX}"])
def test_a_bad_layer_count_is_refused_with_the_range(name):
    assert is_embedded_student(name)
    with pytest.raises(EmbeddedStudentError, match="15 to 29"):
        embedded_student(name)
    with pytest.raises(ValueError, match=r"base_model[\s\S]*15 to 29"):
        FinetuneConfig(base_model=name)


def test_bad_layer_choices_are_refused():
    with pytest.raises(LayerChoiceError, match="at least one"):
        check_keep([], 30)
    with pytest.raises(LayerChoiceError, match=r"\[30\] do not exist"):
        check_keep([0, 30], 30)
    with pytest.raises(LayerChoiceError, match="twice"):
        check_keep([1, 1], 30)


def test_pruned_student_is_built_from_the_embedded_model(student_cache_dir):
    """Real weights: the 18-layer student holds at most 70% of the teacher's parameters, its kept
    layers are the teacher's own, and it answers with the same logits as the teacher's weights
    cut in memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full_dir = ensure_plain_student(student_cache_dir)
    pruned_dir = ensure_embedded_student(DEMO_STUDENT, student_cache_dir)
    assert json.loads((pruned_dir / MARKER_FILE).read_text())["kept_layers"] == list(EMBEDDED_STUDENTS[DEMO_STUDENT].keep)
    full = AutoModelForCausalLM.from_pretrained(full_dir)
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir)
    assert pruned.config.num_hidden_layers == 18
    assert parameter_count(pruned) <= 0.7 * parameter_count(full)
    keep = EMBEDDED_STUDENTS[DEMO_STUDENT].keep
    assert torch.equal(pruned.model.layers[1].mlp.up_proj.weight, full.model.layers[keep[1]].mlp.up_proj.weight)

    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    ids = tokenizer("Name three colours.", return_tensors="pt")["input_ids"]
    with torch.no_grad(), layer_subset(full, keep):
        cut_in_memory = full(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, cut_in_memory, atol=1e-4)
        # generation runs through the key/value cache, whose layers are renumbered
        out = pruned.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert full.config.num_hidden_layers == 30 and len(full.model.layers) == 30  # layer_subset restored it
    assert ensure_embedded_student(DEMO_STUDENT, student_cache_dir) == pruned_dir  # built once


def test_keep_layers_renumbers_the_cache_layers(student_cache_dir):
    from transformers import AutoModelForCausalLM

    model = keep_layers(AutoModelForCausalLM.from_pretrained(ensure_plain_student(student_cache_dir)), [0, 5, 29])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert model.config.num_hidden_layers == 3
