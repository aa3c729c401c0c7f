"""Settings of fine-tuning (LoRA, QLoRA or full, with trl) and of the dataset files written for it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.settings import Settings
from student.embedded import EMBEDDED_STUDENTS, PRUNED_LAYERS, PRUNED_PREFIX, EmbeddedStudentError, embedded_student


class DistillSettings(Settings):
    """Logit-level knowledge distillation (``finetune.method: distill``): the student learns the
    teacher's next-token distributions through trl's own trainers, not only the teacher's text."""

    trainer: Literal["gkd", "distillation"] = Field(
        "gkd",
        description="gkd: trl's experimental GKDTrainer, a generalized JSD between student and teacher on "
        "sequences that are the training records (the teacher's text) or, with probability lmbda, the "
        "student's own samples; distillation: trl's DistillationTrainer, fully on-policy (the student samples "
        "max_new_tokens tokens for every prompt of every step and matches the teacher on them; slower on CPU).",
    )
    teacher_model: str | None = Field(
        None,
        description="The teacher whose distributions are learned: a local Hugging Face model directory, or an "
        "embedded model's name (embedded: the transformers copy of the embedded teacher's GGUF). Empty: the "
        "pipeline's teacher, when its weights are here (backend embedded started by the pipeline: its "
        "transformers copy; backend vllm with a local model directory: that directory). It must share the "
        "student's tokenizer; an API teacher cannot be distilled from at the logit level.",
    )
    weights: Literal["lora", "full"] = Field(
        "lora", description="What is trained: lora, a LoRA adapter (finetune.lora_* settings); full, every weight.",
    )
    beta: float = Field(
        0.5, ge=0, le=1,
        description="Interpolation of trl's generalized Jensen-Shannon divergence: 0 is the forward KL "
        "(teacher to student, mode-covering), 1 the reverse KL (mode-seeking), 0.5 the symmetric JSD.",
    )
    lmbda: float = Field(
        0.0, ge=0, le=1,
        description="trainer gkd: the share of steps on the student's own samples (on-policy) instead of the "
        "records' teacher text. 0: never (cheapest: no generation during training); GKD's paper uses 0.5-1.",
    )
    temperature: float = Field(
        1.0, gt=0, le=10,
        description="Sampling temperature of the on-policy samples (trainer distillation also divides both "
        "models' logits by it in the loss).",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=4096, description="Longest on-policy sample, in tokens (lmbda > 0, or trainer distillation).",
    )


class FinetuneConfig(Settings):
    """Fine-tuning of the student with trl: SFT on the teacher's text (LoRA, QLoRA or full) or logit-level
    knowledge distillation from a local teacher (distill)."""

    base_model: str = Field(
        "embedded",
        description="An embedded student, built once into the cache from the GGUF its package ships ("
        + "; ".join(f"{name}: {student.title}, from {student.package}" for name, student in EMBEDDED_STUDENTS.items())
        + f"; {PRUNED_PREFIX}N, N from {PRUNED_LAYERS.start} to {PRUNED_LAYERS.stop - 1}: SmolLM2-135M-Instruct "
        "keeping N of its 30 decoder layers, those whose removal changes its answers most (a student smaller and "
        "cheaper than the embedded teacher, initialized from its weights)), or a local Hugging Face model directory.",
    )
    prompt_format: Literal["alpaca", "chat"] = Field(
        "alpaca", description="alpaca: Alpaca's instruction / input / response template (base models); chat: the "
        "tokenizer's chat template (chat models).",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get LoRA adapters: all-linear, or a list of module names.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training records (max_steps wins when set).")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: run all epochs).")
    batch_size: int = Field(4, ge=1, description="Rows per device per optimizer micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    max_length: int = Field(512, ge=16, description="Longest training sequence in tokens.")
    heldout_records: int = Field(8, ge=0, description="Filtered records kept out of training for evaluation.")
    seed: int = Field(0, description="Seed of the held-out split and of training.")
    trust_remote_code: bool = Field(False, description="Allow code shipped with the base model to run.")
    # GPU speed settings (docs/benchmarks.md has the measurements). The defaults keep the CPU
    # behaviour, and the earlier behaviour on a GPU, unchanged.
    model_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype the frozen base weights are loaded in. bfloat16 halves their memory and, "
        "with bf16 mixed precision, saves casting them every step (the LoRA weights stay float32).",
    )
    bf16: bool | None = Field(
        None, description="bf16 mixed precision (autocast). None: on when the GPU supports it, off on CPU."
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass (about a third more compute, much less "
        "memory). None: on with a GPU, off on CPU.",
    )
    attn_implementation: Literal[
        "eager", "sdpa", "sdpa_varlen", "sdpa_cudnn", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] | None = Field(
        None,
        description="Attention kernel. None: transformers' default (sdpa). sdpa_varlen: sdpa, except that "
        "packed batches go through torch's variable-length flash attention (torch.nn.attention.varlen), "
        "so packed examples attend only within themselves without a block mask. sdpa_cudnn: sdpa with "
        "cuDNN's fused attention preferred. flash_attention_2/3 need the flash-attn package.",
    )
    packing: bool = Field(
        False,
        description="Pack examples into rows of max_length tokens (trl's best-fit-decreasing packing, "
        "padding-free), so no compute goes to padding. Use it with attn_implementation sdpa_varlen "
        "(or flash_attention_2): with plain sdpa every packed row needs a block-diagonal mask.",
    )
    use_liger_kernel: bool = Field(
        False,
        description="Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU (needs liger-kernel and a "
        "GPU; the loss already runs through trl's chunked LM head, without full logits).",
    )
    torch_compile: bool = Field(
        False, description="torch.compile each decoder layer (regional compilation; needs a GPU to pay off)."
    )
    dataloader_num_workers: int = Field(
        0, ge=0, le=64,
        description="Processes that collate batches ahead of the GPU (0: in the training process). "
        "2 keeps a fast GPU from waiting on the next batch.",
    )
    save_steps: int = Field(
        50, ge=1, description="Save a checkpoint every this many optimizer steps (a killed run resumes from "
        "the last complete one; each save writes the adapter and optimizer state).",
    )
    keep_checkpoints: bool = Field(
        True,
        description="Keep checkpoints/ once training has finished, so that a rerun with more epochs or max_steps "
        "goes on from the last one. false: delete them after the trained weights are saved (a full fine-tune's "
        "checkpoint holds the whole model and twice its size in optimizer state).",
    )
    logging_steps: int = Field(
        1, ge=1,
        description="Log the loss every this many optimizer steps. Each log waits for the GPU; 10 "
        "costs less on a fast one.",
    )
    base_precision: Literal["default", "fp8"] = Field(
        "default",
        description="Precision of the frozen base layers' matmuls. default: model_dtype (with bf16 autocast where "
        "on); fp8: each LoRA-wrapped base layer's weight is quantized once to float8 (e4m3, per-row scales) and "
        "its forward and input-gradient matmuls run on FP8 tensor cores, the adapters staying in higher "
        "precision. Hopper GPUs only (refused elsewhere); method lora with model_dtype bfloat16.",
    )
    # What is trained, how the trained weights are delivered, and on how many processes.
    method: Literal["lora", "qlora", "full", "distill"] = Field(
        "lora",
        description="lora: a LoRA adapter on the frozen base. qlora: the same on a 4-bit (NF4, double-"
        "quantized) base through bitsandbytes; needs a CUDA GPU. full: every weight trained, no adapter "
        "(for small students; the whole model is saved). lora, qlora and full learn the teacher's text "
        "(trl's SFTTrainer). distill: the student learns the teacher's token distributions (trl's GKD or "
        "Distillation trainer; the distill section), with a LoRA adapter or all weights (distill.weights).",
    )
    distill: DistillSettings = Field(
        default_factory=DistillSettings,
        description="method distill only: the local teacher, the trl trainer and its divergence settings.",
    )
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] | None = Field(
        None,
        description="None: the trainer's default AdamW. The 8-bit and paged ones come from bitsandbytes and "
        "need a CUDA GPU; paged optimizer states move to host memory under pressure (QLoRA's memory spikes).",
    )
    merge: bool = Field(
        False, description="Also write the base model with the adapter merged in (finetune/merged), for serving."
    )
    num_processes: int = Field(
        1, ge=1, le=64,
        description="Training processes, started through accelerate launch when above 1: one per GPU, or CPU "
        "processes talking gloo when there is no GPU. The adapter and summary come out as with one.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With num_processes > 1: ddp keeps a whole model copy per process; fsdp shards weights, "
        "gradients and optimizer states over the processes, for students that do not fit one GPU.",
    )

    @property
    def trained_weights(self) -> Literal["lora", "qlora", "full"]:
        """What training changes: a LoRA adapter (lora, qlora) or the whole model (full)."""
        return self.distill.weights if self.method == "distill" else self.method

    @field_validator("base_model")
    @classmethod
    def _pruned_count_exists(cls, value: str) -> str:
        if value.startswith(PRUNED_PREFIX):
            try:
                embedded_student(value)
            except EmbeddedStudentError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _method_settings_agree(self) -> "FinetuneConfig":
        if self.method == "distill":
            self._distill_settings_agree()
        if self.merge and self.trained_weights == "full":
            raise ValueError("merge applies to lora/qlora (and distill with distill.weights lora): full weights "
                             "already save the whole model")
        if self.method == "qlora" and self.model_dtype != "bfloat16":
            raise ValueError("method qlora computes in bfloat16: set finetune.model_dtype: bfloat16")
        if self.base_precision == "fp8" and (self.method != "lora" or self.model_dtype != "bfloat16"):
            raise ValueError("base_precision fp8 is for method lora with model_dtype bfloat16 (the frozen base "
                             "layers run in FP8, the adapters train in higher precision)")
        if self.method == "qlora" and self.num_processes > 1 and self.distributed == "fsdp":
            raise ValueError("method qlora with distributed fsdp is not supported; use ddp")
        return self

    def _distill_settings_agree(self) -> None:
        if self.packing:
            raise ValueError("method distill trains on padded rows (trl's GKD/Distillation collators): "
                             "set finetune.packing: false")
        if self.use_liger_kernel:
            raise ValueError("method distill computes the teacher's and student's full logits: "
                             "finetune.use_liger_kernel applies to the SFT methods only")
        if self.num_processes > 1 and self.distributed == "fsdp":
            raise ValueError("method distill with distributed fsdp is not supported (the teacher is not "
                             "sharded); use ddp")


class ExportConfig(Settings):
    """Dataset files written from the filtered records when the filter stage ends."""

    formats: list[Literal["alpaca", "chat", "hf"]] = Field(
        default_factory=lambda: ["alpaca", "chat"],
        description="alpaca: Alpaca's JSON list; chat: messages JSONL (trl's conversational layout); "
        "hf: a datasets.Dataset saved to disk.",
    )
    chat_system_prompt: str | None = Field(None, description="System turn for the chat format.")
