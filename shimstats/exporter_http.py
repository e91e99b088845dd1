"""The exporter's HTTP side: ``/metrics`` reads the agents, ``/healthz`` answers without reading any.

prometheus_client's own server answers every path with a full scrape, so a liveness probe on ``/healthz``
would read every guest agent each time it fires. This server routes: ``/metrics`` (and ``/``, for people
who type the address) to prometheus_client's WSGI app, ``/healthz`` to a constant ``ok``, anything else to
404. Each request runs on its own thread (prometheus_client's ThreadingWSGIServer).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

__all__ = ["HEALTHZ", "MetricsServer"]

HEALTHZ = b"ok\n"
StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


def _routes(metrics: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> Any:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/metrics", "/"):
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [HEALTHZ]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0: any free one) from a thread until closed."""

    def __init__(self, host: str, port: int, registry: Collector) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
        self._server: ThreadingWSGIServer = make_server(
            host, port, _routes(make_wsgi_app(registry)), server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="shimstats-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics`` with the port actually bound."""
        host, port = self._server.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{text}]" if ":" in text else text
        return f"http://{shown}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
