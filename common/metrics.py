"""Prometheus metrics for relay-intake and relay-deliver, and the HTTP server that shows them.

`--metrics HOST:PORT` starts `MetricsServer`: a small threaded HTTP server (the standard
library's wsgiref, in daemon threads) answering `GET /metrics` with the Prometheus text
format of one program's own registry (prometheus_client's WSGI app) and `GET /healthz`
with `ok` (200) or the reason it is not (503). `IntakeMetrics` and `DeliverMetrics` hold
each program's metrics; the programs call their small methods where the events happen.
Reads and writes no files; opens one listening socket.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# prometheus_client (~4 MiB) is imported when metrics are asked for, not by every program
# that imports this module for reason_class or the option (docs/performance.md, idle).
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

from common.config import ConfigError, Option, split_host_port

METRICS_OPTION = Option(
    "metrics",
    "serve Prometheus metrics at http://HOST:PORT/metrics (and /healthz)",
    None,
    metavar="HOST:PORT",
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# What a deferral or failure was about, for the reason_class label (a small, fixed set).
REASON_CLASSES = ("connection", "no_reply", "smtp_4xx", "smtp_5xx", "max_age", "local")


def reason_class(code: int | None, *, connected: bool = True, local: bool = False,
                 max_age: bool = False) -> str:
    """The reason_class label: `connection` (could not reach the smarthost), `no_reply`
    (it stopped answering), `smtp_4xx`/`smtp_5xx` (it said so), `max_age` (gave up),
    `local` (this host's fault: envelope, content, filter)."""
    if max_age:
        return "max_age"
    if local:
        return "local"
    if code is None:
        return "no_reply" if connected else "connection"
    return "smtp_5xx" if code >= 500 else "smtp_4xx"


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9125`, `[::1]:9125`, `:9125` (all addresses) -> (host, port)."""
    if text.startswith(":"):
        text = "0.0.0.0" + text
    if ":" not in text.replace("[", "").replace("]", "") and not text.endswith("]"):
        raise ConfigError(f"metrics: {text!r}: give HOST:PORT, for example 127.0.0.1:9125")
    host, port = split_host_port(text, default_port=0)
    if port == 0:
        raise ConfigError(f"metrics: {text!r}: give HOST:PORT, for example 127.0.0.1:9125")
    return host, port


class _Quiet(WSGIRequestHandler):
    """No access log on stderr: relay's log lines are its own."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def _server_class(host: str) -> type[WSGIServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

    return Server


class MetricsServer:
    """Serves /metrics and /healthz for one registry until stopped."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], str | None]) -> None:
        from prometheus_client import make_wsgi_app  # noqa: PLC0415 - see the top

        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                problem = health()
                status = "200 OK" if problem is None else "503 Service Unavailable"
                body = ("ok" if problem is None else problem).encode() + b"\n"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                        ("Content-Length", str(len(body)))])
                return [body]
            if path in ("/metrics", "/"):
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            body = b"not found: try /metrics or /healthz\n"
            start_response("404 Not Found", [("Content-Type", "text/plain"),
                                             ("Content-Length", str(len(body)))])
            return [body]

        try:
            self._server = make_server(host, port, app, server_class=_server_class(host),
                                       handler_class=_Quiet)
        except OSError as error:
            raise ConfigError(f"metrics: cannot listen on {host}:{port}:"
                              f" {error.strerror or error}") from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def new_registry() -> CollectorRegistry:
    """A registry of one program's own metrics, plus the process' CPU, memory and fds."""
    # No `_created` series: they double the output and say little. (Public, but unannotated.)
    from prometheus_client import (  # noqa: PLC0415 - see the top
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        disable_created_metrics,
    )

    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class IntakeMetrics:
    """relay-intake's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - see the top

        self.registry = registry or new_registry()
        r = self.registry
        self.accepted = Counter("relay_intake_messages_accepted", "messages stored (250)",
                                registry=r)
        self.refused = Counter("relay_intake_messages_refused",
                               "messages or recipients refused, by reason", ["reason"],
                               registry=r)
        self.sessions = Counter("relay_intake_sessions", "SMTP connections accepted",
                                registry=r)
        self.sessions_active = Gauge("relay_intake_sessions_active", "SMTP connections open",
                                     registry=r)
        self.auth_failures = Counter("relay_intake_auth_failures", "failed AUTH attempts",
                                     registry=r)
        self.commit_batch = Histogram("relay_intake_commit_batch_size",
                                      "messages made durable by one directory sync",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram("relay_intake_commit_seconds",
                                        "from handing a message to the storage process"
                                        " to it being durable",
                                        buckets=LATENCY_BUCKETS, registry=r)


class DeliverMetrics:
    """relay-deliver's metrics; the queue gauges come from deliver's own scans."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - see the top

        self.registry = registry or new_registry()
        r = self.registry
        self.forwarded = Counter("relay_deliver_messages_forwarded",
                                 "messages the smarthost accepted", registry=r)
        self.deferred = Counter("relay_deliver_messages_deferred",
                                "temporary failures (retried later), by reason class",
                                ["reason_class"], registry=r)
        self.failed = Counter("relay_deliver_messages_failed",
                              "permanent failures (moved to .envelope.bad), by reason class",
                              ["reason_class"], registry=r)
        self.forward_seconds = Histogram("relay_deliver_forward_seconds",
                                         "one SMTP transaction with the smarthost",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("relay_queue_messages", "messages in the spool by state, at the"
                           " last scan", ["state"], registry=r)
        self.oldest = Gauge("relay_queue_oldest_message_age_seconds",
                            "age of the oldest waiting message at the last scan (0: none)",
                            registry=r)
        self.last_scan = Gauge("relay_queue_last_scan_timestamp_seconds",
                               "when deliver last listed the spool", registry=r)
        self.smarthost_up = Gauge("relay_smarthost_up", "1 if the last attempt reached the"
                                  " smarthost, 0 if it could not connect", registry=r)
        for label in REASON_CLASSES:  # every series exists from the start (rate() needs it)
            self.deferred.labels(label)
            self.failed.labels(label)
        self.smarthost_up.set(1)

    def scanned(self, counts: dict[str, int], oldest_age: float | None, when: float) -> None:
        """Queue depth by state and the oldest waiting message, from one scan."""
        for state, count in counts.items():
            self.queue.labels(state).set(count)
        self.oldest.set(oldest_age or 0.0)
        self.last_scan.set(when)


__all__ = ["METRICS_OPTION", "DeliverMetrics", "IntakeMetrics", "MetricsServer",
           "parse_listen", "reason_class"]
