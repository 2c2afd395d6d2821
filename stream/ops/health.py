"""The metrics port: Prometheus text at ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` is about the worker's own loop (its heartbeat); ``/readyz`` also about the
broker, which :class:`BrokerWatch` asks every second from a thread of its own, so that the
answer holds while the loop is busy or blocked (on that very broker, it may be).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["BrokerWatch", "Health", "MetricsServer"]

_log = structlog.get_logger("headrace.health")


class Health:
    """What the probes report: the loop's heartbeat, assignment and broker reachability, and
    the conditions under which the worker holds back (the guardrail, undelivered results).

    The worker loop and the :class:`BrokerWatch` write it and the probe thread reads it: each
    write replaces a value whole, so a reader never sees one half-changed. Once watched, the
    broker counts as unreachable when its last probe failed, or when it has not answered for
    ``broker_silence_s`` (a probe that never returns).
    """

    def __init__(
        self,
        stale_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        broker_silence_s: float = 6.0,
    ) -> None:
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._broker_silence_s = broker_silence_s
        self._beat = clock()
        self._holds: dict[str, str] = {}
        self.partitions = 0
        self._broker_error: str | None = None
        self._broker_heard_at: float | None = None  # None: nobody watches the broker
        self._broker_address = "the broker"

    def watch_broker(self, address: str) -> None:
        """The broker at ``address`` is watched from now on: its silence counts from here."""
        self._broker_address = address
        if self._broker_heard_at is None:
            self._broker_heard_at = self._clock()

    def broker_answered(self) -> None:
        """The broker answered a probe just now."""
        self._broker_heard_at = self._clock()
        self._broker_error = None

    def broker_failed(self, reason: str) -> None:
        """The broker did not answer a probe, for ``reason`` (naming the broker)."""
        self._broker_error = reason

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
        broker = self._broker_problem()
        if broker is not None:
            return False, f"broker unreachable: {broker}"
        if self.partitions == 0:
            return False, "no partitions assigned"
        return True, f"ok: {self.partitions} partitions assigned"

    def _broker_problem(self) -> str | None:
        error, heard_at = self._broker_error, self._broker_heard_at
        if error is not None:
            return error
        if heard_at is not None:
            quiet = self._clock() - heard_at
            if quiet > self._broker_silence_s:
                return f"{self._broker_address}: no answer for {quiet:.0f} s"
        return None


class BrokerWatch:
    """Probes the broker every ``interval_s`` on a thread of its own and tells :class:`Health`.

    ``probe(timeout)`` asks the broker for metadata and returns None when it answered within
    ``timeout`` seconds, else why not (:class:`stream.kafka.clients.BrokerProbe`, a client of
    its own): a refused connection and a connection that hangs alike. Off the worker loop on
    purpose: the loop costs nothing more per message, and its own calls may be what waits on
    the broker (a rebalance callback flushing and committing after the session timed out), so
    it cannot be the one to tell. Use it as a context manager, or :meth:`start` and
    :meth:`stop`; :meth:`check` probes once (tests).
    """

    def __init__(
        self,
        probe: Callable[[float], str | None],
        health: Health,
        *,
        address: str,
        interval_s: float = 1.0,
        timeout_s: float = 2.5,
    ) -> None:
        self._probe = probe
        self._health = health
        self._address = address
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headrace-broker-watch", daemon=True)
        self._failing = False

    def check(self) -> bool:
        """Probe the broker once; whether it answered."""
        try:
            error = self._probe(self._timeout_s)
        except Exception as exc:  # e.g. a closed client: report, keep watching
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self._health.broker_answered()
            if self._failing:
                _log.info("broker answers again", broker=self._address)
        else:
            reason = f"{self._address}: {error}"
            self._health.broker_failed(reason)
            if not self._failing:
                _log.warning("broker does not answer; not ready", broker=self._address, error=error)
        self._failing = error is not None
        return error is None

    def start(self) -> Self:
        self._health.watch_broker(self._address)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing. A probe under way is not waited for past half a second (a stopping
        worker must not wait on a broker that does not answer): it ends by itself, unheard."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.check()
            self._stopping.wait(self._interval_s)


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
