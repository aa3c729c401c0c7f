"""An HTTP proxy that loses replies on purpose, in front of a real OpenAI-compatible server.

Each client connection carries one request. The proxy forwards it to the upstream server, waits
for the whole reply, and then, by a fixed schedule of actions per connection:

- "pass": hands the reply on;
- "drop": closes the connection without a byte of reply (the server did the work; it is lost);
- "cut": sends the headers and half of the body, then closes (a reply cut short).

Connections past the end of the schedule pass. It runs on its own asyncio loop in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from urllib.parse import urlsplit


async def read_http_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request with a Content-Length body (what the openai client sends), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head + (await reader.readexactly(length) if length else b"")


def with_connection_close(message: bytes) -> bytes:
    """The same message, its Connection header replaced by `Connection: close`."""
    head, _, body = message.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body


class FaultProxy:
    """`with FaultProxy(upstream_base_url, ["drop", "cut", ...]) as proxy:` serves proxy.base_url;
    proxy.done counts the actions taken."""

    def __init__(self, upstream_base_url: str, schedule: list[str]):
        parts = urlsplit(upstream_base_url)
        self.upstream = (parts.hostname, parts.port)
        self.path = parts.path
        self.schedule = list(schedule)
        self.done: collections.Counter = collections.Counter()
        self.port: int | None = None
        self._connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _forward(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.upstream)
        writer.write(with_connection_close(request))
        await writer.drain()
        reply = await reader.read()  # the server closes after one reply (Connection: close)
        writer.close()
        await writer.wait_closed()
        return reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_http_message(reader)
            if request is None:
                return
            index, self._connections = self._connections, self._connections + 1
            action = self.schedule[index] if index < len(self.schedule) else "pass"
            reply = with_connection_close(await self._forward(request))
            if action == "cut":
                head_end = reply.index(b"\r\n\r\n") + 4
                writer.write(reply[: head_end + (len(reply) - head_end) // 2])
            elif action == "pass":
                writer.write(reply)
            await writer.drain()
            self.done[action] += 1
        finally:
            writer.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        self._ready.wait(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
