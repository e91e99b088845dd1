"""The exporter's HTTP side: ``/metrics`` reads the agents, ``/healthz`` answers without reading any.

prometheus_client's own server answers every path with a full scrape, so a liveness probe on ``/healthz``
would read every guest agent each time it fires. This server routes: ``/metrics`` (and ``/``, for people
who type the address) to a scrape, ``/healthz`` to a constant ``ok``, anything else to 404. Each request
runs on its own thread (prometheus_client's ThreadingWSGIServer).

``/metrics`` is always Prometheus' text format 0.0.4, as the kubelet's ``/metrics/cadvisor`` serves it
(no OpenMetrics negotiation): there cAdvisor's ``container_memory_failcnt`` is a counter named without
``_total``, which OpenMetrics cannot express. prometheus_client writes such a counter's HELP and TYPE
lines as ``<name>_total``; ``render`` writes them under the samples' own name.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from shimstats.exporter import BARE_COUNTERS

__all__ = ["HEALTHZ", "MetricsServer", "render"]

HEALTHZ = b"ok\n"
StartResponse = Callable[..., Any]


def render(registry: Collector) -> bytes:
    """One scrape of ``registry`` in the text format, bare counters (BARE_COUNTERS) under their own name."""
    text = generate_latest(registry)
    for name in BARE_COUNTERS:
        wrong, right = f"{name}_total".encode(), name.encode()
        text = text.replace(b"# HELP " + wrong + b" ", b"# HELP " + right + b" ", 1)
        text = text.replace(b"# TYPE " + wrong + b" counter\n", b"# TYPE " + right + b" counter\n", 1)
    return text


def _metrics_app(registry: Collector) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = render(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    return app


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
            host, port, _routes(_metrics_app(registry)), server_class, handler_class=_QuietHandler
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
