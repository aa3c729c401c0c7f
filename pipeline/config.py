"""The pipeline's configuration: one validated YAML file per use case.

`PipelineConfig` composes the settings each component owns (`selfinstruct.config`,
`filters.config`, `finetune.config`, `compress.config`, `eval.config`, `backends.config`)
with the pipeline's own (orchestration, notifications). Every field is typed and
documented; unknown keys and wrong types fail at load time with the file and the dotted key
named, before any work starts. Relative paths in a config are resolved against the
directory of the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from backends.config import BudgetConfig, ModelEndpoint
from compress.config import CompressConfig
from core.errors import ConfigError
from core.settings import Settings
from eval.config import EvaluateConfig
from eval.sets import is_named_set
from filters.config import FilterConfig
from finetune.config import ExportConfig, FinetuneConfig
from selfinstruct.config import GenerateConfig
from student.embedded import EMBEDDED_STUDENTS, embedded_student, is_embedded_student


class OrchestrationConfig(Settings):
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


class NotifyConfig(Settings):
    """A webhook told when a run finishes or fails (a small JSON POST)."""

    webhook_url_env: str | None = Field(
        None, description="Name of the environment variable holding the webhook URL (never the URL itself: "
        "it often carries a token). Empty: no notification.",
    )
    on: list[Literal["completed", "failed"]] = Field(
        default_factory=lambda: ["completed", "failed"], description="Which run endings notify.",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of the POST.")


class EstimateConfig(Settings):
    """What `distill estimate` (and the estimate.json of every run) assumes where no pilot measured it."""

    reply_fraction: float = Field(
        0.6, gt=0, le=1, description="Expected reply length as a share of each request's max_tokens (generation, "
        "ratings, answers, verdicts), where no pilot measured it.")
    records_per_request: float = Field(
        4.0, gt=0, le=100, description="Records kept per generation request (the yield, after parsing, Alpaca's "
        "filters and ROUGE-L dedup), where no pilot measured it. A strong teacher asked for 20 tasks keeps a few; "
        "the embedded 135M teacher keeps 0.15-0.5 (docs/scale.md).")
    tokens_per_s: float = Field(
        50.0, gt=0, description="Reply tokens per second of one request (its latency is 0.5 s plus its reply at "
        "this rate), where no pilot measured latency.")


class PipelineConfig(Settings):
    """One use case of the pipeline: teacher, seeds and every stage's settings."""

    name: str = Field(description="The use case's name: runs/<name> is its default run directory.")
    seed_tasks: Path = Field(description="Seed tasks JSONL (Alpaca's seed_tasks.jsonl format).")
    teacher: ModelEndpoint = Field(default_factory=ModelEndpoint, description="The teacher that generates the data (and judges, unless judge is set).")
    judge: ModelEndpoint | None = Field(None, description="Rating and pairwise judge; default: the teacher.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Generation settings (selfinstruct.config).")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Filter settings (filters.config).")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Fine-tuning settings (finetune.config).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation settings (eval.config).")
    compress: CompressConfig = Field(default_factory=CompressConfig, description="Compressed variants of the student (compress.config).")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Dataset files written from the kept records (finetune.config).")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Token and money limits across all stages (backends.config).")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig, description="Where request shards run (the flow's process or Dask).")
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="A webhook told when a run finishes or fails.")
    estimate: EstimateConfig = Field(default_factory=EstimateConfig, description="Assumptions of the cost estimate (distill estimate, estimate.json).")

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
    if not is_embedded_student(base) and not Path(base).is_absolute():
        # Resolved here, checked by check_base_model before fine-tuning, so that a preset
        # whose student is not downloaded yet can still run its generation stages.
        base_path = (path.parent / base).resolve()
        config = config.model_copy(update={"finetune": config.finetune.model_copy(update={"base_model": str(base_path)})})
    teacher_model = config.finetune.distill.teacher_model
    if teacher_model and not is_embedded_student(teacher_model) and not Path(teacher_model).is_absolute():
        # Resolved like base_model; the finetune stage's checks say when it is not there.
        distill = config.finetune.distill.model_copy(update={"teacher_model": str((path.parent / teacher_model).resolve())})
        config = config.model_copy(update={"finetune": config.finetune.model_copy(update={"distill": distill})})
    sets = _resolve_sets(config.evaluate.sets, path, "evaluate.sets")
    config = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"sets": sets})})
    against = config.filter.decontaminate.against
    if against is not None:
        decontaminate = config.filter.decontaminate.model_copy(
            update={"against": _resolve_sets(against, path, "filter.decontaminate.against")})
        config = config.model_copy(update={"filter": config.filter.model_copy(update={"decontaminate": decontaminate})})
    return config.model_copy(update={"seed_tasks": seeds})


def _resolve_sets(names: list[str], config_path: Path, key: str) -> list[str]:
    """Evaluation set names as given, and files as absolute paths: relative to the config file,
    else to the working directory (a file named on the command line); a name that is neither
    a known set nor a file is refused."""
    resolved = []
    for name in names:
        if not is_named_set(name):
            candidates = [Path(name)] if Path(name).is_absolute() else [config_path.parent / name, Path(name)]
            found = next((candidate.resolve() for candidate in candidates if candidate.is_file()), None)
            if found is None:
                raise ConfigError(f"{config_path}: key '{key}': not a known set and no such file: "
                                  f"{candidates[0].resolve()}")
            name = str(found)
        resolved.append(name)
    return resolved


def check_base_model(config: PipelineConfig) -> None:
    """Fail before any work when the student's base model directory does not exist."""
    base = config.finetune.base_model
    if is_embedded_student(base):
        if config.finetune.prompt_format == "chat" and not embedded_student(base).chat_template:
            raise ConfigError(f"key 'finetune.prompt_format': {base} ({embedded_student(base).title}) has no chat "
                              "template; use prompt_format: alpaca")
    elif not Path(base).is_dir():
        raise ConfigError(f"key 'finetune.base_model': directory not found: {base} (or one of the embedded "
                          f"students: {', '.join(EMBEDDED_STUDENTS)})")


def config_as_dict(config: PipelineConfig, non_default_only: bool = False) -> dict:
    """The config as plain JSON-able data, for the manifest (optionally only what differs from defaults)."""
    return config.model_dump(mode="json", exclude_defaults=non_default_only)

