"""The OpenAI Batch API as a way to send a journal's requests: half the price, within 24 hours.

Requests go into JSONL files of the Batch API's format (one line per request: `custom_id`,
`method`, `url`, `body`; at most 50,000 lines and 200 MB a file), uploaded with the Files API
(`purpose: batch`) and run as batches (`completion_window: 24h`). Their status is polled; the
output and error files are read back and each line, found by its `custom_id` (the request's
key), becomes the same `RequestOutcome` and the same journal line an online request would, so
everything after the request path (parsing, filters, dedup, resume, reports) is unchanged.

Resume. A ledger (`work/<journal>_batches.jsonl`, one line per change of a batch's state)
records each batch file as it is written, its file id as soon as the upload returns, and its
batch id as soon as the batch is created: before anything is awaited. A killed run reattaches
to the batches it submitted and collects their results instead of paying for them again (a
batch whose id was lost between its creation and the ledger is found again by its input file).
A batch that expired, or whose lines partly failed for a cause that may pass (429, 5xx, expiry),
is followed by a batch of only the requests without a result, up to `max_rounds` in all. A run
interrupted while it waits (Ctrl-C, SIGTERM) cancels its batches; what they finished is collected
on the next run, which resubmits the rest.

Cost. Each result is charged to the usage meter at the endpoint's batch prices as it is
collected. The circuit breaker (backends.breaker) sees every line's outcome, so a batch whose
lines all fail for a fatal cause (the model unknown, the key refused) stops the stage.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import openai

from backends.base import BackendError, ChatReply, ChatRequest, RequestOutcome
from backends.breaker import CircuitBreaker
from backends.openai_compat import http_failure
from backends.runner import Prices, RetryPolicy, UsageMeter
from core.errors import EndpointError
from core.records import Journal, iter_jsonl

if TYPE_CHECKING:
    from backends.openai_compat import OpenAICompatibleBackend

log = logging.getLogger(__name__)

MAX_FILE_LINES = 50_000
MAX_FILE_BYTES = 200 * 1000 * 1000  # the Batch API's limit is 200 MB a file
COMPLETION_WINDOW = "24h"
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Line errors that say nothing about the request itself: it simply was not run.
NOT_RUN = ("batch_expired", "batch_cancelled")


def batch_line(custom_id: str, url: str, body: dict) -> bytes:
    """One request as a line of a batch input file."""
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body},
                       ensure_ascii=False) + "\n").encode("utf-8")


def split_lines(lines: Iterable[tuple[str, bytes]], max_lines: int = MAX_FILE_LINES,
                max_bytes: int = MAX_FILE_BYTES) -> Iterator[list[tuple[str, bytes]]]:
    """Group (key, line) pairs into files of at most `max_lines` lines and `max_bytes` bytes."""
    group: list[tuple[str, bytes]] = []
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise ValueError(f"request {key}: {len(line):,} bytes, more than a batch file may hold")
        if group and (len(group) >= max_lines or size + len(line) > max_bytes):
            yield group
            group, size = [], 0
        group.append((key, line))
        size += len(line)
    if group:
        yield group


def _line_error(error) -> tuple[int | None, str | None, str]:
    """(status, code, message) of a line's error, in the shapes servers write it: OpenAI's
    {"code", "message"}, vLLM's {"error": {...}} or a plain string."""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]
    if isinstance(error, dict):
        code = error.get("code")
        status = code if isinstance(code, int) else None
        return status, (None if isinstance(code, int) or code is None else str(code)), str(error.get("message") or "")
    return None, None, str(error or "")


def read_result(entry: dict, reply: Callable[[dict, str], ChatReply], where: str) -> tuple[str | None, ChatReply | BackendError]:
    """One line of a batch's output or error file: its custom_id, and the reply it carries or the
    BackendError it stands for (retryable when the request may succeed if sent again)."""
    key = entry.get("custom_id") if isinstance(entry, dict) else None
    if not isinstance(entry, dict):
        return None, BackendError(f"{where}: a batch output line that is not an object", retryable=True)
    response = entry.get("response") if isinstance(entry.get("response"), dict) else None
    status = response.get("status_code") if response else None
    body = response.get("body") if response else None
    if status == 200 and isinstance(body, dict):
        try:
            return key, reply(body, where)
        except BackendError as exc:
            return key, exc
    error_status, code, message = _line_error(entry.get("error") or (body if isinstance(body, dict) else None))
    status = status or error_status
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        _, code, message = _line_error(body)
    if status:
        return key, http_failure(where, int(status), code, message)
    if code in NOT_RUN:
        return key, BackendError(f"{where}: {code}", retryable=True)
    return key, BackendError(f"{where}: batch line error: {code or ''} {message}".rstrip(), retryable=False)


class BatchAPI:
    """The Files and Batches endpoints at one URL, each call retried on what may pass (a dropped
    connection, 429, 5xx) and an EndpointError naming the URL and the call on anything else."""

    def __init__(self, client: openai.OpenAI, url: str, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.url = url
        self.policy = policy
        self.sleep = sleep

    def _call(self, what: str, call: Callable[[], object]):
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except openai.APIStatusError as exc:
                status = exc.status_code
                if not (status in (408, 409, 429) or status >= 500) or attempt > self.policy.max_retries:
                    raise EndpointError(f"{self.url}: {what}: HTTP {status}"
                                        + ("" if status in (401, 403) else f" ({str(exc.message)[:300]})")) from None
                retry_after = exc.response.headers.get("retry-after")
                delay = self.policy.delay(attempt, float(retry_after) if retry_after and retry_after.isdigit() else None)
            except openai.APIConnectionError as exc:
                if attempt > self.policy.max_retries:
                    raise EndpointError(f"{self.url}: {what}: {type(exc).__name__} after {attempt} attempts") from None
                delay = self.policy.delay(attempt, None)
            log.warning("%s: %s failed (attempt %d); retrying in %.1f s", self.url, what, attempt, delay)
            self.sleep(delay)

    def upload(self, path: Path) -> str:
        def send():
            with path.open("rb") as handle:  # streamed, and opened afresh for each attempt
                return self.client.files.create(file=(path.name, handle), purpose="batch")
        return self._call(f"upload {path.name}", send).id

    def create(self, input_file_id: str, endpoint_path: str, metadata: dict) -> dict:
        return self._call("create batch", lambda: self.client.batches.create(
            input_file_id=input_file_id, endpoint=endpoint_path, completion_window=COMPLETION_WINDOW,
            metadata=metadata)).model_dump()

    def get(self, batch_id: str) -> dict:
        return self._call(f"batch {batch_id}", lambda: self.client.batches.retrieve(batch_id)).model_dump()

    def cancel(self, batch_id: str) -> None:
        self._call(f"cancel batch {batch_id}", lambda: self.client.batches.cancel(batch_id))

    def find(self, input_file_id: str) -> dict | None:
        """The batch made from an input file, if one was (newest first, the last 1,000 batches)."""
        def look():
            for count, batch in enumerate(self.client.batches.list(limit=100)):
                if batch.input_file_id == input_file_id:
                    return batch.model_dump()
                if count >= 1000:
                    return None
            return None
        return self._call("list batches", look)

    def download(self, file_id: str, target: Path) -> Path:
        def fetch():
            with self.client.files.with_streaming_response.content(file_id) as response:
                response.stream_to_file(target)
            return target
        return self._call(f"file {file_id}", fetch)


class BatchRunner:
    """A journal's requests through the Batch API (see the module's docstring). `run(requests)`
    returns when every request has a final outcome in the journal (or the rounds ran out)."""

    def __init__(self, backend: "OpenAICompatibleBackend", api: BatchAPI, journal: Journal, ledger: Journal,
                 work_dir: Path, name: str, meter: UsageMeter, prices: Prices, breaker: CircuitBreaker,
                 max_lines: int = MAX_FILE_LINES, max_bytes: int = MAX_FILE_BYTES, poll_s: float = 60.0,
                 max_rounds: int = 3, sleep: Callable[[float], None] = time.sleep):
        self.backend = backend
        self.api = api
        self.journal = journal
        self.ledger = ledger
        self.work_dir = work_dir
        self.name = name
        self.meter = meter
        self.prices = prices
        self.breaker = breaker
        self.max_lines = min(max_lines, MAX_FILE_LINES)
        self.max_bytes = min(max_bytes, MAX_FILE_BYTES)
        self.poll_s = poll_s
        self.max_rounds = max(1, max_rounds)
        self.sleep = sleep
        self._reattached = False
        self.batches_created = 0

    # The ledger: the latest state of each batch file, by its local id.
    def _note(self, entry: dict, **changes) -> dict:
        entry.update(changes)
        self.ledger.append(dict(entry))
        return entry

    def _ok(self, key: str) -> bool:
        return key in self.journal and bool(self.journal.get(key).get("ok"))

    def reattach(self) -> None:
        """Collect every batch an earlier run submitted and did not collect (once per runner)."""
        if self._reattached:
            return
        self._reattached = True
        outstanding = []
        for entry in list(self.ledger.entries()):
            if entry["state"] == "uploaded":  # killed between the upload and the ledger's batch id
                found = self.api.find(entry["input_file_id"])
                if found is None:
                    self._note(entry, state="abandoned")
                    continue
                entry = self._note(entry, state="submitted", batch_id=found["id"], submitted_at=found["created_at"])
            if entry["state"] == "prepared":
                self._note(entry, state="abandoned")  # never uploaded: nothing was paid
            elif entry["state"] in ("submitted", "cancel_requested"):
                outstanding.append(entry)
        if outstanding:
            log.info("%s: reattaching to %d batch(es) of an earlier run: %s", self.name, len(outstanding),
                     ", ".join(e["batch_id"] for e in outstanding))
            self._wait(outstanding, round_number=None, history={})

    def run(self, requests: list[ChatRequest]) -> None:
        """Have every request without a reply in the journal answered through batches."""
        self.reattach()
        pending = [r for r in requests if not self._ok(r.key)]
        history: dict[str, list[str]] = {}
        for round_number in range(1, self.max_rounds + 1):
            if not pending:
                return
            entries = self._submit(pending, round_number)
            retry = self._wait(entries, round_number, history)
            pending = [r for r in pending if r.key in retry]
            if pending and round_number < self.max_rounds:
                log.warning("%s: %d request(s) without a result (expired or failed for a cause that may pass); "
                            "resubmitting only those", self.name, len(pending))

    def _submit(self, requests: list[ChatRequest], round_number: int) -> list[dict]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        routes = {self.backend.api_path(r) for r in requests}
        if len(routes) > 1:  # one batch runs one endpoint; each stage's requests share one route
            raise ValueError(f"{self.name}: requests for several API routes in one batch: {sorted(routes)}")
        url = routes.pop()
        lines = ((r.key, batch_line(r.key, url, self.backend.body(r))) for r in requests)
        metas = {r.key: r.meta for r in requests}
        entries: list[dict] = []
        try:
            for group in split_lines(lines, self.max_lines, self.max_bytes):
                entries.append(self._submit_file(group, metas, url, round_number))
        except KeyboardInterrupt:
            self._cancel(entries)  # interrupted between two files: those already submitted are cancelled
            raise
        return entries

    def _submit_file(self, group: list[tuple[str, bytes]], metas: dict[str, dict], url: str, round_number: int) -> dict:
        """Write, upload and submit one batch file, each step in the ledger before the next is awaited."""
        local_id = f"{self.name}-b{len(self.ledger) + 1:04d}"
        path = self.work_dir / f"{local_id}.jsonl"
        path.write_bytes(b"".join(line for _, line in group))
        with (self.work_dir / f"{local_id}.meta.jsonl").open("w", encoding="utf-8") as sidecar:
            for key, _ in group:
                sidecar.write(json.dumps({"key": key, "meta": metas[key]}, ensure_ascii=False) + "\n")
        entry = self._note({"key": local_id}, state="prepared", round=round_number, requests=len(group),
                           input=path.name)
        file_id = self.api.upload(path)
        self._note(entry, state="uploaded", input_file_id=file_id)
        batch = self.api.create(file_id, url, {"distill_batch": local_id})
        self.batches_created += 1
        self._note(entry, state="submitted", batch_id=batch["id"], submitted_at=batch.get("created_at") or time.time())
        log.info("%s: batch %s submitted (%s, %d requests, round %d)", self.name, batch["id"], path.name,
                 len(group), round_number)
        return entry

    def _wait(self, entries: list[dict], round_number: int | None, history: dict[str, list[str]]) -> set[str]:
        """Poll the batches until each is done, collecting each as it ends; return the keys to
        send again. An interrupt cancels the batches still running."""
        waiting = list(entries)
        retry: set[str] = set()
        try:
            while waiting:
                progress = []
                for entry in list(waiting):
                    batch = self.api.get(entry["batch_id"])
                    if batch["status"] in TERMINAL:
                        waiting.remove(entry)
                        retry |= self._collect(entry, batch, round_number, history)
                    else:
                        counts = batch.get("request_counts") or {}
                        progress.append(f"{batch['id']} {batch['status']} {counts.get('completed', 0)}"
                                        f"+{counts.get('failed', 0)}/{counts.get('total', entry['requests'])}")
                if waiting:
                    log.info("%s: waiting for %s; next look in %g s", self.name, ", ".join(progress), self.poll_s)
                    self.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._cancel(waiting)
            raise
        return retry

    def _cancel(self, entries: list[dict]) -> None:
        for entry in entries:
            try:
                self.api.cancel(entry["batch_id"])
                self._note(entry, state="cancel_requested")
                log.warning("%s: batch %s cancelled (its finished requests are collected on the next run)",
                            self.name, entry["batch_id"])
            except (EndpointError, KeyboardInterrupt) as exc:
                log.warning("%s: batch %s could not be cancelled: %s", self.name, entry["batch_id"], exc)

    def _metas(self, entry: dict) -> dict[str, dict]:
        sidecar = self.work_dir / f"{entry['key']}.meta.jsonl"
        return {line["key"]: line["meta"] for _, line in iter_jsonl(sidecar)} if sidecar.is_file() else {}

    def _collect(self, entry: dict, batch: dict, round_number: int | None, history: dict[str, list[str]]) -> set[str]:
        """Journal a finished batch's results; return the keys that may succeed if sent again."""
        if batch["status"] == "failed":
            errors = ((batch.get("errors") or {}).get("data") or [])[:3]
            shown = "; ".join(f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
                              for e in errors) or "no reason given"
            self._note(entry, state="failed", status="failed")
            raise EndpointError(f"{self.api.url}: batch {batch['id']} ({entry['input']}) failed: {shown}")
        metas = self._metas(entry)
        final = round_number is not None and round_number >= self.max_rounds
        latency = max(0.0, float(batch.get("completed_at") or batch.get("expired_at") or batch.get("cancelled_at")
                                 or time.time()) - float(entry.get("submitted_at") or time.time()))
        seen: set[str] = set()
        retry: set[str] = set()
        stats = {"ok": 0, "failed": 0, "again": 0}
        for kind in ("output_file_id", "error_file_id"):
            file_id = batch.get(kind)
            if not file_id:
                continue
            path = self.api.download(file_id, self.work_dir / f"{entry['key']}.{kind.split('_')[0]}.jsonl")
            for _, line in iter_jsonl(path):
                key, result = read_result(line, self.backend.reply, self.api.url)
                if key not in metas or key in seen:
                    continue
                seen.add(key)
                attempts = len(history.get(key, ())) + 1
                if isinstance(result, ChatReply):
                    outcome = RequestOutcome.replied(key, metas[key], result, attempts, latency, history.get(key, ()))
                    self.meter.add(result.prompt_tokens, result.completion_tokens, self.prices)
                    self.breaker.success()
                    stats["ok"] += 1
                else:
                    self.breaker.failure(result)
                    if result.retryable and not final:
                        history.setdefault(key, []).append(result.kind)
                        retry.add(key)
                        stats["again"] += 1
                        continue
                    outcome = RequestOutcome.failed(key, metas[key], str(result), attempts, latency,
                                                    [*history.get(key, ()), result.kind])
                    stats["failed"] += 1
                self.journal.append(outcome.to_journal())
        missing = [key for key in metas if key not in seen]
        for key in missing:  # in neither file (a batch cancelled or expired before it ran them)
            if final:
                self.journal.append(RequestOutcome.failed(
                    key, metas[key], f"{self.api.url}: no result in batch {batch['id']} ({batch['status']})",
                    len(history.get(key, ())) + 1, latency, [*history.get(key, ()), f"batch {batch['status']}"]).to_journal())
            else:
                history.setdefault(key, []).append(f"batch {batch['status']}")
                retry.add(key)
        self._note(entry, state="collected", status=batch["status"])
        log.info("%s: batch %s %s: %d answered, %d failed, %d to send again", self.name, batch["id"], batch["status"],
                 stats["ok"], stats["failed"], stats["again"] + (0 if final else len(missing)))
        self.breaker.check()
        return retry
