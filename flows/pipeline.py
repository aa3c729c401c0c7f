"""The pipeline as one Prefect flow: generate -> filter -> finetune -> evaluate -> report.

The flow is a thin recipe over `distill.stages`: every shard of model requests is a task
run, every stage a subflow, and stages already finished in the run directory are skipped.
Prefect runs in ephemeral mode unless PREFECT_API_URL points at a server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from distill import stages
from distill.config import PipelineConfig, check_base_model, config_as_dict, load_config
from distill.report import headline, write_report
from distill.rundir import STAGES, RunDir
from flows.artifacts import publish_report_artifacts
from flows.scale_out import shard_runner

DEFAULT_CACHE = Path.home() / ".cache" / "distill"
# Settings of where and how a run is carried out, not of what it produces: a run may resume
# on another runner, or with another webhook, without counting as a different config.
NOT_COMPARED_ON_RESUME = ("orchestration", "notify", "compress")


@task(name="request-shard", cache_policy=NO_CACHE)
def request_shard(path, shard) -> list[dict]:
    """One shard of model requests, sent through the shared retrying runner. The shard was
    started ahead on the run's request loop (stages.PipelinedSender); this run waits for it."""
    return path.finish(shard)


# quote(): Prefect would otherwise walk the shard's requests looking for futures to resolve.
_send_as_task = stages.PipelinedSender(lambda path, shard: request_shard(path, quote(shard)))


# The live objects of a run (model servers, open journals, the shard sender) stay in this
# process; the subflows that may run tasks on Dask get a handle to them instead, because Prefect
# ships a subflow's parameters with every task it sends to a worker, and those must pickle.
_LIVE_SESSIONS: dict[str, tuple] = {}


@contextlib.contextmanager
def live_session(path, models, send) -> Iterator[str]:
    """A handle to (path, models, send) for the subflows, valid inside the block."""
    handle = uuid.uuid4().hex
    _LIVE_SESSIONS[handle] = (path, models, send)
    try:
        yield handle
    finally:
        _LIVE_SESSIONS.pop(handle, None)


def live_objects(handle: str) -> tuple:
    """(path, models, send) of a live session. A function, not the dict itself, in the subflows:
    cloudpickle ships a flow function's globals by value, and the dict holds open files."""
    return _LIVE_SESSIONS[handle]


@flow(name="generate", validate_parameters=False)
def generate_flow(config, rundir, session: str) -> dict:
    path, models, send = live_objects(session)
    return stages.generate_stage(config, rundir, models.teacher(), path, send=send)


@flow(name="filter", validate_parameters=False)
def filter_flow(config, rundir, session: str, cache_dir) -> dict:
    path, models, send = live_objects(session)
    return stages.filter_stage(config, rundir, models.judge(), path, send=send, cache_dir=cache_dir)


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_task(config, rundir, cache_dir) -> dict:
    return stages.finetune_stage(config, rundir, cache_dir)


@task(name="compress", cache_policy=NO_CACHE)
def compress_task(config, rundir) -> dict:
    return stages.compress_stage(config, rundir)


@flow(name="evaluate", validate_parameters=False)
def evaluate_flow(config, rundir, models, path, cache_dir) -> dict:
    return stages.evaluate_stage(config, rundir, models.teacher(), models.judge(), path, cache_dir,
                                 send=_send_as_task)


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
        raise stages.StageInputError(
            f"{rundir.root} holds a run of a different config (see its manifest.json); "
            "use another --run-dir, or the same config to resume"
        )


def stages_to_run(names: list[str] | None) -> tuple[str, ...]:
    """The stages a run asks for (all by default), in pipeline order; unknown names are refused."""
    if not names:
        return STAGES
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise stages.StageInputError(f"parameter 'stages': unknown stage(s) {unknown}; known: {list(STAGES)}")
    return tuple(name for name in STAGES if name in names)


def run_dir_of(config: PipelineConfig, run_dir: str | Path | None, runs_root: str | Path | None,
               flow_run_name: str | None = None, flow_run_id: str | None = None) -> Path:
    """Where a run writes: the given directory; else, with a runs root (deployments), one
    directory per flow run, so two runs of a deployment never share one; else runs/<config name>."""
    if run_dir:
        return Path(run_dir)
    if runs_root and flow_run_name and flow_run_id:
        return Path(runs_root) / config.name / f"{flow_run_name}-{str(flow_run_id)[:8]}"
    return Path("runs") / config.name


def check_before_work(config: PipelineConfig, run_dir: str | Path | None,
                      stage_names: tuple[str, ...] = STAGES) -> RunDir:
    """Everything that can be checked before any work: the run directory and the student's base."""
    rundir = RunDir(run_dir or Path("runs") / config.name)
    check_same_config(rundir, config)
    if "finetune" in stage_names and rundir.stage_summary("finetune") is None:
        check_base_model(config)
    return rundir


def _notify(flow_run, state, outcome: str) -> None:
    """Flow-run hook: POST the run's ending to the config's webhook, if it names one."""
    from distill.notify import notification_payload, post_notification

    params = flow_run.parameters or {}
    try:
        config = load_config(params["config_path"], params.get("overrides"))
    except Exception as exc:  # a run that failed on its config cannot say where to notify
        logging.getLogger("distill.notify").warning("notify: config not loadable (%s); no notification",
                                                    type(exc).__name__)
        return
    run_dir = run_dir_of(config, params.get("run_dir"), params.get("runs_root"), flow_run.name, flow_run.id)
    report = RunDir(run_dir).report_json
    summary = headline(json.loads(report.read_text(encoding="utf-8"))) if outcome == "completed" and report.is_file() else None
    post_notification(config.notify, notification_payload(
        outcome, flow_run.name, str(flow_run.id), config.name, str(RunDir(run_dir).root), state.message, summary))


def notify_completed(flow, flow_run, state) -> None:
    _notify(flow_run, state, "completed")


def notify_failed(flow, flow_run, state) -> None:
    _notify(flow_run, state, "failed")


@contextlib.contextmanager
def stages_session(config: PipelineConfig, config_path: Path, rundir: RunDir):
    """The run session (lock, manifest, models) and where shards go: (path, models, task runner,
    handle of the live session for the subflows)."""
    with stages.run_session(config, config_path, rundir) as (path, models):
        with shard_runner(config.orchestration, _send_as_task) as (runner, send):
            with live_session(path, models, send) as handle:
                yield path, models, runner, handle


def on_runner(subflow, runner):
    """The subflow on the given task runner (None: as declared)."""
    return subflow if runner is None else subflow.with_options(task_runner=runner)


@flow(name="distill-pipeline", validate_parameters=False,
      on_completion=[notify_completed], on_failure=[notify_failed], on_crashed=[notify_failed])
def distill_pipeline(config_path: str, run_dir: str | None = None, overrides: list[str] | None = None,
                     cache_dir: str | None = None, runs_root: str | None = None,
                     stages: list[str] | None = None) -> dict:
    """Run every stage asked for (all by default) not yet finished in the run directory, then
    write the report. `overrides` (["generate.max_requests=40", ...]) are validated like --set;
    with `runs_root` (deployments) each flow run gets a run directory of its own under it."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    config = load_config(config_path, overrides)
    stage_names = stages_to_run(stages)
    rundir = check_before_work(config, run_dir_of(config, run_dir, runs_root, flow_run.name, flow_run.id),
                               stage_names)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    logger.info("run directory: %s; stages: %s; task runner: %s", rundir.root, ",".join(stage_names),
                config.orchestration.task_runner)
    with stages_session(config, Path(config_path), rundir) as (path, models, runner, session):
        for name in stage_names:
            if rundir.stage_summary(name) is not None:
                logger.info("%s: already finished in %s, skipped", name, rundir.root)
                continue
            if name == "compress" and not config.compress.enabled:
                logger.info("compress: not enabled in the config, skipped")
                continue
            logger.info("%s: starting", name)
            if name == "generate":
                summary = on_runner(generate_flow, runner)(config, rundir, session)
            elif name == "filter":
                summary = on_runner(filter_flow, runner)(config, rundir, session, cache)
            elif name == "finetune":
                summary = finetune_task(config, rundir, cache)
            elif name == "compress":
                summary = compress_task(config, rundir)
            else:
                summary = evaluate_flow(config, rundir, models, path, cache)
            logger.info("%s: done %s", name, json.dumps(summary, default=str)[:400])
    report = write_report(rundir)
    publish_report_artifacts(report, rundir)
    logger.info("report: %s", rundir.report_md)
    logger.info("headline: %s", headline(report))
    return report
