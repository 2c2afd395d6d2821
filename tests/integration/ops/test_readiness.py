"""/readyz tells the truth about the broker: not ready, naming it, within seconds of it going
silent (frozen with SIGSTOP: connections that hang) or away (killed: connections refused),
ready again once it answers; /healthz stays about the worker's own loop.

Each test runs its own embedded broker: freezing or killing the session's would take the
other tests down with it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.kafka.admin import ensure_topics
from stream.kafka.broker import EmbeddedBroker, free_port
from tests.integration.support import Topics, probe
from tests.integration.workers import Fleet, Outputs, Request, Requests, write_config

pytestmark = pytest.mark.integration

_NOT_READY_WITHIN_S = 6.0  # the watch probes every second and gives up on a probe after 2.5 s


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own."""
    with EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log") as own:
        yield own


def _topics(broker: EmbeddedBroker, partitions: int = 2) -> Topics:
    suffix = uuid.uuid4().hex[:12]
    topics = Topics(
        bootstrap=broker.address,
        input=f"rd-in-{suffix}",
        output=f"rd-out-{suffix}",
        dead_letter=f"rd-dlq-{suffix}",
        group_id=f"rd-group-{suffix}",
        partitions=partitions,
    )
    ensure_topics(broker.address, dict.fromkeys(topics.names, partitions))
    return topics


def _requests(count: int) -> list[Request]:
    return [
        Request(
            orjson.dumps({"tensor": [round(n % 97 / 50, 2)] * 29, "id": n}), f"k{n % 8}".encode()
        )
        for n in range(count)
    ]


def _wait_probe(port: int, path: str, status: int, timeout: float) -> tuple[float, str]:
    """Poll ``path`` until it answers ``status``: the seconds it took (inf: never), the body."""
    started = time.monotonic()
    body = ""
    while time.monotonic() - started < timeout:
        try:
            found, body = probe(port, path)
        except OSError as exc:
            found, body = -1, str(exc)
        if found == status:
            return time.monotonic() - started, body
        time.sleep(0.2)
    return float("inf"), body


def test_readyz_follows_a_frozen_broker_and_nothing_is_lost(
    fleet: Fleet, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """With the broker frozen (SIGSTOP) for 8 s under light load, /readyz turns 503 within
    seconds with a reason naming the broker while /healthz stays 200; once it runs again
    (SIGCONT) /readyz is 200 again and every request gets its answer."""
    assert broker.pid is not None
    topics = _topics(broker)
    port = free_port()
    fleet.start(write_config(tmp_path, topics), env={"HEADRACE_METRICS__PORT": str(port)})
    requests, outputs = Requests(topics), Outputs(topics)
    try:
        assert _wait_probe(port, "/readyz", 200, 30)[0] < 30
        stream = requests.stream(_requests(1200), per_second=60)
        outputs.wait_for(results=60, timeout=30)

        os.kill(broker.pid, signal.SIGSTOP)
        try:
            took, reason = _wait_probe(port, "/readyz", 503, 15)
            healthz = probe(port, "/healthz")
            time.sleep(max(0.0, 8.0 - took))
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        back, _ = _wait_probe(port, "/readyz", 200, 60)
        sent = stream.finish(timeout=90)
        missing = outputs.wait_answered(sent, timeout=60)
    finally:
        requests.close()
        outputs.close()

    print(
        f"frozen broker: /readyz 503 after {took:.1f} s ({reason.strip()}); "
        f"200 again {back:.1f} s after SIGCONT"
    )
    assert took <= _NOT_READY_WITHIN_S, f"/readyz answered 503 only after {took:.1f} s"
    assert reason.startswith("broker unreachable:") and broker.address in reason, reason
    assert healthz == (200, "ok\n")
    assert back < 60, "/readyz did not become ready again"
    assert not missing, f"{len(missing)} requests lost"


def test_readyz_says_so_when_the_broker_is_gone(
    fleet: Fleet, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """With the broker killed (connections refused), /readyz turns 503 within seconds,
    naming the broker; /healthz stays 200."""
    assert broker.pid is not None
    topics = _topics(broker)
    port = free_port()
    fleet.start(write_config(tmp_path, topics), env={"HEADRACE_METRICS__PORT": str(port)})
    assert _wait_probe(port, "/readyz", 200, 30)[0] < 30
    broker.stop()
    took, reason = _wait_probe(port, "/readyz", 503, 15)
    print(f"broker gone: /readyz 503 after {took:.1f} s ({reason.strip()})")
    assert took <= _NOT_READY_WITHIN_S, f"/readyz answered 503 only after {took:.1f} s"
    assert reason.startswith("broker unreachable:") and broker.address in reason, reason
    assert probe(port, "/healthz") == (200, "ok\n")
