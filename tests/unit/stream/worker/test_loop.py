"""The worker loop, stepped one ``run_once()`` at a time on the fakes and a fake clock."""

from __future__ import annotations

import orjson
import pytest

from pipelines import Pipeline
from pipelines.formats import Format
from stream.errors import WorkerError
from stream.types import Envelope
from tests.unit.stream.support import content_type, encoded, header, records, table, tensor
from tests.unit.stream.worker.rig import INTERVAL, WAIT, Rig, make_rig, offsets


def _sources(messages: list[Envelope]) -> list[tuple[str | None, str | None]]:
    """(x-source-partition, x-source-offset) of published records."""
    return [
        (header(m.headers, "x-source-partition"), header(m.headers, "x-source-offset"))
        for m in messages
    ]


def test_results_keep_input_order_and_partition(ccfraud: Pipeline) -> None:
    """Results of a partition appear in offset order on the same partition number, keys kept."""
    rig = make_rig(ccfraud)
    arrow = encoded(table(tensor(1), tensor(2)), Format.ARROW_STREAM)
    rig.send(records(tensor(0)), key=b"a")  # batched with the other JSON requests
    rig.send(arrow, key=b"b")  # a batch of its own, served after the JSON batch
    rig.send(b"\x00garbage", key=b"c")  # a dead letter before anything is served
    rig.send(records(tensor(3)), key=b"d")
    rig.send(records(tensor(4)), partition=1, key=b"e")
    rig.send(records(tensor(5)), partition=1, key=b"f")
    rig.step()
    assert rig.results() == []
    rig.step(WAIT)
    assert _sources(rig.results(0)) == [("0", "0"), ("0", "1"), ("0", "3")]
    assert [m.key for m in rig.results(0)] == [b"a", b"b", b"d"]
    assert _sources(rig.results(1)) == [("1", "0"), ("1", "1")]
    assert [m.key for m in rig.results(1)] == [b"e", b"f"]
    assert _sources(rig.dead_letters()) == [("0", "2")]


def test_results_go_by_key_when_the_output_topic_has_fewer_partitions(ccfraud: Pipeline) -> None:
    """Input partition 3 has no output partition 3: its results are placed by key instead."""
    rig = make_rig(ccfraud, input_partitions=4, output_partitions=1)
    rig.send(records(tensor(0)), partition=3)
    rig.step()
    rig.step(WAIT)
    assert _sources(rig.results(0)) == [("3", "0")]


def test_requests_that_cannot_be_served_go_to_the_dead_letter_topic(ccfraud: Pipeline) -> None:
    """Undecodable and misshapen requests are dead-lettered as they came; neighbours are served."""
    rig = make_rig(ccfraud)
    garbage = rig.send(b"\x00garbage", headers=(("traceparent", b"t-1"),), key=b"g")
    rig.send(records(tensor(0)))
    short = rig.send(records(tensor(1, width=28)), key=b"s")
    rig.send(records(tensor(2)))
    rig.step()
    rig.step(WAIT)
    assert offsets(rig.results(0)) == [1, 3]
    first, second = rig.dead_letters()
    assert (first.key, first.value) == (garbage.key, garbage.value)
    assert header(first.headers, "x-error-type") == "decode_error"
    assert header(first.headers, "traceparent") == "t-1"
    assert header(first.headers, "x-consumer-group") == "ccfraud"
    assert (second.key, second.value) == (short.key, short.value)
    assert header(second.headers, "x-error-type") == "schema_error"
    assert "'tensor'" in (header(second.headers, "x-error-message") or "")
    assert rig.metrics.dead_letter_types == ["decode_error", "schema_error"]
    assert [rows for rows, _, _ in rig.metrics.served_requests] == [1, 1]


def test_a_request_over_the_size_limit_is_dead_lettered_without_its_bytes(
    ccfraud: Pipeline,
) -> None:
    """A too-large request is a ``too_large`` dead letter with an empty value and its size."""
    rig = make_rig(ccfraud, max_message_bytes=1024)
    big = records(*(tensor(i) for i in range(10)))
    rig.send(big)
    rig.step()
    (dead,) = rig.dead_letters()
    assert dead.value == b""
    assert header(dead.headers, "x-error-type") == "too_large"
    assert header(dead.headers, "x-original-bytes") == str(len(big))


def _unacknowledged(pipeline: Pipeline, count: int = 3) -> Rig:
    """A worker that served ``count`` requests whose results the broker has not acknowledged."""
    rig = make_rig(pipeline)
    for seed in range(count):
        rig.send(records(tensor(seed)))
    rig.producer.hold()
    rig.step()
    rig.step(WAIT)
    return rig


def test_offsets_are_committed_only_after_results_are_acknowledged(ccfraud: Pipeline) -> None:
    """While the broker has not acknowledged the results, no offset is committed."""
    rig = _unacknowledged(ccfraud)
    rig.step(INTERVAL)
    assert rig.results() == []
    assert rig.committed() == {}
    rig.producer.release()
    rig.step()
    assert len(rig.results()) == 3
    rig.step(INTERVAL)
    assert rig.committed() == {0: 3}


def test_results_acknowledged_only_at_shutdown_are_counted_and_committed(
    ccfraud: Pipeline,
) -> None:
    """What the broker acknowledges while the worker waits for it at shutdown is counted
    once in the metrics, with its latency, and committed."""
    rig = _unacknowledged(ccfraud)
    assert rig.metrics.served_requests == []
    waits = rig.producer.flush

    def flush(timeout: float) -> int:
        rig.producer.release()  # the acknowledgements come in while the worker waits
        return waits(timeout)

    rig.producer.flush = flush  # type: ignore[method-assign]
    rig.clock.advance(0.25)
    rig.worker.shutdown()
    served = rig.metrics.served_requests
    assert [rows for rows, _, _ in served] == [1, 1, 1]
    assert {now for _, _, now in served} == {rig.clock.wall_ms()}  # when they were acknowledged
    assert rig.committed() == {0: 3}


def test_a_failed_result_becomes_an_output_error_committed_once_acknowledged(
    ccfraud: Pipeline,
) -> None:
    """A result the broker refuses is dead-lettered; its offset waits for that dead letter."""
    rig = make_rig(ccfraud)
    first = rig.send(records(tensor(0)))
    rig.send(records(tensor(1)))
    rig.send(records(tensor(2)))
    rig.producer.fail_next(1, "MSG_SIZE_TOO_LARGE: Broker: Message size too large")
    rig.producer.hold()
    rig.step()
    rig.step(WAIT)
    rig.step(INTERVAL)
    assert rig.committed() == {}  # nothing is acknowledged yet
    rig.producer.release()
    rig.step(INTERVAL)  # the refusal is reported: offset 0 becomes a dead letter
    assert rig.committed() == {}  # ... which is not acknowledged yet
    rig.step(INTERVAL)
    assert offsets(rig.results(0)) == [1, 2]
    (dead,) = rig.dead_letters()
    assert dead.value == first.value
    assert header(dead.headers, "x-error-type") == "output_error"
    message = header(dead.headers, "x-error-message") or ""
    assert "ccfraud-results" in message and "MSG_SIZE_TOO_LARGE" in message
    assert rig.committed() == {0: 3}


def test_a_result_over_the_producer_limit_is_an_output_error(ccfraud: Pipeline) -> None:
    """A result larger than the producer's message size is dead-lettered as ``output_error``."""
    rig = make_rig(ccfraud)
    request = rig.send(records(tensor(0)))
    rig.producer.max_message_bytes = len(request.value) + 16
    rig.step()
    rig.step(WAIT)
    rig.step(INTERVAL)
    assert rig.results() == []
    (dead,) = rig.dead_letters()
    assert header(dead.headers, "x-error-type") == "output_error"
    assert rig.committed() == {0: 1}


def test_a_refused_dead_letter_stops_the_worker_and_nothing_after_it_is_committed(
    ccfraud: Pipeline,
) -> None:
    """When a dead letter cannot be published the loop raises; the commit stops before it."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.send(b"\x00garbage")
    rig.send(records(tensor(1)))
    rig.producer.fail_next(1, "TOPIC_AUTHORIZATION_FAILED: denied", topic="ccfraud-dlq")
    rig.step()
    with pytest.raises(WorkerError, match=r"ccfraud-requests\[0\]@1 .*'ccfraud-dlq'.*denied"):
        rig.step(INTERVAL)
    assert rig.committed() == {0: 1}
    rig.worker.shutdown()
    assert rig.committed() == {0: 1}
    assert offsets(rig.results(0)) == [0, 2]


def test_back_pressure_pauses_at_the_limit_and_resumes_below_half(ccfraud: Pipeline) -> None:
    """At ``max_inflight_rows`` the partitions pause; they resume once under half of it."""
    rig = make_rig(ccfraud, input_partitions=1, max_inflight_rows=4)
    for seed in range(4):
        rig.send(records(tensor(seed)))
    rig.producer.hold()
    rig.step()
    assert rig.consumer.paused() == [rig.input(0)]
    rig.step(WAIT)
    rig.send(records(tensor(9)))
    rig.step()
    assert rig.metrics.inflight_rows[-1] == 4  # the new request was not consumed
    rig.producer.deliver(2)
    rig.step()
    assert rig.consumer.paused() == [rig.input(0)]  # 2 rows left: not under half yet
    rig.producer.deliver(1)
    rig.step()
    assert rig.consumer.paused() == []
    rig.producer.release()
    rig.step()
    rig.step(WAIT)
    assert offsets(rig.results(0)) == [0, 1, 2, 3, 4]


def test_under_back_pressure_the_loop_waits_for_acknowledgements(ccfraud: Pipeline) -> None:
    """Paused partitions give nothing: the loop waits on the producer, whose acknowledgements
    lift the hold, and asks the consumer without waiting (it used to sleep on the consumer)."""
    rig = make_rig(ccfraud, input_partitions=1, max_inflight_rows=4)
    for seed in range(4):
        rig.send(records(tensor(seed)))
    rig.producer.hold()
    rig.step()
    rig.step(WAIT)
    assert rig.consumer.paused() == [rig.input(0)]
    rig.consumer.timeouts.clear()
    rig.producer.poll_timeouts.clear()
    rig.step()
    assert rig.consumer.timeouts == [0.0]
    assert rig.producer.poll_timeouts[0] > 0
    rig.producer.release()
    rig.step()
    assert rig.consumer.paused() == []
    assert rig.consumer.timeouts[-1] == 0.0  # the acknowledgements came while it waited


def test_result_bytes_awaiting_acknowledgement_count_against_the_byte_cap(
    ccfraud: Pipeline,
) -> None:
    """Requests under ``max_inflight_bytes`` whose unacknowledged results take it over the
    cap pause the partitions until the results are acknowledged."""
    note = "n" * 5000  # echoed in every result as in.note
    request = orjson.dumps([{"tensor": tensor(0), "note": note}])
    rig = make_rig(ccfraud, input_partitions=1, max_inflight_bytes=4 * len(request) + 1000)
    for _ in range(4):
        rig.send(request)
    rig.producer.hold()
    rig.step()
    assert rig.consumer.paused() == []  # the requests alone are under the cap
    rig.step(WAIT)
    assert rig.consumer.paused() == [rig.input(0)]
    rig.send(request)
    rig.step()
    assert rig.metrics.inflight_rows[-1] == 4  # the fifth request was not consumed
    rig.producer.release()
    rig.step()
    assert rig.consumer.paused() == []
    rig.step()
    rig.step(WAIT)
    assert offsets(rig.results(0)) == [0, 1, 2, 3, 4]


def test_commits_follow_the_commit_interval(ccfraud: Pipeline) -> None:
    """Acknowledged offsets are committed at most once per ``commit_interval_ms``."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.step()
    rig.step(WAIT)
    rig.step(0.1)
    assert rig.committed() == {}
    rig.step(INTERVAL - 0.1 - WAIT)  # 200 ms after the start
    assert rig.committed() == {0: 1}
    rig.send(records(tensor(1)))
    rig.step()
    rig.step(WAIT)
    rig.step(0.1)
    assert rig.committed() == {0: 1}
    rig.step(0.1)
    assert rig.committed() == {0: 2}
    rig.step(1.0)
    assert len(rig.consumer.commits) == 2  # nothing new: nothing committed
    assert all(commit.asynchronous for commit in rig.consumer.commits)


def test_revoked_partitions_are_finished_and_committed_before_release(ccfraud: Pipeline) -> None:
    """On revoke, open batches are served and published and the revoked offsets committed."""
    rig = make_rig(ccfraud)
    for partition in (0, 0, 1, 1):
        rig.send(records(tensor(partition)), partition=partition)
    rig.step()
    assert rig.results() == []
    rig.consumer.revoke([rig.input(1)])
    rig.step()
    assert _sources(rig.results(1)) == [("1", "0"), ("1", "1")]
    assert rig.committed() == {1: 2}
    assert rig.consumer.commits[-1].asynchronous is False
    assert rig.consumer.assignment() == [rig.input(0)]
    rig.send(records(tensor(5)), partition=1)
    rig.step(INTERVAL)
    assert rig.committed() == {0: 2, 1: 2}
    assert len(rig.results(1)) == 2


def test_a_revoked_partition_not_acknowledged_in_time_is_served_again(ccfraud: Pipeline) -> None:
    """Unacknowledged results of a revoked partition are not committed: they repeat, not vanish."""
    rig = make_rig(ccfraud, input_partitions=1)
    rig.send(records(tensor(0)))
    rig.step()
    rig.producer.hold()
    rig.consumer.revoke()
    rig.step()
    assert rig.committed() == {}
    rig.producer.release()
    rig.consumer.assign([rig.input(0)])
    rig.step()
    rig.step(WAIT)
    rig.step(INTERVAL)
    assert offsets(rig.results(0)) == [0, 0]
    assert rig.committed() == {0: 1}


def test_shutdown_serves_open_batches_flushes_and_commits(ccfraud: Pipeline) -> None:
    """``shutdown()`` publishes what was consumed and commits it synchronously."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.send(records(tensor(1)))
    rig.send(records(tensor(2)), partition=1)
    rig.step()
    assert rig.results() == []
    rig.worker.shutdown()
    assert len(rig.results()) == 3
    assert rig.committed() == {0: 2, 1: 1}
    assert rig.consumer.commits[-1].asynchronous is False
    assert rig.metrics.inflight_rows[-1] == 0


def test_run_returns_after_stop_with_everything_committed(ccfraud: Pipeline) -> None:
    """``stop()`` ends ``run()`` after the current iteration; consumed requests are finished."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.step()
    rig.worker.stop()
    rig.worker.run()
    assert len(rig.results()) == 1
    assert rig.committed() == {0: 1}


def test_results_and_dead_letters_are_reported_to_metrics(ccfraud: Pipeline) -> None:
    """Metrics see the batch rows, step times, served requests and dead letters."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0), tensor(1)))
    rig.send(
        encoded(table(tensor(2)), Format.ARROW_STREAM), headers=(content_type(Format.ARROW_STREAM),)
    )
    rig.send(orjson.dumps({"nope": 1}))
    rig.step()
    rig.step(WAIT)
    assert sorted(rows for rows, _ in rig.metrics.batches) == [1, 1, 2]
    assert sorted(rows for rows, _, _ in rig.metrics.served_requests) == [1, 2]
    assert rig.metrics.dead_letter_types == ["schema_error"]
    assert {names for names, _ in rig.metrics.step_times} == {("ccfraud", "fraud")}
