"""Run the benchmark: every SPEC §10 row against one fresh embedded broker, then the table."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from benchmarks._harness import Bench, Row
from benchmarks._rows import ROWS
from stream.cli.display import render_table
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.worker.processes import stop_on_sigterm

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Measure the SPEC §10 targets in one run."
    )
    parser.add_argument("--quick", action="store_true", help="smaller loads: about a minute")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-bench-"))
    print(_machine(quick=args.quick), flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    with stop_on_sigterm(), EmbeddedBroker(free_port(), log_path=log_dir / "broker.log") as broker:
        print(f"broker: embedded Tansu on {broker.address} (pid {broker.pid}); logs in {log_dir}/")
        bench = Bench(broker.address, log_dir, quick=args.quick)
        for title, measure in ROWS:
            print(f"measuring: {title} ...", flush=True)
            row_started = time.monotonic()
            try:
                rows += measure(bench)
            except Exception as exc:  # one broken row must not hide the others
                rows.append(
                    Row("!", f"{title}: failed", None, "", how=f"{type(exc).__name__}: {exc}")
                )
            print(f"  done in {time.monotonic() - row_started:.1f} s", flush=True)
    print()
    print(_table(rows))
    print()
    for row in rows:
        if row.how:
            print(f"[{row.label}] {row.how}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


def _machine(*, quick: bool) -> str:
    cores = os.cpu_count() or 0
    model = _cpu_model()
    return (
        f"headrace bench ({'quick' if quick else 'full'}): {cores} cores{model}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}\n"
        f"note: timings on a shared {cores}-core machine are noisy: the worker, the broker and "
        "this process share the cores; compare the ratios, measured within this one run"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f" ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return ""


def _table(rows: list[Row]) -> str:
    lines = [
        {
            "#": row.label,
            "what": row.what,
            "measured": "skipped"
            if row.measured is None
            else f"{_number(row.measured)} {row.unit}",
            "target": "-"
            if row.target is None
            else f"{'<=' if row.lower_is_better else '>='} {_number(row.target)} {row.unit}",
            "vs target": "-" if row.ratio is None else f"{row.ratio:.2f}x",
            "status": row.status,
        }
        for row in rows
    ]
    return render_table(pa.Table.from_pylist(lines), max_rows=len(lines))


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
