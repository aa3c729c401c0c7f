"""`distill serve`: the pipeline flow as a Prefect deployment, run on a schedule or on demand.

The deployment's parameters are the flow's: the config file, `--set` style overrides, the
stages to run and a runs root under which every flow run gets a directory of its own. A run
started from the UI or `prefect deployment run` may pass other overrides (sizes, teacher
endpoints) without anyone editing the config file; they are validated like `--set`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flows.pipeline import distill_pipeline
from pipeline.config import load_config
from pipeline.session import stages_to_run

log = logging.getLogger(__name__)


def deployment_parameters(config_path: Path, overrides: list[str], runs_root: Path,
                          stage_names: list[str] | None, cache_dir: Path | None) -> dict:
    """The flow parameters a deployment starts its runs with (absolute paths: runs start elsewhere)."""
    return {
        "config_path": str(config_path.resolve()),
        "overrides": list(overrides),
        "runs_root": str(runs_root.resolve()),
        "stages": stage_names,
        "cache_dir": str(cache_dir.resolve()) if cache_dir else None,
    }


def serve_pipeline(config_path: Path, overrides: list[str], name: str | None, cron: str | None,
                   interval: float | None, runs_root: Path, stage_names: list[str] | None,
                   cache_dir: Path | None, limit: int | None = None) -> None:
    """Check the config, then serve the flow as a deployment until interrupted (Ctrl-C)."""
    config = load_config(config_path, overrides)  # bad input stops here, before Prefect starts
    stages_to_run(stage_names)
    parameters = deployment_parameters(config_path, overrides, runs_root, stage_names, cache_dir)
    schedule = f"cron {cron!r}" if cron else f"every {interval:g} s" if interval else "no schedule (runs on demand)"
    log.info("serving deployment distill-pipeline/%s: %s; runs under %s", name or config.name, schedule,
             parameters["runs_root"])
    distill_pipeline.serve(name=name or config.name, cron=cron, interval=interval, parameters=parameters,
                           description=f"distill pipeline on {config_path.name}", tags=["distill", config.name],
                           limit=limit)
