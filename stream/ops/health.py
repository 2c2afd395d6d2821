"""The metrics port: Prometheus text at ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Health", "MetricsServer"]


class Health:
    """What the probes report: the loop's heartbeat, assignment and broker reachability, and
    the conditions under which the worker holds back (the guardrail, undelivered results).

    The worker loop writes it and the probe thread reads it: each write replaces a value
    whole, so a reader never sees one half-changed.
    """

    def __init__(self, stale_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._beat = clock()
        self._holds: dict[str, str] = {}
        self.partitions = 0
        self.broker_error: str | None = None

    def hold(self, name: str, reason: str) -> None:
        """Report not-ready with ``reason`` until :meth:`release` of ``name``."""
        if self._holds.get(name) != reason:
            self._holds = {**self._holds, name: reason}

    def release(self, name: str) -> None:
        """Undo :meth:`hold` of ``name`` (nothing when it is not held)."""
        if name in self._holds:
            self._holds = {key: text for key, text in self._holds.items() if key != name}

    def beat(self) -> None:
        """Called by the worker loop every iteration."""
        self._beat = self._clock()

    def alive(self) -> tuple[bool, str]:
        quiet = self._clock() - self._beat
        if quiet > self._stale_after_s:
            return False, f"worker loop silent for {quiet:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        holds = self._holds
        if holds:
            return False, "; ".join(holds.values())
        if self.broker_error is not None:
            return False, f"broker unreachable: {self.broker_error}"
        if self.partitions == 0:
            return False, "no partitions assigned"
        return True, f"ok: {self.partitions} partitions assigned"


class MetricsServer:
    """A small HTTP server on its own daemon thread."""

    def __init__(
        self, port: int, registry: CollectorRegistry, health: Health, host: str = "0.0.0.0"
    ) -> None:
        handler = _handler(registry, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="headrace-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, detail = health.alive() if path == "/healthz" else health.ready()
                self._reply(200 if ok else 503, (detail + "\n").encode(), "text/plain")
            else:
                self._reply(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

        def log_message(self, format: str, *args: object) -> None:
            del format, args  # probes every few seconds would flood the worker's log

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
