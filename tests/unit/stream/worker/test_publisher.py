"""Publishing through the worker: dead letters that always fit, and deliveries tried again."""

from __future__ import annotations

from pipelines import Pipeline
from stream.kafka.config import FRAMING_BYTES
from tests.unit.stream.support import header, records, tensor

from .rig import INTERVAL, WAIT, make_rig, offsets

GARBAGE = b"\x00garbage"
TOO_LARGE = "MSG_SIZE_TOO_LARGE: Broker: Message size too large"
BACKOFF = 0.1  # before the first retry round


def test_a_dead_letter_over_the_producer_limit_is_published_without_its_value(
    ccfraud: Pipeline,
) -> None:
    """A request just under the size limit that fails to decode, with a 70 KB header, is
    dead-lettered without its bytes (``x-original-bytes``) but with its headers."""
    limit = 100_000
    rig = make_rig(ccfraud, max_message_bytes=limit)
    value = b"\x00" * (limit - 1000)
    blob = b"h" * 70_000
    rig.send(value, headers=(("x-request-id", b"r-1"), ("x-blob", blob)))
    rig.step()
    rig.step(INTERVAL)
    (dead,) = rig.dead_letters()
    assert dead.value == b""
    assert header(dead.headers, "x-original-bytes") == str(len(value))
    assert header(dead.headers, "x-error-type") == "decode_error"
    assert header(dead.headers, "x-blob") == blob.decode()
    assert header(dead.headers, "x-request-id") == "r-1"
    assert rig.committed() == {0: 1}


def test_headers_too_large_for_any_dead_letter_are_left_out_but_the_request_id(
    ccfraud: Pipeline,
) -> None:
    """When even the headers exceed the producer's limit, the dead letter keeps only
    ``x-request-id`` of the request's headers and says how many it left out."""
    rig = make_rig(ccfraud, max_message_bytes=1024)
    blob = b"h" * (FRAMING_BYTES + 5000)
    rig.send(GARBAGE, headers=(("x-request-id", b"r-2"), ("x-blob", blob), ("trace", b"t")))
    rig.step()
    (dead,) = rig.dead_letters()
    names = [name for name, _ in dead.headers]
    assert dead.value == b""
    assert "x-blob" not in names and "trace" not in names
    assert header(dead.headers, "x-request-id") == "r-2"
    assert header(dead.headers, "x-dropped-headers") == "2"
    assert header(dead.headers, "x-original-bytes") == str(len(GARBAGE))
    assert header(dead.headers, "x-error-type") == "decode_error"


def test_a_dead_letter_refused_as_too_large_is_published_smaller(ccfraud: Pipeline) -> None:
    """A dead letter the broker refuses as too large is produced again without its value,
    instead of stopping the worker; its offset is then committed."""
    rig = make_rig(ccfraud)
    rig.send(GARBAGE, headers=(("trace", b"t-1"),))
    rig.send(records(tensor(0)))
    rig.producer.fail_next(1, TOO_LARGE, topic=rig.settings.kafka.dead_letter_topic)
    rig.step()
    rig.step(WAIT)
    rig.step(INTERVAL)
    (dead,) = rig.dead_letters()
    assert dead.value == b""
    assert header(dead.headers, "x-original-bytes") == str(len(GARBAGE))
    assert header(dead.headers, "trace") == "t-1"
    assert offsets(rig.results()) == [1]
    assert rig.committed() == {0: 2}


def test_a_result_failing_for_a_transient_reason_is_published_again_before_later_ones(
    ccfraud: Pipeline,
) -> None:
    """A timed-out result is produced again, never dead-lettered; results consumed after its
    failure wait until it is acknowledged (those already in flight may land before it)."""
    rig = make_rig(ccfraud, input_partitions=1)
    output = rig.settings.kafka.output_topic
    for seed in range(3):
        rig.send(records(tensor(seed)))
    rig.producer.fail_next(1, topic=output)  # offset 0's delivery times out
    rig.step()
    rig.step(WAIT)
    assert offsets(rig.results()) == [1, 2]  # in flight already when 0 failed
    rig.send(records(tensor(3)))
    rig.send(records(tensor(4)))
    rig.producer.fail_next(1, topic=output)  # ... and so does its first retry
    rig.step()
    rig.step(WAIT)
    rig.step(BACKOFF)
    assert offsets(rig.results()) == [1, 2]
    rig.step(2 * BACKOFF)
    rig.step()
    assert offsets(rig.results()) == [1, 2, 0, 3, 4]
    assert rig.dead_letters() == []
    rig.step(INTERVAL)
    assert rig.committed() == {0: 5}


def test_a_dead_letter_failing_for_a_transient_reason_is_published_again(
    ccfraud: Pipeline,
) -> None:
    """A dead letter whose delivery timed out is produced again; the worker goes on."""
    rig = make_rig(ccfraud)
    rig.send(GARBAGE, key=b"g")
    rig.producer.fail_next(1, topic=rig.settings.kafka.dead_letter_topic)
    rig.step()
    assert rig.dead_letters() == []
    rig.step(BACKOFF)
    rig.step(INTERVAL)
    (dead,) = rig.dead_letters()
    assert (dead.key, dead.value) == (b"g", GARBAGE)
    assert rig.committed() == {0: 1}


def test_the_worker_is_not_ready_while_a_result_fails_round_after_round(
    ccfraud: Pipeline,
) -> None:
    """After three failed retry rounds ``/readyz`` names the partition and the error; once
    the result is delivered the worker is ready again, with one result and no dead letter."""
    rig = make_rig(ccfraud, input_partitions=1)
    rig.send(records(tensor(0)))
    rig.producer.fail_next(4, "NOT_LEADER_OR_FOLLOWER: Broker: Not leader or follower")
    rig.step()
    rig.step(WAIT)
    for backoff in (BACKOFF, 2 * BACKOFF):
        rig.step(backoff)
        assert rig.health.ready()[0]
    rig.step(4 * BACKOFF)
    ready, reason = rig.health.ready()
    assert not ready
    assert "ccfraud-requests[0]" in reason and "NOT_LEADER_OR_FOLLOWER" in reason
    rig.step(8 * BACKOFF)
    assert rig.health.ready()[0]
    assert offsets(rig.results()) == [0]
    assert rig.dead_letters() == []


def test_a_result_undelivered_while_stopping_is_left_to_be_served_again(
    ccfraud: Pipeline,
) -> None:
    """A result that times out during shutdown is neither dead-lettered nor committed."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.step()
    rig.producer.hold()
    rig.step(WAIT)
    rig.producer.fail_next(1)
    rig.producer.release()
    rig.worker.shutdown()
    assert rig.results() == [] and rig.dead_letters() == []
    assert rig.committed() == {}
