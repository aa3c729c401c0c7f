"""Make the compressed variants of a merged student, one directory each, and describe them.

Each variant lands in ``<out_root>/<name>/`` and is described by one dict (a line of
``compress/variants.json``): label, kind, path, size_on_disk_bytes and the method's
details. A variant whose files are already there (they are only ever renamed into place
when complete) is reused, so a rerun after a crash makes only what is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eval.efficiency import size_on_disk

log = logging.getLogger(__name__)

GGUF_TYPES = {"gguf_f16": "f16", "gguf_q8_0": "q8_0", "gguf_q4_k_m": "q4_k_m", "gguf_q4_0": "q4_0"}
BNB_BITS = {"bnb_8bit": 8, "bnb_4bit": 4}


def kind_of(name: str) -> str:
    """The kind of a variant name: gguf, torch_int8 or bnb."""
    if name in GGUF_TYPES:
        return "gguf"
    if name in BNB_BITS:
        return "bnb"
    if name == "torch_int8":
        return "torch_int8"
    raise ValueError(f"unknown compressed variant {name!r}")


def _gguf_variant(name: str, merged_dir: Path, out_root: Path, tokenizer_gguf: Path | None, threads: int) -> dict:
    from compress.gguf_export import export_gguf, quantize_gguf

    f16 = out_root / "gguf_f16" / "model-f16.gguf"
    target = GGUF_TYPES[name]
    path = out_root / name / f"model-{target}.gguf"
    if not path.is_file():
        if not f16.is_file():
            export_gguf(merged_dir, f16, "f16", tokenizer_gguf=tokenizer_gguf)
        if target != "f16":
            quantize_gguf(f16, path, target, threads=threads)
    method = {"tool": "gguf (export) + llama.cpp llama_model_quantize" if target != "f16" else "gguf (export)",
              "type": target.upper(),
              "tokenizer": f"metadata copied from {tokenizer_gguf.name}" if tokenizer_gguf else "from tokenizer.json"}
    return {"kind": "gguf", "path": str(path), "tokenizer_dir": str(merged_dir), "method": method}


def _torch_int8_variant(merged_dir: Path, out_root: Path) -> dict:
    import json

    from compress.torch_int8 import INFO_FILE, save_torch_int8

    path = out_root / "torch_int8"
    if not (path / INFO_FILE).is_file():
        save_torch_int8(merged_dir, path)
    return {"kind": "torch_int8", "path": str(path),
            "method": json.loads((path / INFO_FILE).read_text(encoding="utf-8"))}


def _bnb_variant(name: str, merged_dir: Path) -> dict:
    from compress.bnb import bnb_settings

    bits = BNB_BITS[name]
    # Quantized while loading: the variant's files are the merged model's.
    return {"kind": "bnb", "path": str(merged_dir), "bits": bits,
            "method": {"tool": "transformers BitsAndBytesConfig (bitsandbytes), at load time, CUDA",
                       **bnb_settings(bits)}}


def build_variants(merged_dir: Path, out_root: Path, names: list[str], tokenizer_gguf: Path | None = None,
                   threads: int = 1) -> list[dict]:
    """Make each variant in ``names`` from the merged model in ``merged_dir`` under ``out_root``
    and return their descriptions, in the order asked."""
    merged_dir, out_root = Path(merged_dir), Path(out_root)
    variants = []
    for name in names:
        kind = kind_of(name)
        log.info("compress: %s", name)
        if kind == "gguf":
            variant = _gguf_variant(name, merged_dir, out_root, tokenizer_gguf, threads)
        elif kind == "torch_int8":
            variant = _torch_int8_variant(merged_dir, out_root)
        else:
            variant = _bnb_variant(name, merged_dir)
        variants.append({"label": name, **variant, "size_on_disk_bytes": size_on_disk(Path(variant["path"]))})
    if "gguf_f16" not in names:  # only an intermediate step: not kept
        (out_root / "gguf_f16" / "model-f16.gguf").unlink(missing_ok=True)
        if (out_root / "gguf_f16").is_dir() and not any((out_root / "gguf_f16").iterdir()):
            (out_root / "gguf_f16").rmdir()
    return variants
