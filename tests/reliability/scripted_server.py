"""A tiny OpenAI-compatible chat server whose replies a test scripts.

The real embedded teacher cannot be made, on demand, to return an empty reply, prose where JSON
was asked for, a reply that never ends, or a rating with no score in it; this server can. It
answers POST /v1/chat/completions with `reply(request_body)`: a string (the assistant's text),
ENDLESS (a body that trickles out forever and never completes), or a Status (an HTTP error, after
which the server may close its port, as vLLM's does once its engine has died). With `models` it
answers GET /v1/models with that list, each model `owned_by` the given owner (vLLM's server
says "vllm"; without a list, GET is not implemented: HTTP 501); with
`authorize`, a request whose Authorization header it refuses is answered 401.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ENDLESS = object()


@dataclasses.dataclass
class Status:
    """An HTTP error reply; with `then_close`, the server stops listening right after it."""

    code: int
    body: dict = dataclasses.field(default_factory=lambda: {"error": {"message": "scripted error"}})
    then_close: bool = False


# vLLM's reply to the requests in flight when its engine died (see docs/guarantees.md).
ENGINE_DEAD = Status(500, {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the "
                                     "root cause.", "type": "InternalServerError", "param": None, "code": 500}},
                     then_close=True)


def completion(text: str) -> bytes:
    """A chat completion carrying text, with a plausible usage block."""
    return json.dumps({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text.split())),
                  "total_tokens": 10 + max(1, len(text.split()))},
    }).encode()


TASKS = ["Explain why leaves change colour before winter arrives.",
         "Suggest three names for a bakery that sells only sourdough bread.",
         "Convert 72 degrees Fahrenheit into Celsius and show the working.",
         "Summarize the plot of a famous detective novel in two sentences.",
         "List four safety rules every beginner cyclist should follow.",
         "Compose a haiku about a quiet harbor at dawn.",
         "Classify these animals as mammals or reptiles: gecko, otter, iguana.",
         "Rewrite this sentence in the passive voice: the committee approved the plan.",
         "Give a short argument for planting trees along city streets.",
         "Describe how a refrigerator keeps food cold, for a child."]


def distinct_task(body: dict) -> str:
    """A numbered-layout reply with one task that passes every filter and differs per request."""
    instruction = TASKS[int(body.get("seed", 0)) % len(TASKS)]
    return f"{instruction}\n4. Input:\n<noinput>\n4. Output:\nA fitting answer written plainly and briefly."


class ScriptedServer:
    """`with ScriptedServer(reply) as server:` serves server.base_url; server.requests counts calls."""

    def __init__(self, reply: Callable[[dict], object], models: list[str] | None = None,
                 authorize: Callable[[str | None], bool] | None = None, port: int = 0, owned_by: str = "scripted"):
        self.reply = reply
        self.models = models
        self.owned_by = owned_by
        self.authorize = authorize
        self.requests = 0
        self.gets = 0
        self.authorizations: set[str | None] = set()  # the Authorization headers seen
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _json(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _refused(self) -> bool:
                if owner.authorize is None or owner.authorize(self.headers.get("Authorization")):
                    return False
                self._json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
                return True

            def do_GET(self):  # noqa: N802 (http.server's naming)
                owner.gets += 1
                if owner.models is None:
                    return self._json(501, {"error": {"message": "not implemented"}})
                if self._refused():
                    return None
                return self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": owner.owned_by}
                                                                     for m in owner.models]})

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                owner.requests += 1
                owner.authorizations.add(self.headers.get("Authorization"))
                if self._refused():
                    return
                answer = owner.reply(body)
                if isinstance(answer, Status):
                    self._json(answer.code, answer.body)
                    if answer.then_close:
                        self.close_connection = True
                        owner.close_port()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if answer is ENDLESS:
                    # Headers, then a few bytes every 50 ms for as long as the client listens:
                    # no read ever times out, and the reply is never complete.
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        self.wfile.write(b'7\r\n{"id": \r\n')
                        while not owner._stop.is_set():
                            self.wfile.write(b"1\r\n \r\n")
                            self.wfile.flush()
                            time.sleep(0.05)
                    except OSError:
                        pass  # the client gave up
                    self.close_connection = True
                    return
                data = completion(answer)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close_port(self) -> None:
        """Stop listening at once (later connections are refused), as a server that exited."""
        def stop():
            self._server.shutdown()
            self._server.server_close()

        threading.Thread(target=stop, daemon=True).start()

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
