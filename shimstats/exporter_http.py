"""The exporter's HTTP side: ``/metrics`` reads the agents, ``/healthz`` answers without reading any.

prometheus_client's own server answers every path with a full scrape, so a liveness probe on ``/healthz``
would read every guest agent each time it fires. This server routes: ``/metrics`` (and ``/``, for people
who type the address) to a scrape, ``/healthz`` to a constant ``ok``, anything else to 404. Each request
runs on its own thread (prometheus_client's ThreadingWSGIServer).

``/metrics`` is always Prometheus' text format 0.0.4, as the kubelet's ``/metrics/cadvisor`` serves it
(no OpenMetrics negotiation): there cAdvisor's ``container_memory_failcnt`` is a counter named without
``_total``, which OpenMetrics cannot express (see ``render``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Callable, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shimstats.exporter import BARE_COUNTERS

__all__ = ["HEALTHZ", "MetricsServer", "render"]

HEALTHZ = b"ok\n"
StartResponse = Callable[..., Any]


_format_value = cast(Callable[[float], str], floatToGoString)
"""prometheus_client's number format (Go's: +Inf, NaN, 1e+06)."""

_HEADER_TYPES = {"gauge": "gauge", "counter": "counter", "unknown": "untyped"}
"""Metric types render writes itself; anything else goes through prometheus_client's own writer."""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _One:
    """A registry of one metric, for prometheus_client's writer."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric]


def render(registry: Collector) -> bytes:
    """One scrape of ``registry`` in the text format 0.0.4.

    Written here rather than by prometheus_client's generate_latest for two reasons. Speed: a node's scrape
    is tens of thousands of samples whose label sets repeat across a container's families, and escaping
    them once per label set instead of once per sample makes the whole scrape several times cheaper
    (docs/benchmarks.md). Names: cAdvisor's counters without ``_total`` (BARE_COUNTERS) keep their name on
    the HELP and TYPE lines, where prometheus_client would append ``_total``. Label names are ours and
    valid as written; label values and help texts are escaped as the format requires.
    """
    out: list[str] = []
    label_text: dict[tuple[tuple[str, str], ...], str] = {}
    for metric in registry.collect():
        kind = _HEADER_TYPES.get(metric.type)
        if kind is None:
            out.append(generate_latest(_One(metric)).decode())
            continue
        name = metric.name
        if metric.type == "counter" and name not in BARE_COUNTERS:
            name += "_total"
        out.append(f"# HELP {name} {_escape_help(metric.documentation)}\n# TYPE {name} {kind}\n")
        for sample in metric.samples:
            key = tuple(sample.labels.items())
            labels = label_text.get(key)
            if labels is None:
                inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in key)
                labels = label_text[key] = f"{{{inner}}}" if inner else ""
            out.append(f"{sample.name}{labels} {_format_value(sample.value)}\n")
    return "".join(out).encode()


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
