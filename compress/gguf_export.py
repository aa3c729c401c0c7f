"""Export a merged Hugging Face model to GGUF with llama.cpp's own converter, and quantize it
with llama.cpp's quantizer.

Two steps, as llama.cpp itself does it:

1. :func:`export_gguf` runs ``convert_hf_to_gguf.py`` (``compress.llama_converter``: the
   converter of the same llama.cpp that serves the files) on the model directory, writing F16
   (or F32/BF16): every architecture and tokenizer llama.cpp knows (Llama 2 and 3, Mistral,
   Qwen2, Gemma 3, SmolLM, ...), with the tokenizer, its pre-tokenizer, special tokens and chat
   template as llama.cpp expects them. A few models it converts without complaint but runs
   differently from transformers; those are refused first (:func:`check_convertible`).
2. :func:`quantize_gguf` hands that file to llama.cpp's own quantizer (``llama_model_quantize``
   through llama-cpp-python's C binding): Q8_0, Q4_K_M, Q4_0.

:func:`write_gguf` does both for one output file (``distill export-gguf``). Every file is
written under a temporary name in its final directory and renamed when done, so a failure
never leaves a half-written file, nor removes an older one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from compress.llama_converter import GGUFExportError, run_converter

log = logging.getLogger(__name__)

__all__ = ["GGUFExportError", "OUT_TYPES", "QUANT_TYPES", "GGUF_TYPES", "check_convertible", "export_gguf",
           "quantize_gguf", "write_gguf"]

# llama.cpp's file types (enum llama_ftype) for the quantizations offered here.
QUANT_TYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
OUT_TYPES = ("f16", "f32", "bf16")  # written by the converter itself
GGUF_TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")  # what `distill export-gguf --type` offers
# llama.cpp's Gemma 3 runs every 6th layer with full attention, the rest with a sliding window.
GEMMA3_SWA_PATTERN = 6


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise GGUFExportError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise GGUFExportError(f"{path}: not valid JSON ({exc})") from None


def _gemma3_problems(config: dict) -> list[str]:
    """What in a Gemma 3 config llama.cpp would run differently from transformers (the converter
    writes such a model without complaint)."""
    problems = []
    heads, layers = config.get("num_attention_heads", 8), config.get("num_hidden_layers", 0)
    head_dim = config.get("head_dim", 256)
    # llama.cpp scales queries by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 62-layer 27B.
    scale_dim = config.get("hidden_size", 0) // heads if layers == 62 else head_dim
    if config.get("query_pre_attn_scalar", scale_dim) != scale_dim:
        problems.append(f"query_pre_attn_scalar {config.get('query_pre_attn_scalar')} differs from {scale_dim}, "
                        "the query scale llama.cpp uses")
    if config.get("attn_logit_softcapping") is not None:
        problems.append("attn_logit_softcapping is set (llama.cpp's Gemma 3 has none)")
    layer_types = config.get("layer_types")
    if layer_types and config.get("sliding_window"):
        expected = ["full_attention" if (i + 1) % GEMMA3_SWA_PATTERN == 0 else "sliding_attention"
                    for i in range(layers)]
        if list(layer_types) != expected:
            problems.append(f"layer_types do not follow llama.cpp's pattern (every {GEMMA3_SWA_PATTERN}th layer "
                            "full attention, the others sliding)")
    return problems


def check_convertible(model_dir: Path) -> dict:
    """The model's ``config.json``, once it is known that llama.cpp would run the converted model
    as transformers does; else a :class:`GGUFExportError` naming the setting."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GGUFExportError(f"model directory not found: {model_dir}")
    config = _read_config(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise GGUFExportError(f"{model_dir}: no .safetensors weights (save the model with safetensors)")
    if config.get("model_type") == "gemma3_text":
        problems = _gemma3_problems(config)
        if problems:
            raise GGUFExportError(f"{model_dir}/config.json: llama.cpp would run this gemma3_text model differently "
                                  f"from transformers: {'; '.join(problems)}")
    return config


def export_gguf(model_dir: Path, out_path: Path, out_type: str = "f16") -> Path:
    """Write the model in ``model_dir`` (safetensors, with its tokenizer) as a GGUF file at
    ``out_path`` with llama.cpp's converter (``out_type`` f16, f32 or bf16); return ``out_path``."""
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type must be one of {OUT_TYPES}, got {out_type!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    check_convertible(model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out_path)
    run_converter(model_dir, partial, out_type, model_name=model_dir.name)
    os.replace(partial, out_path)
    log.info("wrote %s (%s, %.1f MB)", out_path, out_type, out_path.stat().st_size / 1e6)
    return out_path


def quantize_gguf(source: Path, out_path: Path, method: str, threads: int = 1) -> Path:
    """Quantize the F16/F32 GGUF ``source`` with llama.cpp's quantizer (``method``: one of
    :data:`QUANT_TYPES`) into ``out_path``; return ``out_path``."""
    import llama_cpp

    if method not in QUANT_TYPES:
        raise GGUFExportError(f"GGUF quantization must be one of {sorted(QUANT_TYPES)}, got {method!r}")
    source, out_path = Path(source), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out_path)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[method]
    params.nthread = threads
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        if status != 0 or not partial.is_file():
            raise GGUFExportError(f"llama.cpp could not quantize {source} to {method} (status {status})")
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("quantized %s to %s: %s (%.1f MB)", source.name, method, out_path, out_path.stat().st_size / 1e6)
    return out_path


def write_gguf(model_dir: Path, out_path: Path, gguf_type: str = "f16", threads: int = 1) -> Path:
    """One GGUF file of ``model_dir`` at ``out_path`` in ``gguf_type`` (one of :data:`GGUF_TYPES`):
    converted, then quantized when asked (the F16 step is a temporary file beside ``out_path``)."""
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    out_path = Path(out_path)
    if gguf_type in OUT_TYPES:
        return export_gguf(model_dir, out_path, gguf_type)
    f16 = out_path.with_name(f".{out_path.name}.f16")
    try:
        export_gguf(model_dir, f16, "f16")
        return quantize_gguf(f16, out_path, gguf_type, threads=threads)
    finally:
        f16.unlink(missing_ok=True)
