"""Export a merged Hugging Face Llama-architecture model to GGUF, and quantize it with llama.cpp.

Two steps, as llama.cpp itself does it:

1. :func:`export_gguf` writes the weights as F16 (or F32) with the ``gguf`` package: the
   hyperparameters llama.cpp's ``llama`` architecture reads, every tensor under its GGUF
   name, and the tokenizer. The tokenizer metadata (vocabulary, merges, special tokens,
   chat template) is either copied from an existing GGUF of the same model (the embedded
   SmolLM2 student came from one, so its original metadata is the exact match), or built
   from the model's ``tokenizer.json`` for a byte-level BPE (GPT-2 style) tokenizer.
2. :func:`quantize_gguf` hands that file to llama.cpp's own quantizer
   (``llama_model_quantize`` through llama-cpp-python's C binding): Q8_0, Q4_K_M, Q4_0.

One detail matters for correctness: llama.cpp's attention expects the rows of the query
and key projections in an interleaved rotary order, while Hugging Face stores them in
"rotate-half" order (and transformers undoes the interleaving when it loads a GGUF). The
writer therefore re-orders q_proj and k_proj rows per head (:func:`interleave_rotary_rows`).

Every file is written under a temporary name in its final directory and renamed when done.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# llama.cpp's file types (enum llama_ftype) for the quantizations offered here.
QUANT_TYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
OUT_TYPES = ("f16", "f32")
TOKENIZER_PREFIX = "tokenizer."


class GGUFExportError(ValueError):
    """The model or its tokenizer cannot be written as GGUF by this exporter."""


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def read_llama_hparams(model_dir: Path) -> dict:
    """The hyperparameters of a Llama-architecture ``config.json``; refuses other architectures
    and RoPE scalings llama.cpp would need extra keys for."""
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise GGUFExportError(f"{config_path}: model_type {config.get('model_type')!r} is not supported; "
                              "the GGUF exporter writes Llama-architecture models ('llama') only")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise GGUFExportError(f"{config_path}: rope type {rope_type!r} is not supported (only 'default')")
    heads = config["num_attention_heads"]
    return {
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "ffn": config["intermediate_size"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "context": config.get("max_position_embeddings", 2048),
        "rms_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        "vocab": config["vocab_size"],
        "tied": bool(config.get("tie_word_embeddings", False)),
        "name": config.get("_name_or_path") or config.get("_model_name_or_path") or Path(model_dir).name,
    }


def interleave_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection reordered from rotate-half to interleaved pairs, per head:
    within each head, rows (i, i + d/2) become neighbours (2i, 2i + 1)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the model's safetensors files, as float32 numpy arrays."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{model_dir}: no .safetensors weights (save the model with safetensors)")
    weights = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                weights[key] = handle.get_tensor(key).float().numpy()
    return weights


def _gguf_tensors(weights: dict[str, np.ndarray], hp: dict, out_type: str):
    """``(gguf name, array)`` for every tensor, in the dtype llama.cpp expects for it."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["layers"])
    for hf_name, array in weights.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope_theta
        if hf_name == "lm_head.weight" and hp["tied"]:
            continue  # tied to the token embeddings: llama.cpp reuses token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))  # keeps the suffix
        if name is None:
            raise GGUFExportError(f"tensor {hf_name!r} has no GGUF name in the llama architecture")
        if hf_name.endswith("self_attn.q_proj.weight"):
            array = interleave_rotary_rows(array, hp["heads"])
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = interleave_rotary_rows(array, hp["kv_heads"])
        # Norms and other 1-D tensors stay F32, as llama.cpp keeps them.
        dtype = np.float16 if out_type == "f16" and array.ndim > 1 else np.float32
        yield name, np.ascontiguousarray(array.astype(dtype))


def _copy_tokenizer_metadata(writer, source_gguf: Path, vocab_size: int) -> None:
    """Every ``tokenizer.*`` key of ``source_gguf``, copied unchanged."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source_gguf))
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith(TOKENIZER_PREFIX):
            continue
        value_type = field.types[0]
        if value_type == GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), value_type)
        copied += 1
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise GGUFExportError(f"{source_gguf}: holds no tokenizer (tokenizer.ggml.tokens)")
    if len(tokens.data) != vocab_size:
        raise GGUFExportError(f"{source_gguf}: its vocabulary has {len(tokens.data)} tokens, the model {vocab_size}")
    log.info("copied %d tokenizer keys from %s", copied, source_gguf.name)


def _write_bpe_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """The tokenizer of a byte-level BPE ``tokenizer.json`` (GPT-2 style), and its special
    tokens and chat template."""
    from gguf import SpecialVocab, TokenType

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"{model_dir}: no tokenizer.json; pass tokenizer_gguf= a GGUF of the same model")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise GGUFExportError(f"{path}: model type {model.get('type')!r}"
                              f"{' with byte_fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
                              " is not supported; only byte-level BPE (GPT-2 style) tokenizers are")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise GGUFExportError(f"{path}: pre_tokenizer {pre.get('type')!r} is not supported; only ByteLevel with "
                              "GPT-2's regex is (pass tokenizer_gguf= a GGUF of the same model instead)")
    vocab = dict(model["vocab"])
    added = {item["id"]: item for item in spec.get("added_tokens", [])}
    for token_id, item in added.items():
        vocab[item["content"]] = token_id
    by_id = {token_id: token for token, token_id in vocab.items()}
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id in added:
            tokens.append(added[token_id]["content"])
            types.append(TokenType.CONTROL if added[token_id].get("special") else TokenType.USER_DEFINED)
        elif token_id in by_id:
            tokens.append(by_id[token_id])
            types.append(TokenType.NORMAL)
        else:  # the embedding matrix is padded past the tokenizer's vocabulary
            tokens.append(f"[PAD{token_id}]")
            types.append(TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's split regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def export_gguf(model_dir: Path, out_path: Path, out_type: str = "f16", tokenizer_gguf: Path | None = None) -> Path:
    """Write the Llama-architecture model in ``model_dir`` (safetensors) as a GGUF file at
    ``out_path`` (``out_type`` "f16" or "f32"); return ``out_path``.

    ``tokenizer_gguf``: a GGUF of the same model whose ``tokenizer.*`` metadata is copied
    as is; without it the tokenizer comes from ``tokenizer.json`` (byte-level BPE only).
    """
    import gguf

    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type must be one of {OUT_TYPES}, got {out_type!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    hp = read_llama_hparams(model_dir)
    weights = _load_weights(model_dir)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out_path)
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(str(hp["name"]))
        writer.add_context_length(hp["context"])
        writer.add_embedding_length(hp["hidden"])
        writer.add_block_count(hp["layers"])
        writer.add_feed_forward_length(hp["ffn"])
        writer.add_head_count(hp["heads"])
        writer.add_head_count_kv(hp["kv_heads"])
        writer.add_rope_dimension_count(hp["head_dim"])
        writer.add_rope_freq_base(float(hp["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(hp["rms_eps"]))
        writer.add_vocab_size(hp["vocab"])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.ALL_F32)
        if tokenizer_gguf is not None:
            _copy_tokenizer_metadata(writer, Path(tokenizer_gguf), hp["vocab"])
        else:
            _write_bpe_tokenizer(writer, model_dir, hp["vocab"])
        for name, array in _gguf_tensors(weights, hp, out_type):
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
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
            raise RuntimeError(f"llama.cpp could not quantize {source} to {method} (status {status})")
        os.replace(partial, out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("quantized %s to %s: %s (%.1f MB)", source.name, method, out_path, out_path.stat().st_size / 1e6)
    return out_path
