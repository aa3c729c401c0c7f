"""PyTorch dynamic int8 quantization of a merged student, for CPU inference.

Every ``nn.Linear`` but the MLP down projections gets int8 weights (one scale per output
channel) and quantizes its input activations to 8 bits on the fly, per tensor
(``torch.ao.quantization.quantize_dynamic``); embeddings, norms and the down projections
stay float32. The down projections are kept because their inputs (the gated MLP
activations) carry outliers that one 8-bit activation scale cannot hold: on SmolLM2-135M,
quantizing them too dropped the agreement of the next-token argmax with the float model
from 81% to 50% on a probe text. The quantized weights are saved as plain int8 tensors with their scales in
a safetensors file (no pickle), next to the model's config and tokenizer;
:func:`load_torch_int8` rebuilds exactly the same quantized model from them.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

from finetune.merge import atomic_directory

log = logging.getLogger(__name__)

WEIGHTS_FILE = "int8_weights.safetensors"
INFO_FILE = "torch_int8.json"
# Everything but the weights is copied from the merged model directory.
COPIED_SUFFIXES = (".json", ".jinja", ".txt", ".model")
# Linear layers left in float32 (see the module docstring).
KEPT_FLOAT = ("mlp.down_proj",)


def _quiet_deprecations():
    """torch 2.13 warns that its eager quantization API moves to torchao; it still works, and
    the warning would repeat for every layer."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
    warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated", category=UserWarning)
    return context


def quantize_model(model):
    """``model`` with its nn.Linear layers (but :data:`KEPT_FLOAT`) replaced by dynamically
    quantized int8 Linear layers with per-channel weight scales (in place)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    chosen = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith(KEPT_FLOAT)}
    context = _quiet_deprecations()
    try:
        return quantize_dynamic(model, chosen, dtype=torch.qint8, inplace=True)
    finally:
        context.__exit__(None, None, None)


def int8_linears(model) -> dict:
    """The dynamically quantized Linear layers of ``model``, by name."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: module for name, module in model.named_modules() if isinstance(module, DynamicLinear)}


def save_torch_int8(merged_dir: Path, out_dir: Path) -> Path:
    """Quantize the merged model in ``merged_dir`` to dynamic int8 and save it to ``out_dir``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, use_safetensors=True)
    model.eval()
    quantize_model(model)
    linears = int8_linears(model)
    tensors = {}
    for name, module in linears.items():
        weight, bias = module._packed_params._weight_bias()
        tensors[f"{name}.int8_weight"] = weight.int_repr().contiguous()
        tensors[f"{name}.scales"] = weight.q_per_channel_scales().contiguous()
        tensors[f"{name}.zero_points"] = weight.q_per_channel_zero_points().contiguous()
        tensors[f"{name}.axis"] = torch.tensor([weight.q_per_channel_axis()], dtype=torch.int64)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] in linears or "_packed_params" in key:  # saved above
            continue
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            tensors[key] = value.detach().contiguous()

    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        for source in merged_dir.iterdir():
            if source.is_file() and source.suffix in COPIED_SUFFIXES:
                shutil.copy2(source, tmp / source.name)
        (tmp / INFO_FILE).write_text(json.dumps({
            "method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8",
            "quantized_modules": "torch.nn.Linear", "weight_scheme": "per-channel",
            "activations": "8-bit, per tensor, computed at run time", "int8_linears": len(linears),
            "kept_float32": ["embeddings", "norms", *KEPT_FLOAT],
            "source": str(merged_dir),
        }, indent=2) + "\n", encoding="utf-8")
    log.info("saved the dynamic int8 model (%d int8 linears) to %s", len(linears), out_dir)
    return out_dir


def load_torch_int8(variant_dir: Path):
    """``(model, tokenizer)``: the dynamic int8 model saved by :func:`save_torch_int8`."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    variant_dir = Path(variant_dir)
    if not (variant_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{variant_dir}: no {WEIGHTS_FILE}; not a torch_int8 variant")
    config = AutoConfig.from_pretrained(variant_dir)
    with no_init_weights():  # every weight is overwritten from the file below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    quantize_model(model)
    saved = load_file(str(variant_dir / WEIGHTS_FILE))
    context = _quiet_deprecations()
    try:
        for name, module in int8_linears(model).items():
            qweight = torch._make_per_channel_quantized_tensor(
                saved.pop(f"{name}.int8_weight"), saved.pop(f"{name}.scales"),
                saved.pop(f"{name}.zero_points"), int(saved.pop(f"{name}.axis").item()))
            module.set_weight_bias(qweight, saved.pop(f"{name}.bias", None))
    finally:
        context.__exit__(None, None, None)
    # The float weights (embeddings, norms); quantized modules refuse a plain load_state_dict.
    parameters = dict(model.named_parameters())
    missing = sorted(set(parameters) - set(saved))
    unexpected = sorted(set(saved) - set(parameters))
    if missing or unexpected:
        raise RuntimeError(f"{variant_dir}: weights do not match the model: missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")
    with torch.no_grad():
        for key, value in saved.items():
            parameters[key].copy_(value)
    tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    return model, tokenizer
