"""A stand-in for OpenAI's Batch service, in front of a real model server.

OpenAI's Batch API cannot be reached from here (no network, no account), and no open-source
server implements its HTTP lifecycle (vLLM's run_batch reads and writes the file format only; its
test is tests/backends/test_batch_format.py). So this small server implements the documented
endpoints and states, and forwards every line to a real OpenAI-compatible server (the tests use
the embedded teacher, llama.cpp serving SmolLM2): the replies in the output files are real.

Endpoints (https://platform.openai.com/docs/api-reference/batch and .../files):
  POST /v1/files (multipart: file, purpose)        GET /v1/files/{id}/content
  POST /v1/batches                                 GET /v1/batches/{id}      GET /v1/batches
  POST /v1/batches/{id}/cancel
  GET /v1/models and POST /v1/chat/completions are passed to the upstream server (for the
  pipeline's preflight).

A batch goes validating -> in_progress -> finalizing -> completed, or -> expired (`expire_after`
lines run, the rest "batch_expired" in the error file), or cancelling -> cancelled, or -> failed
(with `served`, a line naming another model fails the whole batch's validation); a line whose
custom_id is in `fail_once` is answered HTTP 500 the first time it is seen (a partial failure);
while `hold` is set, batches stay in_progress (to kill or cancel a run mid-batch). Every line
forwarded, batch created and cancel received is recorded. OpenAI's json_schema response format
is forwarded in llama.cpp's shape (a schema inside json_object), as OpenAI's service would honour it.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class BatchStandin:
    def __init__(self, upstream: str, expire_after: int | None = None, fail_once: set[str] | None = None,
                 port: int = 0, served: set[str] | None = None):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.served = served  # with it, a batch naming another model fails validation, as OpenAI's does
        self.expire_after = expire_after
        self.fail_once = set(fail_once or ())
        self.hold = threading.Event()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.forwarded: list[str] = []  # custom_ids, in the order their lines were run
        self.created: list[str] = []
        self.cancels: list[str] = []
        self.lines_per_batch: dict[str, list[str]] = {}
        self._ids = itertools.count(1)
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._stop = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload, raw: bool = False) -> None:
                data = payload if raw else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                path = parts.path
                if path == "/v1/models":
                    return self._send(*owner.forward("GET", "/v1/models", None))
                if path.startswith("/v1/files/") and path.endswith("/content"):
                    file_id = path.split("/")[3]
                    if file_id not in owner.files:
                        return self._send(404, {"error": {"message": f"no file {file_id}", "code": "not_found"}})
                    return self._send(200, owner.files[file_id], raw=True)
                if path == "/v1/batches":
                    limit = int(parse_qs(parts.query).get("limit", ["20"])[0])
                    with owner._lock:
                        data = json.loads(json.dumps(sorted(owner.batches.values(), key=lambda b: b["created_at"],
                                                            reverse=True)[:limit]))
                    return self._send(200, {"object": "list", "data": data, "has_more": False,
                                            "first_id": data[0]["id"] if data else None,
                                            "last_id": data[-1]["id"] if data else None})
                if path.startswith("/v1/batches/"):
                    with owner._lock:
                        batch = owner.batches.get(path.split("/")[3])
                        batch = json.loads(json.dumps(batch)) if batch else None
                    return self._send(200, batch) if batch else self._send(404, {"error": {"message": "no batch"}})
                self._send(404, {"error": {"message": f"no route {path}"}})

            def do_POST(self):  # noqa: N802
                path = urlsplit(self.path).path
                body = self._body()
                if path == "/v1/chat/completions":
                    return self._send(*owner.forward("POST", path, json.loads(body)))
                if path == "/v1/files":
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                    fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                              for part in message.iter_parts()}
                    if fields.get("purpose") != b"batch" or fields.get("file") is None:
                        return self._send(400, {"error": {"message": "expected a file with purpose batch"}})
                    file_id = owner.store(fields["file"])
                    return self._send(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]),
                                            "created_at": int(time.time()), "filename": "input.jsonl",
                                            "purpose": "batch"})
                if path == "/v1/batches":
                    request = json.loads(body)
                    if request.get("input_file_id") not in owner.files:
                        return self._send(400, {"error": {"message": "unknown input_file_id"}})
                    return self._send(200, owner.create(request))
                if path.startswith("/v1/batches/") and path.endswith("/cancel"):
                    batch_id = path.split("/")[3]
                    with owner._lock:
                        batch = owner.batches.get(batch_id)
                        if batch is None:
                            return self._send(404, {"error": {"message": "no batch"}})
                        owner.cancels.append(batch_id)
                        if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                            batch.update(status="cancelling", cancelling_at=int(time.time()))
                        owner._work.notify_all()
                        return self._send(200, dict(batch))
                self._send(404, {"error": {"message": f"no route {path}"}})

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
                         threading.Thread(target=self._run_batches, daemon=True)]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def store(self, content: bytes) -> str:
        with self._lock:
            file_id = f"file-{next(self._ids):04d}"
            self.files[file_id] = content
        return file_id

    def create(self, request: dict) -> dict:
        with self._lock:
            batch_id = f"batch_{next(self._ids):04d}"
            now = int(time.time())
            lines = [json.loads(line) for line in self.files[request["input_file_id"]].splitlines() if line.strip()]
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
                "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
                "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": request.get("metadata")}
            self.created.append(batch_id)
            self.lines_per_batch[batch_id] = [line["custom_id"] for line in lines]
            self._work.notify_all()
            return dict(self.batches[batch_id])

    def forward(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        """Pass one request to the upstream server; (status, reply body)."""
        if body is not None:
            body = dict(body)
            schema = (body.get("response_format") or {}).get("json_schema")
            if schema:  # OpenAI's structured output, in llama.cpp's shape
                body["response_format"] = {"type": "json_object", "schema": schema.get("schema")}
        request = urllib.request.Request(self.upstream + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read())
            except ValueError:
                return exc.code, {"error": {"message": f"HTTP {exc.code}"}}

    def _next_batch(self) -> dict | None:
        for batch in self.batches.values():
            if batch["status"] in ("validating", "in_progress", "cancelling") and batch["id"] not in self._finished:
                return batch
        return None

    def _run_batches(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                while batch is None and not self._stop:
                    self._work.wait(0.2)
                    batch = self._next_batch()
                if self._stop:
                    return
                lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]
                unserved = [number for number, line in enumerate(lines, 1)
                            if self.served is not None and line["body"].get("model") not in self.served]
                if unserved:
                    batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                        {"code": "model_not_found", "line": number, "param": "body.model",
                         "message": f"The model {lines[number - 1]['body'].get('model')!r} does not exist."}
                        for number in unserved]})
                    self._finished.add(batch["id"])
                    continue
                if batch["status"] == "validating":
                    batch.update(status="in_progress", in_progress_at=int(time.time()))
            self._run(batch, lines)

    def _run(self, batch: dict, lines: list[dict]) -> None:
        output, errors = [], []
        ran = 0
        for line in lines:
            while self.hold.is_set() and batch["status"] == "in_progress" and not self._stop:
                time.sleep(0.05)
            if self._stop:
                return
            if batch["status"] == "cancelling" or (self.expire_after is not None and ran >= self.expire_after):
                break
            ran += 1
            key = line["custom_id"]
            if key in self.fail_once:
                self.fail_once.discard(key)
                status, reply = 500, {"error": {"message": "The server had an error", "type": "server_error"}}
            else:
                status, reply = self.forward("POST", line["url"], line["body"])
                self.forwarded.append(key)
            record = {"id": f"batch_req_{next(self._ids):04d}", "custom_id": key,
                      "response": {"status_code": status, "request_id": f"req_{key}", "body": reply}, "error": None}
            (output if status == 200 else errors).append(record)
            with self._lock:
                batch["request_counts"]["completed" if status == 200 else "failed"] += 1
        done = {record["custom_id"] for record in output + errors}
        with self._lock:
            now = int(time.time())
            if batch["status"] == "cancelling":
                final, code = "cancelled", "batch_cancelled"
            elif len(done) < len(lines):
                final, code = "expired", "batch_expired"
            else:
                final, code = "completed", None
            for line in lines:
                if line["custom_id"] not in done:
                    errors.append({"id": f"batch_req_{next(self._ids):04d}", "custom_id": line["custom_id"],
                                   "response": None, "error": {"code": code, "message": f"This request was not run: {code}"}})
            batch["status"] = "finalizing"
            batch["finalizing_at"] = now
        to_file = lambda records: "".join(json.dumps(r) + "\n" for r in records).encode()  # noqa: E731
        output_id = self.store(to_file(output)) if output else None
        error_id = self.store(to_file(errors)) if errors else None
        with self._lock:
            batch.update(status=final, output_file_id=output_id, error_file_id=error_id,
                         **{f"{final}_at": int(time.time())})
            self._finished.add(batch["id"])

    def __enter__(self) -> "BatchStandin":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop = True
            self._work.notify_all()
        self.hold.clear()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
