"""Real local HTTP servers the jobs talk to in tests (each on a free loopback port)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast


class AppServer(ThreadingHTTPServer):
    """The HTTP server, carrying the application object its handlers serve (`Handler.app`)."""

    app: Any


class Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port>, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = AppServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.app = self
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # `reply` writes the headers and then the body: with Nagle on, the body of every reply after
    # the first on a kept-alive connection waited for the client's delayed ACK (40 ms each, seen
    # as the ERP JSON-RPC re-run costing 100 ms more than JSON-2). Real servers send with
    # TCP_NODELAY (nginx's tcp_nodelay, gunicorn), so the stand-ins do too.
    disable_nagle_algorithm = True

    @property
    def app(self) -> Any:
        # Every Server serves through an AppServer; the handler's own type names only the base.
        return cast(AppServer, self.server).app

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Type" not in (headers or {}):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Hang(Handler):
    """Accepts the request and answers only when the test is over (a peer that hangs)."""

    def do_GET(self) -> None:
        self.app.hits.append(self.path)
        self.app.release.wait(60)
        self.reply(503)

    do_POST = do_PUT = do_GET


class HangingServer(Server):
    def __init__(self) -> None:
        super().__init__(_Hang)
        self.hits: list[str] = []
        self.release = threading.Event()

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)
