"""What every stage shares: the request path over journals, the session around a run
directory (lock, manifest, models), and the budget already spent."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from backends.base import ChatBackend, ChatRequest
from backends.factory import prices_of
from backends.runner import RetryPolicy, UsageMeter, run_requests
from distill.config import ModelEndpoint, PipelineConfig
from distill.records import Journal
from distill.rundir import RunDir

if TYPE_CHECKING:
    from distill.models import ModelSessions

log = logging.getLogger(__name__)


class StageInputError(ValueError):
    """A stage cannot start: its input is missing or unusable."""


class RequestPath:
    """Sends shards of requests through the shared runner, journaled under the run directory."""

    def __init__(self, rundir: RunDir, meter: UsageMeter):
        self.rundir = rundir
        self.meter = meter
        self._journals: dict[str, Journal] = {}

    def journal(self, name: str) -> Journal:
        if name not in self._journals:
            self._journals[name] = Journal(self.rundir.journal(name))
        return self._journals[name]

    def send(self, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
             requests: list[ChatRequest]) -> list[dict]:
        """Send one shard; return its outcomes (reused from the journal where present)."""
        outcomes, stats = run_requests(
            backend, requests, self.journal(journal_name),
            max_in_flight=endpoint.max_in_flight,
            policy=RetryPolicy(max_retries=endpoint.max_retries),
            meter=self.meter, prices=prices_of(endpoint),
        )
        log.info("%s shard: %d sent, %d reused, %d failed, %d retries", journal_name,
                 stats.sent, stats.reused, stats.failed, stats.retries)
        return outcomes

    def close(self) -> None:
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()


SendShard = Callable[[RequestPath, ChatBackend, ModelEndpoint, str, list[ChatRequest]], list[dict]]


@contextlib.contextmanager
def run_session(config: PipelineConfig, config_path: Path, rundir: RunDir) -> Iterator[tuple[RequestPath, "ModelSessions"]]:
    """Everything a stage needs around it: the run directory held against a second process,
    the manifest written, the request path (with the budget spent so far) and the models,
    opened on first use and closed however the block ends."""
    from distill.manifest import build_manifest, write_manifest
    from distill.models import ModelSessions, endpoint_identity

    with rundir.locked():
        student = ("SmolLM2-135M-Instruct (dequantized from the embedded GGUF) + LoRA"
                   if config.finetune.base_model == "embedded" else f"{config.finetune.base_model} + LoRA")
        write_manifest(rundir.manifest, build_manifest(
            config, Path(config_path).resolve(), endpoint_identity(config.teacher),
            endpoint_identity(config.judge_endpoint), student))
        path = RequestPath(rundir, usage_so_far(rundir, config))
        try:
            with ModelSessions(config, rundir.logs) as models:
                yield path, models
        finally:
            path.close()


def send_shard(path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
               requests: list[ChatRequest]) -> list[dict]:
    """The plain (orchestrator-free) way to send a shard."""
    return path.send(backend, endpoint, journal_name, requests)


def send_shards(send: SendShard, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint,
                journal_name: str, shards: Iterable[list[ChatRequest]]) -> Iterator[list[dict]]:
    """Send shards and yield each shard's outcomes, in shard order. This default sends one
    shard after another; the flow may swap in a version that keeps several shards in flight
    (the stages consume outcomes shard by shard either way, so memory stays bounded)."""
    for shard in shards:
        if path.meter.exhausted:
            return
        yield send(path, backend, endpoint, journal_name, shard)


def usage_so_far(rundir: RunDir, config: PipelineConfig) -> UsageMeter:
    """A meter holding the tokens and money already spent by this run (read from its journals)."""
    meter = UsageMeter(config.budget.max_tokens, config.budget.max_cost_usd)
    endpoints = {"generate": config.teacher, "rate": config.judge_endpoint,
                 "teacher_answers": config.teacher, "judge": config.judge_endpoint}
    for name, endpoint in endpoints.items():
        path = rundir.journal(name)
        if path.is_file():
            with Journal(path) as journal:
                for entry in journal.entries():
                    if entry.get("ok"):
                        meter.add(entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0), prices_of(endpoint))
    return meter


def tokens_of(outcomes: list[dict]) -> dict:
    ok = [o for o in outcomes if o.get("ok")]
    return {"prompt_tokens": sum(o.get("prompt_tokens", 0) for o in ok),
            "completion_tokens": sum(o.get("completion_tokens", 0) for o in ok)}
