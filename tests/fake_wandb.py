"""A fake W&B server on 127.0.0.1 for the tracking tests: the faults a cluster user meets first.

- ``closed``: a port nothing listens on (connection refused);
- ``hang``: accepts every connection and never answers;
- ``error``: answers every request with HTTP 500;
- ``recovered``: the same server once it works again: GraphQL answers ``{"data": {"viewer": ...}}``;
- ``flaky``: answers rayclf's ``viewer`` query as ``recovered`` (the checks pass) and everything else wandb asks
  with HTTP 500 (every run's online start fails inside ``wandb.init``).

``requests`` counts the HTTP requests (and, for ``hang``, the connections) the server saw.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from typing import Any


class FakeWandb:
    def __init__(self, mode: str):
        self.mode = mode
        self.requests = 0
        self._conns: list[socket.socket] = []
        self._sock: socket.socket | None = None
        self._httpd: http.server.ThreadingHTTPServer | None = None
        if mode == "closed":
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()  # nothing listens there now
        elif mode == "hang":
            self._sock = socket.socket()
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(128)
            self.port = self._sock.getsockname()[1]
            threading.Thread(target=self._accept, daemon=True).start()
        else:
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self.port = self._httpd.server_address[1]
            threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.requests += 1
            self._conns.append(conn)  # held open, never read, never answered

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests += 1
                asked = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = b""
                if server.mode == "recovered" or (server.mode == "flaky" and b"viewer { id }" in asked):
                    self.send_response(200)
                    body = json.dumps({"data": {"viewer": {"id": "u1", "entity": "me"}}}).encode()
                else:
                    self.send_response(500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._sock is not None:
            self._sock.close()
        for c in self._conns:
            c.close()
