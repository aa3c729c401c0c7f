"""FP8 base layers (`finetune.base_precision: fp8`): the arithmetic, checked on the CPU through the
module's dequantizing path (the FP8 tensor-core path needs a Hopper GPU: it is measured by
bench/bench_finetune_gpu.py there), and the refusal on any other machine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetune.config import FinetuneConfig  # noqa: E402
from finetune.fp8 import FrozenFp8Linear, convert_lora_bases_to_fp8, quantize_rows  # noqa: E402


def test_rows_quantize_within_e4m3_precision():
    torch.manual_seed(0)
    tensor = torch.randn(64, 256) * torch.logspace(-3, 2, 64).unsqueeze(1)  # rows of very different scales
    quantized, scale = quantize_rows(tensor)
    assert quantized.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    back = quantized.float() * scale
    # e4m3 keeps 3 mantissa bits: about 6% relative error per element, against each row's largest value.
    error = ((back - tensor).abs() / tensor.abs().amax(dim=1, keepdim=True)).max()
    assert error < 0.07


def test_frozen_fp8_linear_matches_the_linear_layer_and_gives_no_weight_gradient():
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64, bias=False).requires_grad_(False)
    fp8 = FrozenFp8Linear(linear)
    assert not list(fp8.parameters()) and fp8.w.dtype == torch.float8_e4m3fn
    x = torch.randn(4, 10, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = fp8(x), linear(x_ref)
    assert out.shape == ref.shape
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    assert torch.nn.functional.cosine_similarity(x.grad.flatten(), x_ref.grad.flatten(), dim=0) > 0.99


def test_lora_adapters_train_through_fp8_bases_as_through_the_originals():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    reference = get_peft_model(AutoModelForCausalLM.from_config(config), lora)
    quantized = get_peft_model(AutoModelForCausalLM.from_config(config), lora)
    quantized.load_state_dict(reference.state_dict())
    swapped = convert_lora_bases_to_fp8(quantized)
    assert swapped == 2 * 7  # q, k, v, o, gate, up, down in each layer; the LM head is not LoRA-wrapped
    tokens = torch.randint(0, 256, (2, 24))
    grads = []
    for model in (reference, quantized):
        model(input_ids=tokens, labels=tokens).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad]))
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.98
    assert all(not p.requires_grad for n, p in quantized.named_parameters() if "lora_" not in n)


def test_fp8_settings_are_validated_and_refused_without_a_hopper_gpu(tmp_path):
    from finetune.train import TrainingSetupError, check_hardware

    with pytest.raises(ValueError, match="base_precision fp8 is for method lora with model_dtype bfloat16"):
        FinetuneConfig(base_precision="fp8")
    with pytest.raises(ValueError, match="base_precision fp8 is for method lora"):
        FinetuneConfig(base_precision="fp8", model_dtype="bfloat16", method="full")
    settings = FinetuneConfig(base_precision="fp8", model_dtype="bfloat16")
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9:
        pytest.skip("this machine has a Hopper GPU: fp8 is allowed here")
    with pytest.raises(TrainingSetupError, match="needs a Hopper GPU"):
        check_hardware(settings)
