"""The pipeline as one Prefect flow: every stage of `pipeline.stages.STAGES`, then the report.

The flow is a thin recipe over `pipeline.session.run_stage`: a stage that asks models is a
subflow whose every shard of requests is a task run, the others are one task run each, and
stages already finished in the run directory are skipped. Prefect runs in ephemeral mode
unless PREFECT_API_URL points at a server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from core.rundir import RunDir
from flows.artifacts import publish_report_artifacts
from flows.scale_out import check_concurrency_limit, shard_runner
from pipeline.config import PipelineConfig, load_config
from pipeline.progress import stage_done_line, stage_started_line
from pipeline.report import headline, write_report
from pipeline.requests import PipelinedSender
from pipeline.session import (
    DEFAULT_CACHE,
    check_before_work,
    default_run_dir,
    is_finished,
    open_session,
    run_stage,
    stages_to_run,
)
from pipeline.stages import stage_named


@task(name="request-shard", cache_policy=NO_CACHE)
def request_shard(path, shard) -> list:
    """One shard of model requests, sent through the shared retrying runner. The shard was
    started ahead on the run's request loop (pipeline.requests.PipelinedSender); this run waits for it."""
    return path.finish(shard)


# quote(): Prefect would otherwise walk the shard's requests looking for futures to resolve.
_send_as_task = PipelinedSender(lambda path, shard: request_shard(path, quote(shard)))


# The live objects of a run (model servers, open journals, the shard sender) stay in this
# process; the subflows that may run tasks on Dask get a handle to them instead, because Prefect
# ships a subflow's parameters with every task it sends to a worker, and those must pickle.
_LIVE_SESSIONS: dict[str, dict] = {}


@contextlib.contextmanager
def live_session(contexts: dict) -> Iterator[str]:
    """A handle to the run's stage contexts for the subflows, valid inside the block: by whether
    the stage scales out (its shards go to the configured task runner) or not."""
    handle = uuid.uuid4().hex
    _LIVE_SESSIONS[handle] = contexts
    try:
        yield handle
    finally:
        _LIVE_SESSIONS.pop(handle, None)


def live_objects(handle: str) -> dict:
    """The stage contexts of a live session. A function, not the dict itself, in the subflows:
    cloudpickle ships a flow function's globals by value, and the dict holds open files."""
    return _LIVE_SESSIONS[handle]


@flow(name="stage", validate_parameters=False)
def stage_flow(stage_name: str, session: str) -> dict:
    """A stage that asks models, as a subflow: each of its shards is a task run (on the task
    runner the subflow was given)."""
    return _run(stage_name, session)


@task(name="stage", cache_policy=NO_CACHE)
def stage_task(stage_name: str, session: str) -> dict:
    """A stage that asks no model (fine-tuning, compression), as one task run."""
    return _run(stage_name, session)


def _run(stage_name: str, session: str) -> dict:
    stage = stage_named(stage_name)
    summary = run_stage(stage, live_objects(session)[stage.scales_out])
    return summary.to_json() if summary is not None else {}


def run_dir_of(config: PipelineConfig, run_dir: str | Path | None, runs_root: str | Path | None,
               flow_run_name: str | None = None, flow_run_id: str | None = None) -> Path:
    """Where a run writes: the given directory; else, with a runs root (deployments), one
    directory per flow run, so two runs of a deployment never share one; else runs/<config name>."""
    if run_dir:
        return Path(run_dir)
    if runs_root and flow_run_name and flow_run_id:
        return Path(runs_root) / config.name / f"{flow_run_name}-{str(flow_run_id)[:8]}"
    return default_run_dir(config)


def _notify(flow_run, state, outcome: str) -> None:
    """Flow-run hook: POST the run's ending to the config's webhook, if it names one."""
    from pipeline.notify import notification_payload, post_notification

    params = flow_run.parameters or {}
    try:
        config = load_config(params["config_path"], params.get("overrides"))
    except Exception as exc:  # a run that failed on its config cannot say where to notify
        logging.getLogger("pipeline.notify").warning("notify: config not loadable (%s); no notification",
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
def stages_session(config: PipelineConfig, config_path: Path, rundir: RunDir, cache_dir: Path):
    """The run session (lock, manifest, models) and where shards go: (task runner for the stages that
    scale out, or None for Prefect's default; handle of the live session for the subflows)."""
    # No progress bars: under Prefect's logger they would interleave with its lines; each stage
    # logs its progress as plain lines (shards, training steps) and one line when it is done.
    with open_session(config, config_path, rundir, cache_dir, send=_send_as_task, progress=False) as in_process:
        with shard_runner(config.orchestration, _send_as_task) as (runner, send):
            scaled_out = dataclasses.replace(in_process, send=send)
            with live_session({False: in_process, True: scaled_out}) as handle:
                yield runner, handle


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
    selected = stages_to_run(stages)
    if config.orchestration.task_runner != "default" and config.orchestration.concurrency_limit:
        # Before the endpoints' preflight, which sends a request: a missing limit stops the run first.
        check_concurrency_limit(config.orchestration.concurrency_limit)
    rundir = check_before_work(config, run_dir_of(config, run_dir, runs_root, flow_run.name, flow_run.id), selected)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    logger.info("run directory: %s; stages: %s; task runner: %s", rundir.root,
                ",".join(stage.name for stage in selected), config.orchestration.task_runner)
    with stages_session(config, Path(config_path), rundir, cache) as (runner, session):
        for position, stage in enumerate(selected, start=1):
            if is_finished(stage, config, rundir):
                logger.info("%s: already finished in %s, skipped", stage.name, rundir.root)
                continue
            if not stage.enabled(config):
                logger.info("%s: not enabled in the config, skipped", stage.name)
                continue
            logger.info(stage_started_line(position, len(selected), stage.name, stage.description))
            if stage.sends_requests:
                options = {"name": stage.name}
                if stage.scales_out and runner is not None:
                    options["task_runner"] = runner
                summary = stage_flow.with_options(**options)(stage.name, session)
            else:
                summary = stage_task.with_options(name=stage.name)(stage.name, session)
            logger.info(stage_done_line(position, len(selected), stage.name, summary))
    report = write_report(rundir)
    publish_report_artifacts(report, rundir)
    logger.info("report: %s", rundir.report_md)
    logger.info("headline: %s", headline(report))
    return report
