"""bitsandbytes 8-bit (LLM.int8) and 4-bit (NF4) loading of a merged student, on CUDA.

bitsandbytes quantizes the weights as they are loaded onto the GPU; nothing new is
written to disk, so a bnb variant is the merged model directory plus the settings below.
It needs a CUDA GPU and the bitsandbytes package: :func:`check_bnb_available` says
plainly what is missing before anything is loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BITS = (8, 4)


class BnbUnavailableError(RuntimeError):
    """bitsandbytes quantization cannot run on this machine."""


def check_bnb_available() -> None:
    """Raise :class:`BnbUnavailableError` naming what is missing (a CUDA GPU, the package)."""
    import torch

    if not torch.cuda.is_available():
        raise BnbUnavailableError("bitsandbytes variants (bnb_8bit, bnb_4bit) need a CUDA GPU; none is visible "
                                  "(torch.cuda.is_available() is False); use gguf_* or torch_int8 on a CPU machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BnbUnavailableError("bitsandbytes variants need the bitsandbytes package: pip install bitsandbytes")


def bnb_settings(bits: int) -> dict:
    """The BitsAndBytesConfig arguments used for ``bits`` (8: LLM.int8; 4: NF4, double
    quantization, bfloat16 compute), as recorded in variants.json."""
    if bits == 8:
        return {"load_in_8bit": True}
    if bits == 4:
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "bfloat16"}
    raise ValueError(f"bitsandbytes quantization takes bits 8 or 4, got {bits}")


def parameter_count(model) -> int:
    """Parameters of a (possibly bitsandbytes-quantized) model, counted unpacked: a 4-bit
    weight stores two values per byte, and its tensor shows half as many elements."""
    total = 0
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        total += state.shape.numel() if state is not None and hasattr(state, "shape") else parameter.numel()
    return total


def load_bnb(merged_dir: Path, bits: int):
    """``(model, tokenizer)``: the merged model loaded on the GPU with ``bits``-bit bitsandbytes weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    check_bnb_available()
    settings = bnb_settings(bits)
    if "bnb_4bit_compute_dtype" in settings:
        settings["bnb_4bit_compute_dtype"] = getattr(torch, settings["bnb_4bit_compute_dtype"])
    # The layers bitsandbytes leaves alone (embeddings, norms) in the dtype its kernels compute
    # in: float16 for LLM.int8 (float32 inputs would be cast on every call), bfloat16 for NF4.
    dtype = torch.float16 if bits == 8 else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(
        merged_dir, quantization_config=BitsAndBytesConfig(**settings), device_map={"": 0}, dtype=dtype,
        use_safetensors=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(merged_dir)
