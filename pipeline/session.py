"""Running stages in a run directory: the session around them (lock, manifest, models, the
request path), the checks made before any work, and the one function that runs a stage,
skips a finished one and records its summary. The CLI and the Prefect flow both use it."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

from backends.registry import endpoint_identity
from core.errors import StageInputError
from core.rundir import RunDir
from pipeline.config import PipelineConfig, config_as_dict
from pipeline.stage import DEFAULT_CACHE, Stage, StageContext, StageSummary
import pipeline.stages as pipeline_stages

log = logging.getLogger(__name__)

# Settings of where and how a run is carried out, not of what it produces: a run may resume
# on another runner, or with another webhook, without counting as a different config.
# Nor do the evaluation settings (sets, judges, prompts, contestants): they change no record
# and no model, so a finished run can be evaluated again (pipeline.stages.evaluate keeps each
# evaluation in a folder of its own).
NOT_COMPARED_ON_RESUME = ("orchestration", "notify", "compress", "evaluate", "estimate")


def check_same_config(rundir: RunDir, config: PipelineConfig) -> None:
    """Refuse to mix two configs' results in one run directory."""
    if not rundir.manifest.is_file():
        return
    previous = json.loads(rundir.manifest.read_text(encoding="utf-8")).get("config_non_default") or {}
    # Settings left at their defaults are not compared, so a newer version that adds a
    # setting can still resume a run made before it.
    current = config_as_dict(config, non_default_only=True)
    for key in NOT_COMPARED_ON_RESUME:
        previous.pop(key, None)
        current.pop(key, None)
    if previous != current:
        raise StageInputError(
            f"{rundir.root} holds a run of a different config (see its manifest.json); "
            "use another --run-dir, or the same config to resume"
        )


def stages_to_run(names: list[str] | None) -> tuple[Stage, ...]:
    """The stages a run asks for (all by default), in pipeline order; unknown names are refused."""
    stages = pipeline_stages.STAGES
    if not names:
        return stages
    known = pipeline_stages.stage_names()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise StageInputError(f"parameter 'stages': unknown stage(s) {unknown}; known: {list(known)}")
    return tuple(stage for stage in stages if stage.name in names)


def default_run_dir(config: PipelineConfig) -> Path:
    """Where a run writes when no directory is given: runs/<config name>."""
    return Path("runs") / config.name


def stage_endpoints(stage: Stage, config: PipelineConfig) -> dict:
    """The model endpoints a stage sends requests to, by their config key (none for a stage
    without an `endpoints` method)."""
    endpoints = getattr(stage, "endpoints", None)
    return endpoints(config) if endpoints is not None else {}


def check_endpoints(stage: Stage, config: PipelineConfig, network: bool = True) -> None:
    """The stage's endpoints before it spends anything: their settings (an API key variable that is
    not set, a paid endpoint without a price under a money budget: ConfigError), and, with
    `network`, each one's preflight (backends.preflight: reachable, key accepted, model served, one
    one-token request answered; EndpointError or ConfigError naming the endpoint)."""
    from backends.preflight import check_settings, preflight

    endpoints = stage_endpoints(stage, config)
    for name, endpoint in endpoints.items():
        check_settings(endpoint, name, config.budget.max_cost_usd)
    if network:
        for name, endpoint in endpoints.items():
            preflight(endpoint, name)


def check_before_work(config: PipelineConfig, run_dir: str | Path | None,
                      stages: tuple[Stage, ...] | None = None) -> RunDir:
    """Everything that can be checked before any work: the run directory, each stage still to
    run's own checks (the student's base model for finetune, say), and the endpoints it will send
    to (their settings, and a preflight of each one that runs elsewhere)."""
    rundir = RunDir(run_dir or default_run_dir(config))
    check_same_config(rundir, config)
    for stage in stages if stages is not None else pipeline_stages.STAGES:
        if not is_finished(stage, config, rundir) and stage.enabled(config):
            stage.preflight(config)
            check_endpoints(stage, config)
    return rundir


def student_identity(config: PipelineConfig) -> str:
    """The student as the manifest names it."""
    from student.embedded import EMBEDDED_STUDENTS

    student = EMBEDDED_STUDENTS.get(config.finetune.base_model)
    return f"{student.title if student else config.finetune.base_model} + LoRA"


@contextlib.contextmanager
def open_session(config: PipelineConfig, config_path: Path, rundir: RunDir, cache_dir: Path | None = None,
                 send=None, progress: bool = True, models=None) -> Iterator[StageContext]:
    """Everything a stage needs around it: the run directory held against a second process,
    the manifest written, the request path (with the budget spent so far) and the models,
    opened on first use and closed however the block ends. `send` is the shard sender (the
    plain in-process one by default); `models`, an open ModelSessions of the same teacher and
    judge to share (another session's, left open), else the session's own."""
    from pipeline.manifest import build_manifest, write_manifest
    from pipeline.models import ModelSessions
    from pipeline.requests import RequestPath, send_shard, usage_so_far

    with rundir.locked():
        write_manifest(rundir.manifest, build_manifest(
            config, Path(config_path).resolve(), endpoint_identity(config.teacher),
            endpoint_identity(config.judge_endpoint), student_identity(config)))
        from pipeline.estimate import write_run_estimate

        write_run_estimate(config, rundir)  # once per run directory: the report compares it with what was spent
        path = RequestPath(rundir, usage_so_far(rundir, config))
        try:
            with contextlib.ExitStack() as owned:
                if models is None:
                    models = owned.enter_context(ModelSessions(config, rundir.logs))
                yield StageContext(config=config, rundir=rundir, cache_dir=Path(cache_dir or DEFAULT_CACHE),
                                   models=models, path=path, send=send or send_shard, progress=progress)
        finally:
            path.close()


def finished_summary(rundir: RunDir, stage: Stage) -> StageSummary | None:
    """The summary a finished stage wrote, typed; None when it has not finished."""
    data = rundir.stage_summary(stage.name)
    return None if data is None else stage.summary_type.from_json(data)


def summary_file(stage: Stage, config: PipelineConfig, rundir: RunDir) -> Path:
    """Where a stage's summary for this config goes: stages/<name>.json, unless the stage keeps
    one per setting (`summary_file(config, rundir)`: an evaluation on other sets goes to its own folder)."""
    where = getattr(stage, "summary_file", None)
    return where(config, rundir) if where is not None else rundir.stages / f"{stage.name}.json"


def is_finished(stage: Stage, config: PipelineConfig, rundir: RunDir) -> bool:
    """Whether the stage has finished in the run directory for this config."""
    return summary_file(stage, config, rundir).is_file()


def run_stage(stage: Stage, context: StageContext, skip_finished: bool = True) -> StageSummary | None:
    """Run one stage: skipped when finished (with `skip_finished`) or not enabled by the config;
    otherwise run, its summary recorded (stages/<name>.json, see `summary_file`) and rejected.jsonl
    rebuilt. Returns the summary (the earlier one for a finished stage), or None when not enabled."""
    from core.records import write_json

    rundir = context.rundir
    target = summary_file(stage, context.config, rundir)
    if skip_finished and target.is_file():
        log.info("%s: already finished in %s, skipped", stage.name, rundir.root)
        return stage.summary_type.from_json(json.loads(target.read_text(encoding="utf-8")))
    if not stage.enabled(context.config):
        log.info("%s: not enabled in the config, skipped", stage.name)
        return None
    # Fail fast: the stage's own checks of its input, then its endpoints (a check passed a moment
    # ago, by check_before_work, is not repeated). A spent budget sends nothing: no network check.
    stage.preflight(context.config)
    check_endpoints(stage, context.config, network=stage.sends_requests and not context.path.meter.exhausted)
    summary = stage.run(context)
    write_json(target, summary.to_json())
    rundir.merge_rejections(pipeline_stages.stage_names())
    return summary


def run_named_stage(name: str, context: StageContext, skip_finished: bool = True) -> StageSummary | None:
    """`run_stage` for the stage called `name`."""
    return run_stage(pipeline_stages.stage_named(name), context, skip_finished)


def run_stage_in(rundir: RunDir, config: PipelineConfig, name: str, config_path: Path | None = None,
                 cache_dir: Path | None = None, send=None, skip_finished: bool = True,
                 progress: bool = True) -> StageSummary | None:
    """Run the stage `name` of `config` in `rundir` from Python, in a session of its own (what
    `distill NAME` does, except that a finished stage is skipped unless `skip_finished` is off)."""
    with open_session(config, config_path or Path(f"{config.name}.yaml"), rundir, cache_dir, send=send,
                      progress=progress) as context:
        return run_named_stage(name, context, skip_finished)
