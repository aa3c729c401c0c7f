"""The compressed variants a config can ask for (`compress.variants`), one registry entry each:
how a variant is made from the merged student, and how it answers evaluation prompts.

Each variant lands in ``<out_root>/<name>/`` and is described by one dict (a line of
``compress/variants.json``): label, kind, path, size_on_disk_bytes and the method's
details. A variant whose files are already there (they are only ever renamed into place
when complete) is reused, so a rerun after a crash makes only what is missing. Adding a
variant is a class with the `CompressedVariant` interface and one line in `VARIANTS`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar, Protocol

from core.measure import latency_summary, size_on_disk

log = logging.getLogger(__name__)


class CompressedVariant(Protocol):
    """One way to make the student smaller."""

    name: str  # its name in compress.variants and variants.json's label
    kind: ClassVar[str]  # how it is answered: gguf (llama.cpp), torch_int8 or bnb (in process)
    needs_cuda: ClassVar[bool]
    description: str

    def build(self, merged_dir: Path, out_root: Path, threads: int) -> dict:
        """Make the variant from the merged model (reusing finished files); its variants.json entry."""
        ...

    def answer(self, variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
        """Greedy answers to `items` and the variant's measured cost (see compress.answer), which
        includes ``answer_wall_s``: the answering loop's own wall time, loading left out."""
        ...


class GgufVariant:
    """A GGUF file for llama.cpp: F16 written from the merged weights by llama.cpp's converter,
    then quantized by llama.cpp's own quantizer."""

    kind = "gguf"
    needs_cuda = False

    def __init__(self, gguf_type: str, description: str):
        self.gguf_type = gguf_type
        self.name = f"gguf_{gguf_type}"
        self.description = description

    def build(self, merged_dir: Path, out_root: Path, threads: int) -> dict:
        from compress.gguf_export import export_gguf, quantize_gguf
        from compress.llama_converter import llama_cpp_version

        f16 = out_root / "gguf_f16" / "model-f16.gguf"
        path = out_root / self.name / f"model-{self.gguf_type}.gguf"
        if not path.is_file():
            if not f16.is_file():
                export_gguf(merged_dir, f16, "f16")
            if self.gguf_type != "f16":
                quantize_gguf(f16, path, self.gguf_type, threads=threads)
        tool = f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {llama_cpp_version()})"
        method = {"tool": tool + (" + llama_model_quantize" if self.gguf_type != "f16" else ""),
                  "type": self.gguf_type.upper()}
        return {"kind": self.kind, "path": str(path), "tokenizer_dir": str(merged_dir), "method": method}

    def answer(self, variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
        from compress.answer import answer_with_gguf

        return answer_with_gguf(variant, items, prompt_format, max_new_tokens)


class TorchInt8Variant:
    """PyTorch dynamic int8: per-channel int8 weights, 8-bit activations at run time, on CPU."""

    name = "torch_int8"
    kind = "torch_int8"
    needs_cuda = False
    description = "PyTorch dynamic int8 on CPU"

    def build(self, merged_dir: Path, out_root: Path, threads: int) -> dict:
        from compress.torch_int8 import INFO_FILE, save_torch_int8

        path = out_root / "torch_int8"
        if not (path / INFO_FILE).is_file():
            save_torch_int8(merged_dir, path)
        return {"kind": self.kind, "path": str(path),
                "method": json.loads((path / INFO_FILE).read_text(encoding="utf-8"))}

    def answer(self, variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
        from compress.answer import answer_in_process

        return answer_in_process(variant, items, prompt_format, max_new_tokens)


class BnbVariant:
    """bitsandbytes LLM.int8 (8 bits) or NF4 (4 bits), applied while loading on a CUDA GPU."""

    kind = "bnb"
    needs_cuda = True

    def __init__(self, bits: int, description: str):
        self.bits = bits
        self.name = f"bnb_{bits}bit"
        self.description = description

    def build(self, merged_dir: Path, out_root: Path, threads: int) -> dict:
        from compress.bnb import bnb_settings

        # Quantized while loading: the variant's files are the merged model's.
        return {"kind": self.kind, "path": str(merged_dir), "bits": self.bits,
                "method": {"tool": "transformers BitsAndBytesConfig (bitsandbytes), at load time, CUDA",
                           **bnb_settings(self.bits)}}

    def answer(self, variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
        from compress.answer import answer_in_process

        return answer_in_process(variant, items, prompt_format, max_new_tokens)


VARIANTS: dict[str, CompressedVariant] = {variant.name: variant for variant in (
    GgufVariant("f16", "GGUF F16 for llama.cpp (answers as the student does)"),
    GgufVariant("q8_0", "GGUF Q8_0 for llama.cpp"),
    GgufVariant("q4_k_m", "GGUF Q4_K_M for llama.cpp (its 256-wide blocks need rows divisible by 256, else "
                          "llama.cpp falls back to 5-bit for those tensors)"),
    GgufVariant("q4_0", "GGUF Q4_0 for llama.cpp"),
    TorchInt8Variant(),
    BnbVariant(8, "bitsandbytes LLM.int8 at load time, CUDA only"),
    BnbVariant(4, "bitsandbytes NF4 at load time, CUDA only"),
)}


def variant_named(name: str) -> CompressedVariant:
    """The registered variant called `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown compressed variant {name!r}; known: {', '.join(VARIANTS)}") from None


def kind_of(name: str) -> str:
    """The kind of a variant name: gguf, torch_int8 or bnb."""
    return variant_named(name).kind


def variant_of_kind(kind: str | None) -> CompressedVariant:
    """A registered variant of `kind` (the variants of one kind answer alike)."""
    for variant in VARIANTS.values():
        if variant.kind == kind:
            return variant
    kinds = sorted({variant.kind for variant in VARIANTS.values()})
    raise ValueError(f"kind must be one of {tuple(kinds)}, got {kind!r}")


def build_variants(merged_dir: Path, out_root: Path, names: list[str], threads: int = 1) -> list[dict]:
    """Make each variant in ``names`` from the merged model in ``merged_dir`` under ``out_root``
    and return their descriptions, in the order asked."""
    merged_dir, out_root = Path(merged_dir), Path(out_root)
    variants = []
    for name in names:
        log.info("compress: %s", name)
        variant = variant_named(name).build(merged_dir, out_root, threads)
        variants.append({"label": name, **variant, "size_on_disk_bytes": size_on_disk(Path(variant["path"]))})
    if "gguf_f16" not in names:  # only an intermediate step: not kept
        (out_root / "gguf_f16" / "model-f16.gguf").unlink(missing_ok=True)
        if (out_root / "gguf_f16").is_dir() and not any((out_root / "gguf_f16").iterdir()):
            (out_root / "gguf_f16").rmdir()
    return variants


def answer_with_variant(variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int,
                        cache_dir: Path | None = None) -> tuple[list[dict], dict]:
    """Greedy answers of one variant (an entry of ``compress/variants.json``) to ``items``
    (dicts with id, instruction, optional input), and its efficiency figures.

    ``cache_dir`` is accepted for the evaluate stage's uniform call; variants carry their
    own files.
    """
    kind = variant.get("kind")
    try:
        answering = variant_of_kind(kind)
    except ValueError as error:
        raise ValueError(f"variant {variant.get('label')!r}: {error}") from None
    if not Path(variant.get("path", "")).exists():
        raise FileNotFoundError(f"variant {variant.get('label')!r}: its files are missing: {variant.get('path')}")
    log.info("answering %d prompts with %s (%s)", len(items), variant["label"], kind)
    answers, efficiency = answering.answer(variant, items, prompt_format, max_new_tokens)
    efficiency = {"identity": f"{variant['label']} ({kind})", "size_on_disk_bytes": variant.get("size_on_disk_bytes"),
                  **efficiency,
                  **latency_summary([a["latency_s"] for a in answers], [a["completion_tokens"] for a in answers],
                                    [a.get("ttft_s") for a in answers])}
    return answers, efficiency
