"""Where a run's request shards go: the flow's own process, or a Dask cluster (prefect-dask).

The stages never know: they hand shards to `send_shards`, and the sender chosen here either
sends them on this process's request loop, several in flight, each one a task run
(`PipelinedSender`), or keeps several in flight as task runs on Dask workers
(`WindowedShardSender`), whose replies this process journals.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import StageInputError
from pipeline.config import OrchestrationConfig
from pipeline.requests import SendShard, WindowedShardSender, send_detached

log = logging.getLogger(__name__)


@task(name="request-shard-detached", cache_policy=NO_CACHE)
def request_shard_detached(backend, endpoint, requests, max_in_flight, concurrency_limit=None) -> list[dict]:
    """One shard sent wherever the task runner puts it; its outcomes come back to the flow.
    With a Prefect global concurrency limit, the shard first takes a slot per request it may
    have in flight, and gives them back when it is done."""
    if concurrency_limit is None:
        return send_detached(backend, endpoint, requests, max_in_flight)
    from prefect.concurrency.sync import concurrency

    with concurrency(concurrency_limit, occupy=min(max_in_flight, len(requests)), strict=True):
        return send_detached(backend, endpoint, requests, max_in_flight)


def check_concurrency_limit(name: str) -> None:
    """Fail before any work when the named Prefect global concurrency limit does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise StageInputError(
                f"key 'orchestration.concurrency_limit': no Prefect global concurrency limit named {name!r}; "
                f"create it first: prefect gcl create {name} --limit N") from None


def windowed_sender(settings: OrchestrationConfig) -> WindowedShardSender:
    """The sender for a cluster: one shard in flight per worker unless the config says otherwise."""
    window = settings.shards_in_flight or settings.dask_workers

    def submit(backend, endpoint, requests, max_in_flight):
        return request_shard_detached.submit(backend, endpoint, requests, max_in_flight, settings.concurrency_limit)

    return WindowedShardSender(submit, window, settings.max_requests_in_flight)


def _api_url_of_this_process() -> str:
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


@contextlib.contextmanager
def dask_task_runner(settings: OrchestrationConfig) -> Iterator[object]:
    """A DaskTaskRunner on the configured cluster, or on a local one started for the block.

    Local workers are pointed at this process's Prefect API (the temporary one in ephemeral
    mode); otherwise each worker process would start a temporary API server of its own.
    Workers of a remote cluster need PREFECT_API_URL set to the same server as the flow.
    """
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        log.info("dask: using the cluster at %s", settings.dask_address)
        yield DaskTaskRunner(address=settings.dask_address)
        return
    from distributed import LocalCluster

    env = {"PREFECT_API_URL": _api_url_of_this_process(), "OMP_NUM_THREADS": "1"}
    with LocalCluster(n_workers=settings.dask_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, env=env) as cluster:
        log.info("dask: local cluster of %d worker processes at %s", settings.dask_workers,
                 cluster.scheduler_address)
        yield DaskTaskRunner(address=cluster.scheduler_address)


@contextlib.contextmanager
def shard_runner(settings: OrchestrationConfig, send_in_process: SendShard) -> Iterator[tuple[object | None, SendShard]]:
    """(task runner for the request-sending subflows or None for Prefect's default, shard sender)."""
    if settings.task_runner == "default":
        yield None, send_in_process
        return
    if settings.concurrency_limit:
        check_concurrency_limit(settings.concurrency_limit)
    with dask_task_runner(settings) as runner:
        yield runner, windowed_sender(settings)
