"""The pipeline as one Prefect flow: generate -> filter -> finetune -> evaluate -> report.

The flow is a thin recipe over `distill.stages`: every shard of model requests is a task
run, every stage a subflow, and stages already finished in the run directory are skipped.
Prefect runs in ephemeral mode unless PREFECT_API_URL points at a server.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from distill import stages
from distill.config import PipelineConfig, check_base_model, config_as_dict, load_config
from distill.report import headline, write_report
from distill.rundir import RunDir

DEFAULT_CACHE = Path.home() / ".cache" / "distill"


@task(name="request-shard", cache_policy=NO_CACHE)
def request_shard(path, backend, endpoint, journal_name, requests) -> list[dict]:
    """One shard of model requests, sent through the shared retrying runner."""
    return path.send(backend, endpoint, journal_name, requests)


def _send_as_task(path, backend, endpoint, journal_name, requests) -> list[dict]:
    return request_shard(path, backend, endpoint, journal_name, requests)


@flow(name="generate", validate_parameters=False)
def generate_flow(config, rundir, models, path) -> dict:
    return stages.generate_stage(config, rundir, models.teacher(), path, send=_send_as_task)


@flow(name="filter", validate_parameters=False)
def filter_flow(config, rundir, models, path) -> dict:
    return stages.filter_stage(config, rundir, models.judge(), path, send=_send_as_task)


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_task(config, rundir, cache_dir) -> dict:
    return stages.finetune_stage(config, rundir, cache_dir)


@flow(name="evaluate", validate_parameters=False)
def evaluate_flow(config, rundir, models, path, cache_dir) -> dict:
    return stages.evaluate_stage(config, rundir, models.teacher(), models.judge(), path, cache_dir,
                                 send=_send_as_task)


def check_same_config(rundir: RunDir, config: PipelineConfig) -> None:
    """Refuse to mix two configs' results in one run directory."""
    if not rundir.manifest.is_file():
        return
    previous = json.loads(rundir.manifest.read_text(encoding="utf-8")).get("config_non_default")
    # Settings left at their defaults are not compared, so a newer version that adds a
    # setting can still resume a run made before it.
    if previous != config_as_dict(config, non_default_only=True):
        raise stages.StageInputError(
            f"{rundir.root} holds a run of a different config (see its manifest.json); "
            "use another --run-dir, or the same config to resume"
        )


def check_before_work(config: PipelineConfig, run_dir: str | Path | None) -> RunDir:
    """Everything that can be checked before any work: the run directory and the student's base."""
    rundir = RunDir(run_dir or Path("runs") / config.name)
    check_same_config(rundir, config)
    if rundir.stage_summary("finetune") is None:
        check_base_model(config)
    return rundir


@flow(name="distill-pipeline", validate_parameters=False)
def distill_pipeline(config_path: str, run_dir: str | None = None, overrides: list[str] | None = None,
                     cache_dir: str | None = None) -> dict:
    """Run every stage not yet finished in the run directory, then write the report."""
    logger = get_run_logger()
    config = load_config(config_path, overrides)
    rundir = check_before_work(config, run_dir)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    with stages.run_session(config, Path(config_path), rundir) as (path, models):
        for name in ("generate", "filter", "finetune", "evaluate"):
            if rundir.stage_summary(name) is not None:
                logger.info("%s: already finished in %s, skipped", name, rundir.root)
                continue
            logger.info("%s: starting", name)
            if name == "generate":
                summary = generate_flow(config, rundir, models, path)
            elif name == "filter":
                summary = filter_flow(config, rundir, models, path)
            elif name == "finetune":
                summary = finetune_task(config, rundir, cache)
            else:
                summary = evaluate_flow(config, rundir, models, path, cache)
            logger.info("%s: done %s", name, json.dumps(summary, default=str)[:400])
    report = write_report(rundir)
    create_markdown_artifact(key="distill-report", markdown=rundir.report_md.read_text(encoding="utf-8"),
                             description=f"Report of {rundir.root}")
    logger.info("report: %s", rundir.report_md)
    logger.info("headline: %s", headline(report))
    return report
