"""Serving llamatelemetry's metrics for Prometheus to scrape: ``init(prometheus_port=...)``.

OpenTelemetry's Prometheus exporter (``opentelemetry-exporter-prometheus``, the core's
``prometheus`` extra) is a pull reader: each scrape of ``/metrics`` collects the MeterProvider
once. It is added beside the OTLP/console/file reader, so metrics can go both ways. The HTTP
server is ``prometheus_client``'s WSGI app on a private registry (only our metrics, none of the
process's default collectors), in a daemon thread that ``close()`` stops within the shutdown
deadline, releasing the port.

Prometheus renames what it scrapes: dots become underscores, the unit is appended (``s`` →
``_seconds``, ``By`` → ``_bytes``, ``J`` → ``_joules``; ``{token}``-style annotations and ``1``
add nothing), counters end in ``_total`` and histograms become ``_bucket``/``_sum``/``_count``.
``service.name`` is copied from the resource onto every series as the label ``service_name``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from llamatelemetry.errors import ExtraNotInstalledError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = ["PrometheusEndpoint", "start_prometheus_endpoint", "valid_host", "RESOURCE_LABELS",
           "DEFAULT_PORT", "DEFAULT_HOST"]

log = logging.getLogger("llamatelemetry")

#: The port OpenTelemetry's specification gives the Prometheus exporter (OTEL_EXPORTER_PROMETHEUS_PORT).
DEFAULT_PORT = 9464
#: Only this machine can scrape unless a host such as ``0.0.0.0`` is given.
DEFAULT_HOST = "localhost"
#: Resource attributes copied onto every series (sanitized: ``service_name``); low cardinality only.
RESOURCE_LABELS: frozenset[str] = frozenset({"service.name"})

_PACKAGE = "opentelemetry-exporter-prometheus"
# How often the server thread looks for a stop request: bounds close() well under the shutdown deadline.
_POLL_INTERVAL_S = 0.05


def valid_host(host: str) -> bool:
    """True for a host name or an IPv4/IPv6 address (brackets allowed) a server can bind."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return bool(host) and len(host) <= 253 and all(
        label and len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()
        and all(c.isalnum() or c == "-" for c in label) for label in labels)


def _import_reader() -> Any:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError as exc:
        raise ExtraNotInstalledError("init(prometheus_port=...)", _PACKAGE, "prometheus") from exc

    class LatestCollectionReader(PrometheusMetricReader):  # type: ignore[misc]
        """Keeps only the newest collection until the next scrape.

        The exporter queues every collection for the next scrape, and ``force_flush()`` collects
        too: an application flushing often with no scrape would grow that queue without bound.
        Every instrument is cumulative here, so the newest collection holds everything.
        """

        def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            pending = getattr(getattr(self, "_collector", None), "_metrics_datas", None)
            if metrics_data is not None and pending is not None:
                pending.clear()
            super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    return LatestCollectionReader


@attrs.define(eq=False)
class PrometheusEndpoint:
    """A running ``/metrics`` endpoint: the metric reader to give the MeterProvider, and its HTTP server."""

    reader: MetricReader
    host: str
    #: The port really bound (the one asked for, or the free one the system chose for port 0).
    port: int
    _server: Any = attrs.field(repr=False)
    _thread: threading.Thread = attrs.field(repr=False)
    closed: bool = False

    @property
    def url(self) -> str:
        """The address a Prometheus scrape config (or curl) reads."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop serving and release the port; waits at most ``timeout_s`` for the server thread."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + max(timeout_s, 0.0)
        # shutdown() waits for serve_forever to notice, which it does within one poll interval.
        stopper = threading.Thread(target=self._server.shutdown, name="llamatelemetry-prometheus-stop", daemon=True)
        stopper.start()
        stopper.join(max(deadline - time.monotonic(), 0.0))
        # Closing the listening socket releases the port even if the loop were still winding down.
        self._server.server_close()
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            log.warning("llamatelemetry's Prometheus endpoint %s did not stop within %.1f s", self.url, timeout_s)


def start_prometheus_endpoint(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> PrometheusEndpoint:
    """Create the Prometheus metric reader and serve it on ``host:port`` (``port=0``: any free port).

    Raises ``ExtraNotInstalledError`` when ``opentelemetry-exporter-prometheus`` is missing and
    ``OSError`` when the address cannot be bound (in use, or not this machine's).
    """
    reader_class = _import_reader()
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Log nothing: one stderr line per scrape would drown the application's output."""

    family, address = _best_family(host, port)

    class Server(ThreadingWSGIServer):  # type: ignore[misc]
        address_family = family

    registry = CollectorRegistry(auto_describe=False)
    reader = reader_class(registry=registry, resource_attribute_filter=RESOURCE_LABELS.__contains__)
    server = make_server(address, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
    bound_port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL_S},
                              name="llamatelemetry-prometheus", daemon=True)
    thread.start()
    endpoint = PrometheusEndpoint(reader=reader, host=host, port=bound_port, server=server, thread=thread)
    log.info("llamatelemetry serves metrics for Prometheus at %s", endpoint.url)
    return endpoint


def _best_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    # As http.server does: an IPv6 host needs an AF_INET6 socket, which WSGIServer does not pick by itself.
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])

