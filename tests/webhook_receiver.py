"""A webhook receiver on loopback for the tests: records every POST, answers what the
test says (a status, or a hang), and checks signatures the way docs/DEPLOY.md tells a
receiver to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from xmlx.webhooks import ID_HEADER, SIGNATURE_HEADER, verify


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes

    def signed_by(self, secret: str) -> bool:
        return verify(secret, self.body, self.headers.get(SIGNATURE_HEADER, ""))

    @property
    def delivery_id(self) -> str:
        return self.headers.get(ID_HEADER, "")


@dataclass
class Receiver:
    port: int
    calls: list[Call] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: threading.Event | None = None  # set: the next calls wait on it before answering
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered_ids(self) -> set[str]:
        with self.lock:
            return {call.delivery_id for call in self.calls}


@contextmanager
def running_receiver(port: int = 0) -> Iterator[Receiver]:
    """A receiver on `port` (0: a free one) until the block ends."""
    receiver = Receiver(port=port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.calls.append(Call(self.path, dict(self.headers.items()), body))
            if receiver.hang is not None:
                receiver.hang.wait(timeout=60)
            self.send_response(receiver.status)
            for name, value in receiver.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        if receiver.hang is not None:
            receiver.hang.set()
        server.shutdown()
        server.server_close()
