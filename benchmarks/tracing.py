"""What W3C trace context costs the worker: headrace on J with and without ``traceparent``.

``python -m benchmarks.tracing [--quick]`` runs one ``headrace run`` worker (no OpenTelemetry
exporter configured: the cost of the header rule alone, SPEC §3) on the J workload twice per
repetition, once with every request carrying ``traceparent`` and ``tracestate`` and once
without, alternating which goes first, on one fresh embedded broker. It checks every result
(one per request, values within 1e-3 of onnxruntime) and prints the medians and their ratio.
``make bench`` runs it after the side-by-side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks._check import reference
from benchmarks._harness import MODELS, Bench, Run, Workload, json_requests, sample_rows
from benchmarks._kafka import Message
from benchmarks._tools import TOOLS
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.worker.processes import stop_on_sigterm

__all__ = ["main", "traced"]

_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def traced(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with a ``traceparent`` (a span id per request) and a ``tracestate``."""
    return [
        (
            key,
            value,
            (
                *headers,
                ("traceparent", f"00-{_TRACE_ID}-{index + 1:016x}-01".encode()),
                ("tracestate", b"headrace=bench"),
            ),
        )
        for index, (key, value, headers) in enumerate(messages)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracing",
        description="headrace on J with and without traceparent headers (no exporter)",
    )
    parser.add_argument("--quick", action="store_true", help="5,000 requests, 2 repetitions")
    parser.add_argument("--repetitions", type=int, help="default: 3 (quick: 2)")
    args = parser.parse_args(argv)
    repetitions: int = args.repetitions or (2 if args.quick else 3)
    requests = 5_000 if args.quick else 20_000
    plain = Workload("J", "small", requests, json_requests(requests))
    with_trace = Workload("J", "small", requests, traced(plain.messages))
    checked = reference(MODELS["small"], sample_rows())
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-bench-tracing-"))
    rates: dict[str, list[float]] = {"without traceparent": [], "with traceparent": []}
    with stop_on_sigterm(), EmbeddedBroker(free_port(), log_path=log_dir / "broker.log") as broker:
        bench = Bench(broker.address, log_dir, quick=args.quick, broker_pid=broker.pid)
        print(f"broker {broker.address}, logs in {log_dir}/", flush=True)
        for repetition in range(1, repetitions + 1):
            runs = [("without traceparent", plain), ("with traceparent", with_trace)]
            if repetition % 2 == 0:
                runs.reverse()
            for turn, (name, workload) in enumerate(runs):
                run = bench.measure(
                    "headrace",
                    TOOLS["headrace"],
                    workload,
                    repetition=2 * repetition + turn,
                    reference=checked,
                )
                _report(name, run)
                if run.rate is not None:
                    rates[name].append(run.rate)
    if not all(rates.values()):
        print("a run failed: no comparison")
        return 1
    without, with_ = (statistics.median(rates[name]) for name in rates)
    print(
        f"\nJ, headrace, medians of {repetitions}: {without:,.0f} requests/s without "
        f"traceparent, {with_:,.0f} with it: {with_ / without:.2f}x"
    )
    return 0


def _report(name: str, run: Run) -> None:
    rate = "failed" if run.rate is None else f"{run.rate:,.0f} requests/s"
    problems = f"  PROBLEMS: {'; '.join(run.problems)}" if run.problems else ""
    print(f"  J-small  headrace {name:20} {rate:>20} in {run.seconds:5.2f} s{problems}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
