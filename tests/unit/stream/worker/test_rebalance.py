"""Rebalances under the eager and the cooperative protocol, on the fakes and a fake clock.

Under the eager protocol (range, roundrobin) every rebalance revokes the whole assignment;
under the cooperative one (cooperative-sticky) only the partitions that change hands. Either
way a revoked partition is finished, published and committed before it is released, and the
partition count of ``/readyz`` follows the assignment.
"""

from __future__ import annotations

import pytest
import structlog.testing

from pipelines import Pipeline
from stream.kafka.config import RebalanceProtocol
from tests.unit.stream.support import records, tensor
from tests.unit.stream.worker.rig import INTERVAL, WAIT, Rig, make_rig, offsets

PROTOCOLS: list[RebalanceProtocol] = ["EAGER", "COOPERATIVE"]
_ALL = [f"ccfraud-requests[{i}]" for i in range(4)]


def _rig(pipeline: Pipeline, protocol: RebalanceProtocol, partitions: int = 4) -> Rig:
    rig = make_rig(pipeline, input_partitions=partitions, output_partitions=partitions)
    rig.consumer.rebalance_protocol = protocol
    return rig


def _send_round(rig: Rig, partitions: range, seed: int = 0) -> None:
    for index in partitions:
        rig.send(records(tensor(seed + index)), partition=index)


def _serve_all(rig: Rig) -> None:
    """Enough iterations for what was sent to be consumed, served, published and committed."""
    for _ in range(6):
        rig.step(WAIT)
    rig.step(INTERVAL)
    rig.step(INTERVAL)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_partition_count_follows_the_assignment(
    ccfraud: Pipeline, protocol: RebalanceProtocol
) -> None:
    """Through shrinking and growing rebalances /readyz counts exactly the partitions held."""
    rig = _rig(ccfraud, protocol)
    rig.step()
    assert rig.health.ready() == (True, "ok: 4 partitions assigned")
    for wanted in ([0, 1], [0, 1, 3], [3], [0, 1, 2, 3], []):
        rig.consumer.rebalance([rig.input(i) for i in wanted])
        rig.step()
        assert rig.consumer.assignment() == [rig.input(i) for i in wanted]
        assert rig.health.partitions == len(wanted)
    assert rig.health.ready() == (False, "no partitions assigned")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_revoked_partition_is_finished_and_committed_before_release(
    ccfraud: Pipeline, protocol: RebalanceProtocol
) -> None:
    """Requests consumed from a partition that moves away are served, published and their
    offsets committed (synchronously) inside the revocation, under either protocol."""
    rig = _rig(ccfraud, protocol)
    _send_round(rig, range(4))
    rig.step()  # consumed, batch not yet due
    assert rig.results() == []
    rig.consumer.rebalance([rig.input(i) for i in (0, 1, 2)])
    rig.step()
    assert offsets(rig.results(3)) == [0]
    assert rig.committed()[3] == 1
    last = rig.consumer.commits[-1]
    assert not last.asynchronous and rig.input(3) in last.offsets


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_kept_partitions_go_on_in_order_without_repeats(
    ccfraud: Pipeline, protocol: RebalanceProtocol
) -> None:
    """Across rebalances every request gets one result, in input order per partition, and
    each partition's committed offset ends after its last request."""
    rig = _rig(ccfraud, protocol)
    _send_round(rig, range(4), seed=0)
    rig.step()
    rig.consumer.rebalance([rig.input(i) for i in (0, 1)])
    _send_round(rig, range(4), seed=10)
    _serve_all(rig)
    rig.consumer.rebalance([rig.input(i) for i in (0, 1, 3)])
    _send_round(rig, range(4), seed=20)
    _serve_all(rig)
    for index in (0, 1):
        assert offsets(rig.results(index)) == [0, 1, 2]
    assert offsets(rig.results(3)) == [0, 1, 2]  # 0 before it left, 1 and 2 once back
    assert offsets(rig.results(2)) == [0]  # taken away after its first request
    assert rig.committed() == {0: 3, 1: 3, 2: 1, 3: 3}


@pytest.mark.parametrize(
    ("protocol", "revoked"), [("COOPERATIVE", [["ccfraud-requests[3]"]]), ("EAGER", [_ALL])]
)
def test_cooperative_rebalances_revoke_only_the_partitions_that_move(
    ccfraud: Pipeline, protocol: RebalanceProtocol, revoked: list[list[str]]
) -> None:
    """Under the cooperative protocol the kept partitions are never revoked (the log says
    which are); under the eager one every rebalance revokes them all."""
    rig = _rig(ccfraud, protocol)
    rig.step()
    rig.consumer.rebalance([rig.input(i) for i in (0, 1, 2)])
    with structlog.testing.capture_logs() as logs:
        rig.step()
    events = [e for e in logs if e["event"].startswith("partitions revoked")]
    assert [e["partitions"] for e in events] == revoked
    assert events[-1]["kept"] == (3 if protocol == "COOPERATIVE" else 0)


def test_cooperative_kept_partitions_keep_their_in_flight_requests(ccfraud: Pipeline) -> None:
    """A request of a kept partition whose result is not yet acknowledged when another
    partition moves away is neither committed early nor served twice: once acknowledged, it is
    committed, and its partition goes on reading after it."""
    rig = _rig(ccfraud, "COOPERATIVE", partitions=2)
    rig.send(records(tensor(0)), partition=0)
    rig.send(records(tensor(1)), partition=1)
    rig.step()
    rig.step(WAIT)  # served and produced, not acknowledged
    rig.producer.hold()
    rig.send(records(tensor(2)), partition=0)
    rig.step(WAIT)
    rig.consumer.rebalance([rig.input(0)])
    rig.step()  # partition 1 revoked, finished and committed; partition 0 kept as it was
    assert rig.committed() == {1: 1}
    assert offsets(rig.results(0)) == [0]  # offset 1 produced, not acknowledged
    rig.producer.release()
    rig.send(records(tensor(3)), partition=0)
    _serve_all(rig)
    assert offsets(rig.results(0)) == [0, 1, 2]
    assert rig.committed()[0] == 3
    assert rig.consumer.assignment() == [rig.input(0)]
