"""Fine-tuning of the student on instruction records with trl: SFT (LoRA, QLoRA or full) on the
teacher's text, or logit-level distillation from a local teacher (``method: distill``).

Reading order: :func:`train_student` is the entry point; it

1. validates the records, the base model directory (:func:`validate_records`) and that this
   machine can do what ``settings.method``/``optimizer`` ask (:func:`check_hardware`: QLoRA and
   bitsandbytes' optimizers need CUDA), before anything heavy is loaded;
2. turns the records into prompt/completion pairs in the configured prompt format and
   drops those longer than ``max_length`` tokens (:func:`prepare_examples`);
3. builds the trainer (:func:`build_trainer`): a ``datasets.Dataset`` of the pairs, an
   ``SFTConfig`` with CPU-friendly settings (:func:`build_sft_config`) and a peft
   ``LoraConfig``. For a prompt/completion dataset trl computes the loss on the completion
   tokens only (``completion_only_loss``, set explicitly here) and appends the tokenizer's
   end-of-sequence token to every completion. The GPU speed settings of ``FinetuneConfig``
   (``model_dtype``, ``bf16``, ``gradient_checkpointing``, ``attn_implementation``, ``packing``,
   ``use_liger_kernel``, ``torch_compile``, ``dataloader_num_workers``, ``logging_steps``) all
   default to the CPU behaviour; ``bench/bench_finetune_gpu.py`` measures them through
   :func:`build_trainer_for_dataset` and docs/benchmarks.md gives the recommended set;
4. trains (:func:`run_training`), resuming from the last complete checkpoint under
   ``output_dir/checkpoints`` when one exists from an interrupted run of the same data and
   settings; with ``num_processes > 1`` the same function runs in every process of an
   ``accelerate launch`` (``finetune/launch.py``);
5. saves the adapter (``adapter_model.safetensors`` + ``adapter_config.json``; for ``full``,
   the whole model in ``output_dir/model``) and the tokenizer, and writes
   ``output_dir/training_summary.json``.

Methods: ``lora`` wraps the base in a peft LoRA adapter; ``qlora`` loads the base in 4 bits
(NF4, double quantization, bf16 compute) through bitsandbytes, prepares it for k-bit training
(peft's ``prepare_model_for_kbit_training``) and adds the same adapter; ``full`` trains every
weight (no peft). ``distill`` is logit-level knowledge distillation: the teacher model
(``settings.distill.teacher_model``, a local directory that must share the student's tokenizer:
:func:`check_distill_pair`) is loaded next to the student, and trl's own trainer matches the
student's next-token distributions to the teacher's (:func:`build_distill_trainer`: the
experimental ``GKDTrainer`` on the records' teacher text, mixed with on-policy samples by
``lmbda``, or the fully on-policy ``DistillationTrainer``; trl's generalized JSD with ``beta``),
training a LoRA adapter or every weight (``distill.weights``, :attr:`FinetuneConfig.trained_weights`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.records import write_json
from finetune.config import FinetuneConfig
from student.prompt_format import to_prompt_completion

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("instruction", "output")  # strings with some text in them
OPTIONAL_FIELDS = ("input",)  # a string when present, possibly empty; missing means ""
DEFAULT_SAVE_STEPS = 50
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"  # method full: the whole trained model
SUMMARY_FILE = "training_summary.json"
FINGERPRINT_FILE = "run_fingerprint.json"
# Settings left out of a run's fingerprint: a checkpoint stays resumable when they change.
# epochs/max_steps only say how long to go on; base_model is recorded as the resolved directory
# and heldout_records as the data itself.
# Settings that may change between a crash and its resume: how long to train, and knobs that
# do not change what is learned (how often to log, how many loader processes).
_NOT_FINGERPRINTED = {
    "epochs", "max_steps", "heldout_records", "base_model", "logging_steps", "dataloader_num_workers", "merge",
    "save_steps", "keep_checkpoints",
}
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# GPU speed settings added after the first release: fingerprinted only when set to something
# other than their default, so that checkpoints written before they existed stay resumable.
_SPEED_SETTINGS = (
    "model_dtype",
    "bf16",
    "gradient_checkpointing",
    "attn_implementation",
    "packing",
    "use_liger_kernel",
    "torch_compile",
    "dataloader_num_workers",
    "logging_steps",
    "method",
    "optimizer",
    "num_processes",
    "distributed",
    "distill",
)
BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
SDPA_VARLEN = "sdpa_varlen"
SDPA_CUDNN = "sdpa_cudnn"


class TrainingDataError(ValueError):
    """The records cannot be trained on; the message names the record and field at fault."""


class TrainingSetupError(RuntimeError):
    """The settings ask for something this machine cannot do (say, QLoRA without a CUDA GPU)."""


@dataclass
class TrainResult:
    """What one call of :func:`train_student` produced."""

    trained_dir: Path  # the adapter (lora, qlora) or the whole model (full), with the tokenizer
    train_records: int  # examples trained on (after dropping those longer than max_length)
    steps: int  # optimizer steps of the whole run, resumed ones included
    train_loss: float  # mean training loss over all logged steps of the run
    runtime_s: float  # wall time of this call's training loop
    tokens_seen: int  # non-padding input tokens over the whole run
    trainable_params: int
    total_params: int
    final_loss: float = math.nan  # loss of the last logged step
    dropped_records: int = 0  # records whose prompt + completion exceed max_length
    resumed_from: str | None = None  # checkpoint this call resumed from, if any
    method: str = "lora"
    teacher_model_dir: str | None = None  # method distill: the teacher whose distributions were learned
    processes: int = 1  # training processes (accelerate launch when more than one)
    parallelism: str = "none"  # how the processes shared the work: none, ddp or fsdp

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        data = asdict(self)
        data["trained_dir"] = str(self.trained_dir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainResult":
        """The result back from :meth:`to_json`'s data (extra keys, as in the summary file, ignored)."""
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{**fields, "trained_dir": Path(data["trained_dir"])})


# --------------------------------------------------------------------------- validation


def validate_records(records: Any) -> None:
    """Raise :class:`TrainingDataError` unless ``records`` is a non-empty list of usable records.

    Every record must be a dict with non-blank string ``instruction`` and ``output``;
    ``input`` is optional (as everywhere in the pipeline) but must be a string when present.
    """
    if not isinstance(records, list | tuple):
        raise TrainingDataError(f"records must be a list of dicts, got {type(records).__name__}")
    if not records:
        raise TrainingDataError("no records to train on (the list is empty)")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TrainingDataError(f"record {index}: expected a dict, got {type(record).__name__}")
        for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            if field not in record:
                if field in OPTIONAL_FIELDS:
                    continue
                raise TrainingDataError(f"record {index}: missing field '{field}'")
            value = record[field]
            if not isinstance(value, str):
                raise TrainingDataError(
                    f"record {index}: field '{field}' must be a string, got {type(value).__name__}"
                )
            if field in REQUIRED_FIELDS and not value.strip():
                raise TrainingDataError(f"record {index}: field '{field}' is empty")


def _check_base_model_dir(base_model_dir: Path) -> Path:
    base_model_dir = Path(base_model_dir)
    if not base_model_dir.is_dir():
        raise FileNotFoundError(f"base model directory not found: {base_model_dir}")
    if not (base_model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{base_model_dir} is not a Hugging Face model directory (it has no config.json)"
        )
    return base_model_dir


def check_hardware(settings: FinetuneConfig) -> None:
    """Raise :class:`TrainingSetupError` unless this machine can run ``settings``' method and optimizer.

    QLoRA's 4-bit layers and bitsandbytes' 8-bit/paged optimizers need a CUDA GPU and the
    bitsandbytes package; so does FSDP; ``num_processes`` may not exceed the GPUs there are.
    """
    wants_bitsandbytes = settings.method == "qlora" or settings.optimizer in BITSANDBYTES_OPTIMIZERS
    what = "method qlora" if settings.method == "qlora" else f"optimizer {settings.optimizer}"
    if wants_bitsandbytes and not _use_cuda():
        raise TrainingSetupError(
            f"finetune: {what} needs a CUDA GPU (bitsandbytes' kernels) and this machine has none; "
            "use method lora (or full) and the default optimizer here"
        )
    if wants_bitsandbytes:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainingSetupError(f"finetune: {what} needs the bitsandbytes package (pip install bitsandbytes)") from exc
    if settings.base_precision == "fp8":
        from finetune.fp8 import check_fp8_hardware

        try:
            check_fp8_hardware()
        except RuntimeError as exc:
            raise TrainingSetupError(str(exc)) from None
    if _fsdp(settings) and not _use_cuda():
        raise TrainingSetupError(
            "finetune.distributed fsdp needs GPUs (accelerate shards over accelerators only; on CPU it would "
            "silently fall back to DDP); use distributed: ddp here"
        )
    if settings.num_processes > 1 and _use_cuda():
        import torch

        if settings.num_processes > torch.cuda.device_count():
            raise TrainingSetupError(
                f"finetune.num_processes={settings.num_processes} but this machine has "
                f"{torch.cuda.device_count()} GPU(s): one process per GPU"
            )


def with_distill_teacher(settings: FinetuneConfig, teacher_model_dir: Path | None) -> FinetuneConfig:
    """``settings`` with ``distill.teacher_model`` set to the teacher's directory, resolved (so that
    the launched processes and the run's fingerprint name it); a :class:`TrainingSetupError` when
    there is none."""
    given = teacher_model_dir if teacher_model_dir is not None else settings.distill.teacher_model
    if given is None or not Path(given).is_dir():
        raise TrainingSetupError(
            "finetune.distill.teacher_model: method distill needs the teacher's weights in a local Hugging Face "
            f"directory, and {'none was given' if given is None else f'{given} is not a directory'}"
        )
    teacher = str(Path(given).resolve())
    return settings.model_copy(update={"distill": settings.distill.model_copy(update={"teacher_model": teacher})})


def tokenizer_difference(student_dir: Path, teacher_dir: Path, trust_remote_code: bool = False) -> str | None:
    """Why the two models' tokenizers differ (vocabulary, special tokens, or the models' vocabulary
    sizes), or None when they are the same: logit-level distillation compares the two models'
    distributions token id by token id, so the ids must mean the same text."""
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(student_dir, trust_remote_code=trust_remote_code)
    teacher = AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code)
    if student.get_vocab() != teacher.get_vocab():
        return (f"their vocabularies differ ({len(student.get_vocab())} tokens in the student's, "
                f"{len(teacher.get_vocab())} in the teacher's)")
    for name in ("eos_token", "bos_token", "unk_token"):
        if getattr(student, name) != getattr(teacher, name):
            return f"their {name} differ ({getattr(student, name)!r} against {getattr(teacher, name)!r})"
    sizes = []
    for directory in (student_dir, teacher_dir):
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        sizes.append(config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size")))
    if sizes[0] != sizes[1]:
        return f"the models' vocab_size differ ({sizes[0]} against {sizes[1]})"
    return None


def distill_pair_problem(student_dir: Path, teacher_dir: Path, settings: FinetuneConfig) -> str | None:
    """Why the teacher in ``teacher_dir`` cannot be distilled into the student in ``student_dir`` at
    the logit level (not a model directory, or another tokenizer), or None when it can."""
    try:
        _check_base_model_dir(teacher_dir)
    except FileNotFoundError as exc:
        return str(exc)
    why = tokenizer_difference(student_dir, teacher_dir, settings.trust_remote_code)
    if why:
        return (f"the teacher ({teacher_dir}) does not share the student's tokenizer (finetune.base_model, "
                f"{student_dir}): {why}. Logit-level distillation needs one tokenizer; use method lora or full "
                "(SFT on the teacher's text) for this pair")
    return None


def check_distill_pair(student_dir: Path, teacher_dir: Path, settings: FinetuneConfig) -> None:
    """A :class:`TrainingSetupError` naming ``finetune.distill.teacher_model`` unless the teacher in
    ``teacher_dir`` is a model directory sharing the student's tokenizer."""
    problem = distill_pair_problem(student_dir, teacher_dir, settings)
    if problem:
        raise TrainingSetupError(f"finetune.distill.teacher_model: {problem}")


# --------------------------------------------------------------------------- data


def prepare_examples(
    records: list[dict], tokenizer: Any, settings: FinetuneConfig
) -> tuple[list[dict[str, str]], list[int]]:
    """Prompt/completion pairs that fit ``settings.max_length``, and the indices of those dropped.

    The length counted is the one trl trains on: the tokenized prompt + completion +
    end-of-sequence token. Overlong examples are dropped rather than truncated, so the
    student never learns answers that stop mid-way without an end token.
    """
    eos = tokenizer.eos_token or ""
    kept: list[dict[str, str]] = []
    dropped: list[int] = []
    for index, record in enumerate(records):
        pair = to_prompt_completion(record, settings.prompt_format, tokenizer)
        length = len(tokenizer(text=pair["prompt"] + pair["completion"] + eos)["input_ids"])
        if length > settings.max_length:
            dropped.append(index)
        else:
            kept.append(pair)
    if not kept:
        raise TrainingDataError(
            f"none of the {len(records)} records fits max_length={settings.max_length} tokens "
            "(prompt + completion + end token); raise finetune.max_length or shorten the records"
        )
    if dropped:
        logger.warning(
            "dropped %d of %d records longer than max_length=%d tokens (first: record %d)",
            len(dropped), len(records), settings.max_length, dropped[0],
        )
    return kept, dropped


def _fingerprint(pairs: list[dict[str, str]], base_model_dir: Path, settings: FinetuneConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed from: the data and every non-duration setting."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(pair, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    kept_settings = settings.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    for name in _SPEED_SETTINGS:  # left out at their defaults, so older checkpoints stay resumable
        if kept_settings.get(name) == type(settings).model_fields[name].default:
            kept_settings.pop(name, None)
    return {"data_sha256": digest.hexdigest(), "base_model_dir": str(base_model_dir.resolve()), "settings": kept_settings}


# --------------------------------------------------------------------------- checkpoints


def _complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders that were written to the end (trainer_state.json is saved last)."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _resume_checkpoint(checkpoints_dir: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, or None; clears checkpoints that cannot be resumed.

    Checkpoints of a different run (other data or settings) and half-written ones are
    removed, so that neither resuming nor the trainer's checkpoint rotation picks them up.
    """
    if not checkpoints_dir.is_dir():
        return None
    fingerprint_file = checkpoints_dir / FINGERPRINT_FILE
    previous = None
    if fingerprint_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(fingerprint_file.read_text(encoding="utf-8"))
    complete = set(_complete_checkpoints(checkpoints_dir))
    stale = previous != fingerprint
    for path in checkpoints_dir.iterdir():
        if _CHECKPOINT_RE.match(path.name) and path.is_dir() and (stale or path not in complete):
            why = "from a run with other data or settings" if stale else "incomplete"
            logger.warning("removing checkpoint %s (%s)", path, why)
            shutil.rmtree(path)
    if stale:
        return None
    remaining = _complete_checkpoints(checkpoints_dir)
    return remaining[-1] if remaining else None


# --------------------------------------------------------------------------- trainer


def _use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mixed_precision(settings: FinetuneConfig) -> bool:
    """Whether training runs under bf16 autocast: ``settings.bf16``, by default on when the GPU supports it."""
    import torch

    if settings.bf16 is not None:
        return settings.bf16
    return _use_cuda() and torch.cuda.is_bf16_supported()


def build_sft_config(checkpoints_dir: Path, settings: FinetuneConfig, *, save_steps: int, progress: bool):
    """trl ``SFTConfig`` for ``settings``: CPU-friendly by default, with the GPU speed settings applied."""
    from trl import SFTConfig

    return SFTConfig(**_sft_arguments(settings), **_trainer_arguments(checkpoints_dir, settings, save_steps, progress))


def build_distill_config(checkpoints_dir: Path, settings: FinetuneConfig, *, save_steps: int, progress: bool):
    """trl's config for ``method: distill``: ``GKDConfig`` (an ``SFTConfig``) or ``DistillationConfig``,
    with the same optimisation, hardware and checkpoint settings as SFT and ``settings.distill``'s
    divergence and sampling settings."""
    distill = settings.distill
    common = _trainer_arguments(checkpoints_dir, settings, save_steps, progress)
    if distill.trainer == "gkd":
        GKDConfig, _ = _gkd_classes()
        return GKDConfig(**_sft_arguments(settings), **common, beta=distill.beta, lmbda=distill.lmbda,
                         temperature=distill.temperature, max_new_tokens=distill.max_new_tokens)
    from trl import DistillationConfig

    # Its batches are prompts, sampled from inside the step: the Trainer cannot count their tokens.
    common["include_num_input_tokens_seen"] = "no"
    return DistillationConfig(**common, beta=distill.beta, temperature=distill.temperature,
                              max_completion_length=distill.max_new_tokens)


def _sft_arguments(settings: FinetuneConfig) -> dict[str, Any]:
    """SFTConfig's own data settings: prompt/completion pairs, loss on the completion only. Packing
    (off by default) uses trl's best-fit-decreasing strategy, which turns on padding-free batches by itself."""
    return {
        "max_length": settings.max_length,
        "completion_only_loss": True,
        "packing": settings.packing,
        "padding_free": False,
        "dataset_num_proc": None,
        "use_liger_kernel": settings.use_liger_kernel,
    }


def _trainer_arguments(checkpoints_dir: Path, settings: FinetuneConfig, save_steps: int, progress: bool) -> dict[str, Any]:
    """The training arguments every trl trainer here takes: CPU-friendly by default, with the GPU
    speed settings applied."""
    cuda = _use_cuda()
    checkpointing = cuda if settings.gradient_checkpointing is None else settings.gradient_checkpointing
    return dict(
        output_dir=str(checkpoints_dir),
        # Optimisation
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        **({"optim": settings.optimizer} if settings.optimizer else {}),
        # Hardware: trl defaults to bf16 and gradient checkpointing, both unwanted on CPU.
        # (transformers 5 renamed gradient_checkpointing to activation_checkpointing.)
        use_cpu=not cuda,
        bf16=_mixed_precision(settings),
        fp16=False,
        # (under FSDP, FSDP's own checkpointing instead: see _distributed_arguments)
        activation_checkpointing=checkpointing and not _fsdp(settings),
        dataloader_num_workers=settings.dataloader_num_workers,
        dataloader_pin_memory=cuda,
        # Checkpoints for crash recovery (peft models save only the adapter, as safetensors).
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        save_only_model=False,
        # Bookkeeping
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=not progress,
        trust_remote_code=settings.trust_remote_code,
        **_distributed_arguments(settings, checkpointing),
    )


def _fsdp(settings: FinetuneConfig) -> bool:
    return settings.num_processes > 1 and settings.distributed == "fsdp"


def _distributed_arguments(settings: FinetuneConfig, checkpointing: bool) -> dict[str, Any]:
    """Trainer arguments for several processes: DDP over the adapter, or FSDP for big students."""
    if settings.num_processes == 1:
        return {}
    if not _fsdp(settings):
        # Every trainable weight gets a gradient in every step: no search for unused ones.
        return {"ddp_find_unused_parameters": False}
    # FSDP2 (transformers' default) shards each decoder layer (the model's _no_split_modules) over
    # the processes, weights, gradients and optimizer states alike; it checkpoints activations itself.
    return {"fsdp": True, "fsdp_config": {"activation_checkpointing": checkpointing}}


def build_lora_config(settings: FinetuneConfig):
    """peft ``LoraConfig`` for a causal language model."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        bias="none",
    )


def _quiet_progress_callback():
    """transformers' progress bar without its print of each log dictionary to standard output."""
    from transformers import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    return QuietProgress()


def _log_progress_callback():
    """A trainer callback that reports each logged step through ``logging`` instead of print."""
    from transformers import TrainerCallback

    class LogProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_local_process_zero:
                return
            if "loss" in logs:
                logger.info(
                    "step %d/%d loss %.4f lr %.3g",
                    state.global_step, state.max_steps, logs["loss"], logs.get("learning_rate", float("nan")),
                )
            elif "train_runtime" in logs:
                logger.info("training loop finished in %.1f s", logs["train_runtime"])

    return LogProgress()


def load_tokenizer(base_model_dir: Path, settings: FinetuneConfig):
    """The base model's tokenizer, with a padding token (the end token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=settings.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_load_kwargs(settings: FinetuneConfig) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``/``from_config``: weight dtype and attention kernel.

    By default the weights are float32 (mixed precision, where used, is the trainer's business)
    and the attention is transformers' default; ``sdpa_varlen`` and ``sdpa_cudnn`` are registered
    here when asked for.
    """
    import torch

    kwargs: dict[str, Any] = {
        "dtype": torch.bfloat16 if settings.model_dtype == "bfloat16" else torch.float32,
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.attn_implementation is not None:
        if settings.attn_implementation in (SDPA_VARLEN, SDPA_CUDNN):
            register_attention_variants()
        kwargs["attn_implementation"] = settings.attn_implementation
    return kwargs


def quantization_kwargs(settings: FinetuneConfig) -> dict[str, Any]:
    """``from_pretrained`` arguments for ``method: qlora`` (QLoRA's recipe: NF4 weights, quantized
    quantization constants, bf16 compute, on this process's GPU); empty for the other methods."""
    if settings.method != "qlora":
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        # Each process's own GPU (train_student refuses qlora without one; "cpu" serves smoke tests).
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"},
    }


def load_model(base_model_dir: Path, settings: FinetuneConfig):
    """The base model, in ``settings.model_dtype`` (float32 unless set) with the configured attention;
    4-bit quantized for ``method: qlora``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        base_model_dir, use_safetensors=True, **model_load_kwargs(settings), **quantization_kwargs(settings)
    )


# --------------------------------------------------------------------------- attention variants


def _sdpa_varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """sdpa, except for padding-free packed rows on a GPU, which go through torch's varlen flash attention.

    A padding-free batch is one row of concatenated examples whose boundaries come as
    ``cu_seq_lens_q``/``cu_seq_lens_k`` (trl's collator computes them on the CPU). transformers
    still hands over sdpa's block-diagonal causal mask built from the position ids (cheap, once
    per forward); here it is replaced by the boundaries, so each example attends causally to
    itself with a flash kernel instead of a masked one over the whole row. Anything else
    (the CPU, float32, a padded batch) is plain sdpa with that mask.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if (
        cu_q is None
        or cu_k is None
        or query.shape[0] != 1
        or (module.training and dropout > 0)
        or not query.is_cuda
        or query.dtype not in (torch.bfloat16, torch.float16)  # flash kernels take half precision only
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    varlen_attn, causal = _varlen_kernel()
    # (1, heads, tokens, head_dim) -> (tokens, heads, head_dim)
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat the key/value heads
        repeats = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    max_q = int(kwargs.get("max_length_q") or int((cu_q[1:] - cu_q[:-1]).max()))
    max_k = int(kwargs.get("max_length_k") or int((cu_k[1:] - cu_k[:-1]).max()))
    cu_q, cu_k = cu_q.to(torch.int32), cu_k.to(torch.int32)
    out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scaling, **causal)
    return out.unsqueeze(0), None  # (1, tokens, heads, head_dim), like sdpa_attention_forward


def _varlen_kernel():
    """torch's varlen attention and the keyword that makes it causal (it changed between releases)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    if "is_causal" in parameters:
        return varlen_attn, {"is_causal": True}
    if "window_size" in parameters:
        return varlen_attn, {"window_size": (-1, 0)}
    raise RuntimeError("this torch's varlen_attn takes neither is_causal nor window_size")


def _sdpa_cudnn_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa with cuDNN's fused attention preferred over the flash backend (faster on Hopper)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not query.is_cuda:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_attention_variants() -> None:
    """Make ``attn_implementation`` ``sdpa_varlen`` and ``sdpa_cudnn`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError as exc:  # older torch
        raise RuntimeError(f"attn_implementation={SDPA_VARLEN} needs torch.nn.attention.varlen (torch >= 2.10)") from exc
    AttentionInterface.register(SDPA_VARLEN, _sdpa_varlen_attention)
    AttentionMaskInterface.register(SDPA_VARLEN, sdpa_mask)
    AttentionInterface.register(SDPA_CUDNN, _sdpa_cudnn_attention)
    AttentionMaskInterface.register(SDPA_CUDNN, sdpa_mask)


# --------------------------------------------------------------------------- trainer construction


def build_trainer(
    pairs: list[dict[str, str]],
    model: Any,
    tokenizer: Any,
    checkpoints_dir: Path,
    settings: FinetuneConfig,
    *,
    save_steps: int = DEFAULT_SAVE_STEPS,
    progress: bool = True,
    teacher: Any = None,
):
    """An ``SFTTrainer`` over the prompt/completion ``pairs``: ``model`` in a fresh LoRA adapter, or
    the whole model for ``method: full``; for ``method: distill``, trl's GKD or Distillation trainer
    that matches ``model`` to the ``teacher`` model's token distributions."""
    from datasets import Dataset

    if settings.method == "distill":
        return build_distill_trainer(pairs, model, teacher, tokenizer, checkpoints_dir, settings,
                                     save_steps=save_steps, progress=progress)
    return build_trainer_for_dataset(
        Dataset.from_list(pairs), model, tokenizer, checkpoints_dir, settings, save_steps=save_steps, progress=progress
    )


def build_trainer_for_dataset(
    dataset: Any,
    model: Any,
    tokenizer: Any,
    checkpoints_dir: Path,
    settings: FinetuneConfig,
    *,
    save_steps: int = DEFAULT_SAVE_STEPS,
    progress: bool = True,
    callbacks: list[Any] | None = None,
):
    """:func:`build_trainer` for any dataset trl takes: prompt/completion pairs, or tokenized rows
    (an ``input_ids`` column, as the GPU benchmark feeds it). Applies the speed settings that act
    on the wrapped model: no input casting in the LoRA layers under bf16 autocast, and regional
    ``torch.compile``. A 4-bit model (``method: qlora``) is prepared for k-bit training first."""
    from trl import SFTTrainer

    args = build_sft_config(checkpoints_dir, settings, save_steps=save_steps, progress=progress)
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to float32, base frozen; input gradients on for checkpointing.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.activation_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if settings.trained_weights == "full" else build_lora_config(settings),
        callbacks=[_log_progress_callback(), *(callbacks or [])],
    )
    return _finish_trainer(trainer, settings, progress)


def distill_rows(pairs: list[dict[str, str]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Tokenized rows for trl's GKD collator: prompt + completion + end token tokenized whole (as
    SFT tokenizes them), the completion being the tokens after the common prefix with the prompt
    tokenized alone (``completion_mask``: the positions whose next-token distributions are matched;
    the prompt text rides along, as the collator wants one)."""
    from student.prompt_format import common_prefix_length

    eos = tokenizer.eos_token or ""
    rows = []
    for pair in pairs:
        prompt_ids = list(tokenizer(text=pair["prompt"])["input_ids"])
        ids = list(tokenizer(text=pair["prompt"] + pair["completion"] + eos)["input_ids"])
        start = max(1, min(common_prefix_length(prompt_ids, ids), len(ids) - 1))
        rows.append({"prompt": pair["prompt"], "input_ids": ids, "attention_mask": [1] * len(ids),
                     "completion_mask": [0] * start + [1] * (len(ids) - start)})
    return rows


def build_distill_trainer(
    pairs: list[dict[str, str]],
    model: Any,
    teacher: Any,
    tokenizer: Any,
    checkpoints_dir: Path,
    settings: FinetuneConfig,
    *,
    save_steps: int = DEFAULT_SAVE_STEPS,
    progress: bool = True,
):
    """trl's trainer for ``method: distill``. ``gkd``: ``trl.experimental.gkd.GKDTrainer`` over the
    tokenized pairs (the teacher's text; with probability ``lmbda`` a step's completions are sampled
    from the student instead), loss trl's generalized JSD (``beta``) between the student's and the
    teacher's next-token distributions on the completion tokens. ``distillation``: ``trl.DistillationTrainer``
    over the prompts alone, fully on-policy. ``model`` is wrapped in a fresh LoRA adapter unless
    ``distill.weights`` is full; the teacher stays frozen."""
    from datasets import Dataset

    if teacher is None:
        raise TrainingSetupError("finetune.method distill needs a teacher model (finetune.distill.teacher_model)")
    args = build_distill_config(checkpoints_dir, settings, save_steps=save_steps, progress=progress)
    peft_config = None if settings.trained_weights == "full" else build_lora_config(settings)
    common = {"model": model, "teacher_model": teacher, "args": args, "processing_class": tokenizer,
              "peft_config": peft_config, "callbacks": [_log_progress_callback()]}
    if settings.distill.trainer == "gkd":
        _, GKDTrainer = _gkd_classes()
        trainer = GKDTrainer(train_dataset=Dataset.from_list(distill_rows(pairs, tokenizer)), **common)
    else:
        from trl import DistillationTrainer

        trainer = DistillationTrainer(train_dataset=Dataset.from_list([{"prompt": p["prompt"]} for p in pairs]),
                                      **common)
    return _finish_trainer(trainer, settings, progress)


def _gkd_classes():
    """trl's experimental GKDConfig and GKDTrainer, without the warning that experimental APIs may change
    (the installed trl is the one the tests run)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def _finish_trainer(trainer: Any, settings: FinetuneConfig, progress: bool):
    """What every trainer here gets after construction: progress reported through logging instead of
    printed dictionaries, and the speed settings that act on the wrapped model (no input casting
    in the LoRA layers under bf16 autocast, FP8 base layers, regional ``torch.compile``)."""
    from transformers import PrinterCallback, ProgressCallback

    args = trainer.args
    if progress:  # the bar stays; its print of every log dictionary goes (LogProgress logs the loss)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_quiet_progress_callback())
    else:
        trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    if args.bf16 and _base_dtype_is_low_precision(trainer.model):
        _disable_lora_input_casting(trainer.model)
    if settings.base_precision == "fp8":
        from finetune.fp8 import convert_lora_bases_to_fp8

        swapped = convert_lora_bases_to_fp8(trainer.model)
        logger.info("base_precision fp8: %d frozen base layers run their matmuls in FP8", swapped)
    if settings.torch_compile:
        _compile_decoder_layers(trainer.model)
    return trainer


def _base_dtype_is_low_precision(model: Any) -> bool:
    import torch

    return any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters() if not p.requires_grad)


def _disable_lora_input_casting(model: Any) -> None:
    """Let bf16 activations into the float32 LoRA weights uncast; autocast runs the matmuls in bf16.

    peft otherwise copies each LoRA layer's input to float32 (then autocast copies it back to
    bf16): three passes over every activation entering a LoRA layer, for nothing.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def _compile_decoder_layers(model: Any) -> None:
    """torch.compile every decoder layer (they share one compiled graph), leaving the rest eager."""
    import torch

    for name in ("recompile_limit", "cache_size_limit"):  # one graph per layer at most
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise RuntimeError("torch_compile: found no decoder layers to compile in this model")
    for layer in layers:
        layer.compile()


@contextlib.contextmanager
def _library_progress_bars(enabled: bool):
    """Show or hide the datasets library's progress bars (dataset preparation) and transformers'
    (loading weights) for the duration of the block."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as transformers_logging

    was_disabled = are_progress_bars_disabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    if enabled:
        yield
        return
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


def _losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def _save_trained(trainer: Any, trained_dir: Path, weights: str) -> None:
    """Write the adapter (or, for ``full``, the whole model) and the tokenizer to ``trained_dir``,
    replacing an older one only when done. Every process calls it (FSDP gathers the weights
    from all); the main process alone writes."""
    tmp = trained_dir.with_name(f".{trained_dir.name}.tmp")
    main = trainer.is_world_process_zero()
    if main and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # peft models save the adapter only; safetensors; the tokenizer too
    trainer.accelerator.wait_for_everyone()
    if not main:
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary has the settings
    required = ("config.json",) if weights == "full" else ("adapter_model.safetensors", "adapter_config.json")
    for name in required:
        if not (tmp / name).is_file():
            raise RuntimeError(f"saving the trained weights did not write {name} in {tmp}")
    if not any(tmp.glob("*.safetensors")):
        raise RuntimeError(f"saving the trained weights wrote no safetensors file in {tmp}")
    if trained_dir.exists():
        shutil.rmtree(trained_dir)
    tmp.rename(trained_dir)


def trained_dir_for(output_dir: Path, settings: FinetuneConfig) -> Path:
    """Where the trained weights go: ``adapter/`` for lora and qlora, ``model/`` for full."""
    return Path(output_dir) / (FULL_MODEL_DIR if settings.trained_weights == "full" else ADAPTER_DIR)


# --------------------------------------------------------------------------- entry point


def train_student(
    records: list[dict],
    base_model_dir: Path,
    output_dir: Path,
    settings: FinetuneConfig,
    progress: bool = True,
    *,
    save_steps: int = DEFAULT_SAVE_STEPS,
    teacher_model_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune the model in ``base_model_dir`` on ``records`` (``settings.method``); save the result under ``output_dir``.

    Everything is checked before training starts: :class:`TrainingDataError` for an empty
    list, an incomplete record (the message names its index and field) or records none of
    which fit ``settings.max_length``; :class:`FileNotFoundError` for a missing base model;
    :class:`TrainingSetupError` for QLoRA (or a bitsandbytes optimizer) without a CUDA GPU.

    ``output_dir`` receives ``checkpoints/`` (one every ``save_steps`` optimizer steps and
    at the end, the last two kept), ``adapter/`` (``adapter_model.safetensors``,
    ``adapter_config.json`` and the tokenizer; ``model/`` with the whole model for ``full``)
    and ``training_summary.json``. When ``checkpoints/`` holds a complete checkpoint of the
    same data and settings (say, after a crash), training resumes from it; only ``epochs``,
    ``max_steps`` and bookkeeping settings may differ. With ``num_processes > 1`` the
    training runs in that many processes under ``accelerate launch``, with the same outputs.
    ``progress`` shows progress bars; per-step losses always go to this module's logger.

    ``method: distill`` learns from the teacher model in ``teacher_model_dir`` (default: the
    directory ``settings.distill.teacher_model``), which must share the student's tokenizer
    (:func:`check_distill_pair`, a :class:`TrainingSetupError` naming the field otherwise, before
    any training).
    """
    validate_records(records)
    base_model_dir = _check_base_model_dir(base_model_dir)
    check_hardware(settings)
    if settings.method == "distill":
        settings = with_distill_teacher(settings, teacher_model_dir)
        check_distill_pair(base_model_dir, Path(settings.distill.teacher_model), settings)
    if save_steps < 1:
        raise ValueError(f"save_steps must be at least 1, got {save_steps}")
    output_dir = Path(output_dir)
    checkpoints_dir = output_dir / CHECKPOINTS_DIR

    tokenizer = load_tokenizer(base_model_dir, settings)
    pairs, dropped = prepare_examples(records, tokenizer, settings)
    fingerprint = _fingerprint(pairs, base_model_dir, settings)
    resume_from = _resume_checkpoint(checkpoints_dir, fingerprint)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    (checkpoints_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")

    if settings.num_processes > 1:
        from finetune.launch import launch_training

        launch_training(
            pairs, len(dropped), base_model_dir, output_dir, settings,
            progress=progress, save_steps=save_steps, resume_from=resume_from,
        )
        return TrainResult.from_json(json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8")))
    return run_training(
        pairs, len(dropped), base_model_dir, output_dir, settings,
        progress=progress, save_steps=save_steps, resume_from=resume_from, tokenizer=tokenizer,
    )


def run_training(
    pairs: list[dict[str, str]],
    dropped_records: int,
    base_model_dir: Path,
    output_dir: Path,
    settings: FinetuneConfig,
    *,
    progress: bool,
    save_steps: int,
    resume_from: Path | None,
    tokenizer: Any = None,
) -> TrainResult:
    """The training itself, on prepared pairs: load, train, save, summarise.

    Runs in this process, or in each process of an ``accelerate launch`` (the trainer finds
    the process group in the environment); only the main process writes the outputs.
    """
    output_dir = Path(output_dir)
    checkpoints_dir = output_dir / CHECKPOINTS_DIR
    trained_dir = trained_dir_for(output_dir, settings)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(base_model_dir, settings)
    with _library_progress_bars(progress):
        model = load_model(base_model_dir, settings)
        teacher = load_model(Path(settings.distill.teacher_model), settings) if settings.method == "distill" else None
        trainer = build_trainer(
            pairs, model, tokenizer, checkpoints_dir, settings, save_steps=save_steps, progress=progress,
            teacher=teacher,
        )
    if _fsdp(settings) and _parallelism(trainer) != "fsdp":
        raise TrainingSetupError("finetune.distributed is fsdp but the trainer did not enable FSDP")
    trainable, total = _parameter_counts(trainer.model)
    processes = trainer.args.world_size
    if trainer.is_world_process_zero():
        logger.info(
            "training (%s) on %s: %d examples, %d trainable of %d parameters, %d process(es)%s",
            settings.method, base_model_dir, len(pairs), trainable, total, processes,
            f", resuming from {resume_from}" if resume_from else "",
        )

    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime = time.monotonic() - started

    _save_trained(trainer, trained_dir, settings.trained_weights)
    if not settings.keep_checkpoints and trainer.is_world_process_zero():
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
    losses = _losses(trainer.state.log_history)
    result = TrainResult(
        trained_dir=trained_dir,
        train_records=len(pairs),
        steps=trainer.state.global_step,
        train_loss=sum(losses) / len(losses) if losses else math.nan,
        runtime_s=round(runtime, 3),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        trainable_params=int(trainable),
        total_params=int(total),
        final_loss=losses[-1] if losses else math.nan,
        dropped_records=dropped_records,
        resumed_from=str(resume_from) if resume_from else None,
        method=settings.method,
        teacher_model_dir=settings.distill.teacher_model if settings.method == "distill" else None,
        processes=processes,
        parallelism=_parallelism(trainer),
    )
    if trainer.is_world_process_zero():
        summary = {**result.to_json(), "base_model_dir": str(base_model_dir), "settings": settings.model_dump(mode="json")}
        write_json(output_dir / SUMMARY_FILE, summary)
        logger.info(
            "%s saved to %s: %d steps, mean loss %.4f, final loss %.4f, %.1f s",
            trained_dir.name, trained_dir, result.steps, result.train_loss, result.final_loss, runtime,
        )
    return result


def _parallelism(trainer: Any) -> str:
    """What the trainer's accelerator actually did with several processes: fsdp, ddp, or none."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "ddp" if trainer.args.world_size > 1 else "none"


def _parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight counts its unpacked size, as peft counts it."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
