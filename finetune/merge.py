"""Fold a LoRA adapter into its base model and save the result as an ordinary model directory.

The merged directory (``config.json``, ``model.safetensors``, the tokenizer files) loads
with a plain ``from_pretrained(dir)`` and no peft; it is what the compress stage exports
and quantizes, and what can be served without adapter support. It is written into a
temporary directory next to the final one and renamed into place only when complete, so
an interrupted merge never leaves a half-written model where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Written last into a merged directory, naming what it was merged from.
MERGE_INFO_FILE = "merge_info.json"


class MergeError(RuntimeError):
    """The adapter cannot be merged into the base model."""


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; on success it replaces ``final``
    (an older ``final`` is removed only then), on any error it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _torch_dtype(dtype):
    """``dtype`` as a torch dtype: given as one, or by name ("float32", "bfloat16", "float16")."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise MergeError(f"dtype must be a floating-point torch dtype or its name, got {dtype!r}")
    return resolved


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype="float32",
               trust_remote_code: bool = False) -> Path:
    """Merge the LoRA adapter in ``adapter_dir`` into the model in ``base_dir`` and save the
    merged model (safetensors, no pickle) and the tokenizer to ``out_dir``; return ``out_dir``.

    ``dtype`` is the dtype the weights are merged and saved in (float32 by default: the
    exact sum, for the exporters downstream to round once). The tokenizer is the adapter
    directory's when it holds one (training saves it there), else the base model's.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not (base_dir / "config.json").is_file():
        raise MergeError(f"{base_dir}: not a model directory (no config.json)")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json)")
    torch_dtype = _torch_dtype(dtype)

    log.info("merging adapter %s into %s (%s)", adapter_dir, base_dir, torch_dtype)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.eval()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)

    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")) or any(tmp.glob("*.bin")):
            raise MergeError(f"saving the merged model did not write safetensors-only weights in {tmp}")
        (tmp / MERGE_INFO_FILE).write_text(json.dumps(
            {"base_model": str(base_dir), "adapter": str(adapter_dir), "dtype": str(torch_dtype).removeprefix("torch.")},
            indent=2) + "\n", encoding="utf-8")
    log.info("merged model saved to %s", out_dir)
    return out_dir
