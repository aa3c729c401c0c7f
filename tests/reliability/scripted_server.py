"""A tiny OpenAI-compatible chat server whose replies a test scripts.

The real embedded teacher cannot be made, on demand, to return an empty reply, prose where JSON
was asked for, a reply that never ends, or a rating with no score in it; this server can. It
answers POST /v1/chat/completions with `reply(request_body)`: a string (the assistant's text),
or ENDLESS (a body that trickles out forever and never completes).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ENDLESS = object()


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

    def __init__(self, reply: Callable[[dict], object]):
        self.reply = reply
        self.requests = 0
        self.authorizations: set[str | None] = set()  # the Authorization headers seen
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                owner.requests += 1
                owner.authorizations.add(self.headers.get("Authorization"))
                answer = owner.reply(body)
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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
