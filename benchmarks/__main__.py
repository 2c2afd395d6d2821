"""Run the side-by-side benchmark: every tool on every workload, repetitions interleaved, a
fresh embedded broker per repetition, then the tables of SPEC §10."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import confluent_kafka
import onnxruntime as ort

from benchmarks._check import Reference, reference
from benchmarks._harness import MODELS, REPO, Bench, Run, Workload, bench_config, sample_rows
from benchmarks._ort import bare_rows_per_second
from benchmarks._report import TOOL_TITLES, Results, render
from benchmarks._rows import Latency, latency, sigkill
from benchmarks._tools import TOOLS, quix_python
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.worker.processes import stop_on_sigterm

__all__ = ["main"]

_LAST_RUN = REPO / "benchmarks" / "last-run.md"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="headrace side by side with its peers (SPEC §10)."
    )
    parser.add_argument("--quick", action="store_true", help="smaller loads, one repetition")
    parser.add_argument("--repetitions", type=int, help="default: 3 (quick: 1)")
    parser.add_argument(
        "--only",
        help="comma-separated workloads (e.g. A-small,J-small) and/or tools (e.g. headrace,quix) "
        "to run, for iterating: no latency or SIGKILL runs then",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply each workload's request count (longer drains, steadier rates)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the report (default: {_LAST_RUN.name} for a full run, the log folder for a "
        "quick, partial (--only) or rescaled one)",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    repetitions: int = args.repetitions or (1 if quick else 3)
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-bench-"))
    partial = quick or bool(args.only) or args.scale != 1.0
    out: Path = args.out or (log_dir / "last-run.md" if partial else _LAST_RUN)
    _build_heavy()
    tools = [tool for tool in TOOLS if tool != "quix" or quix_python() is not None] + ["bare"]
    only = set(args.only.split(",")) if args.only else set()
    if "quix" not in tools:
        print("no .venv-quix (make bench creates it): the Quix Streams column is left out")
    header = _machine(quick=quick, repetitions=repetitions)
    print(header, flush=True)
    started = time.monotonic()
    requests = {"J": 5_000 if quick else 20_000, "A": 100 if quick else 400}
    workloads = [
        Workload.make(kind, model, int(requests[kind] * args.scale))
        for model in ("small", "heavy")
        for kind in "JA"
    ]
    if only:
        workloads = [w for w in workloads if w.label in only] or workloads
        tools = [tool for tool in tools if tool in only] or tools
    results = Results({workload.label: workload.requests for workload in workloads})
    machine = _Machine()
    with stop_on_sigterm():
        for repetition in range(1, repetitions + 1):
            order = tools[repetition - 1 :] + tools[: repetition - 1]
            _repetition(
                repetition, repetitions, log_dir, quick, order, workloads, results, full=not only
            )
    elapsed = time.monotonic() - started
    report = "\n\n".join(
        [
            header,
            render(results, tools),
            _notes(results, machine.others(), elapsed),
        ]
    )
    print("\n" + report)
    out.write_text(report + "\n")
    print(f"\nwritten to {out}; total {elapsed:.0f} s")
    return 0


def _repetition(  # noqa: PLR0917  # main's state, passed on
    repetition: int,
    repetitions: int,
    log_dir: Path,
    quick: bool,
    tools: list[str],
    workloads: list[Workload],
    results: Results,
    *,
    full: bool = True,
) -> None:
    """Every tool (bare onnxruntime among them) on every workload on one fresh broker, then
    (``full``) the latencies and, in the last repetition, the SIGKILL recovery."""
    rows = sample_rows()
    references = {model: reference(path, rows) for model, path in MODELS.items()}
    with EmbeddedBroker(free_port(), log_path=log_dir / f"broker-{repetition}.log") as broker:
        bench = Bench(broker.address, log_dir, quick=quick, broker_pid=broker.pid)
        print(f"repetition {repetition}: broker {broker.address}, logs in {log_dir}/")
        for workload in workloads:
            for tool in tools:
                if tool == "raw" and workload.model == "heavy":
                    continue  # the same bytes as the small model's
                checked = None if tool == "raw" else references[workload.model]
                results.runs.append(_measure(bench, tool, workload, repetition, checked))
        if not full:
            return
        small = bench_config("small", log_dir)
        try:
            found = latency(bench, small, repetition)
        except Exception as exc:  # reported, and the run goes on
            found = f"failed: {type(exc).__name__}: {exc}"
        if isinstance(found, str):
            results.latency_notes.append(found)
        else:
            results.latencies.append(found)
        print(f"  latency: {found if isinstance(found, str) else _short(found)}", flush=True)
        if repetition == repetitions:
            try:
                killed = sigkill(bench, small)
            except Exception as exc:  # reported, and the run goes on
                results.sigkill = f"failed: {type(exc).__name__}: {exc}"
            else:
                results.sigkill = killed
                print(f"  SIGKILL: {killed.lost:,} lost, {killed.duplicates:,} repeated")


def _measure(
    bench: Bench, tool: str, workload: Workload, repetition: int, checked: Reference | None
) -> Run:
    began = time.monotonic()
    try:
        if tool == "bare":
            run = _bare(workload, repetition, 3 if bench.quick else 20)
        else:
            run = bench.measure(
                tool, TOOLS[tool], workload, repetition=repetition, reference=checked
            )
    except Exception as exc:  # one broken run must not hide the others
        run = Run(tool, workload.label, repetition, None, 0.0, (f"{type(exc).__name__}: {exc}",))
    rate = "failed" if run.rate is None else f"{run.rate:,.0f} {workload.unit}"
    problems = f"  PROBLEMS: {'; '.join(run.problems)}" if run.problems else ""
    first = "" if run.first_s is None else f", first result at {run.first_s:.2f} s"
    print(
        f"  {workload.label:8} {TOOL_TITLES[tool]:23} {rate:>20} in {run.seconds:5.2f} s"
        f" (wall {time.monotonic() - began:4.1f} s{first}){problems}",
        flush=True,
    )
    return run


def _bare(workload: Workload, repetition: int, seconds: float) -> Run:
    """Bare onnxruntime on the workload's rows in 1,000-row batches (the sample rows)."""
    rows = workload.requests * workload.rows_per_request
    began = time.perf_counter()
    rate = bare_rows_per_second(
        workload.model_path, sample_rows(), passes=max(1, rows // 1000), seconds=seconds
    )
    return Run("bare", workload.label, repetition, rate, time.perf_counter() - began)


class _Machine:
    """CPU the whole machine spent from now on, against this process and its children's:
    what other work on a shared machine took from the run."""

    def __init__(self) -> None:
        self._busy, self._ours, self._began = _busy_seconds(), _our_seconds(), time.monotonic()

    def others(self) -> str:
        """E.g. "other processes used 35% of the machine's 2 cores meanwhile"."""
        busy, ours = _busy_seconds(), _our_seconds()
        if busy is None or self._busy is None:
            return "what other processes used of the machine is unknown"
        cores = os.cpu_count() or 1
        share = (busy - self._busy - (ours - self._ours)) / (time.monotonic() - self._began)
        return (
            f"other processes used {max(share, 0.0) / cores:.0%} of the machine's {cores} cores "
            f"meanwhile (1-min load average at the end: {os.getloadavg()[0]:.1f})"
        )


def _busy_seconds() -> float | None:
    """CPU seconds the machine spent busy since boot (every core; /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _our_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def _short(found: Latency) -> str:
    return (
        f"broker one-way p99 {found.broker[1]:.1f} ms (at 1,000/s {found.broker_paced[1]:.1f}); "
        f"client.infer p99 one at a time {found.alone[1]:.1f} ms, at 1,000/s "
        f"{found.paced[1]:.1f} ms"
    )


def _build_heavy() -> None:
    path = MODELS["heavy"]
    if not path.exists():
        print(f"building {path.relative_to(REPO)} (once) ...", flush=True)
        script = [sys.executable, "scripts/build_models.py", "--only", "heavy"]
        subprocess.run(script, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def _machine(*, quick: bool, repetitions: int) -> str:
    cores = os.cpu_count() or 0
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"headrace bench ({'quick' if quick else 'full'}, {repetitions} repetition"
        f"{'s' if repetitions > 1 else ''}), {today}: {cores} cores{_cpu_model()}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, confluent-kafka {confluent_kafka.version()} "
        f"(librdkafka {confluent_kafka.libversion()[0]}){_quix_version()}; headrace at "
        f"{_commit()}"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f" ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return ""


def _commit() -> str:
    """The checkout's commit, "+ local changes" when the working tree differs from it."""
    try:
        run = [("git", "rev-parse", "--short", "HEAD"), ("git", "status", "--porcelain")]
        head, changes = (
            subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            for command in run
        )
    except (OSError, subprocess.SubprocessError):
        return "an unknown commit"
    return head + (" + local changes" if changes else "")


def _quix_version() -> str:
    python = quix_python()
    if python is None:
        return ""
    code = (
        "import confluent_kafka, quixstreams; "
        "print(quixstreams.__version__, confluent_kafka.version())"
    )
    try:
        found = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "; Quix Streams: version unknown"
    return f"; Quix Streams {found[0]} (confluent-kafka {found[1]}, its own virtualenv)"


def _notes(results: Results, others: str, elapsed: float) -> str:
    notes = [
        "How: each repetition starts a fresh embedded broker (Tansu, in memory, 127.0.0.1); "
        "on it every tool gets its own pre-filled 4-partition input topic and consumer group, "
        "one tool at a time, in an order rotated per repetition. A run is timed from its "
        "consumer group becoming Stable (partitions assigned) to its last result's CreateTime "
        "(the first fetch included, see the drain in two parts: 0.1-0.2 s for the tools that "
        "leave the start position to librdkafka, which waits 100 ms before it resolves "
        "auto.offset.reset for a group with no committed offsets; headrace looks the committed "
        "offsets up itself at the assignment); Quix Streams "
        "stamps a result with its request's timestamp, so its app records when it ran the "
        "model for the first and the last request instead. Medians of the repetitions, "
        "min-max in brackets; ratios are of the medians, per-repetition ratios in brackets; "
        "'after the first result' ratios are of the rates from the first result to the last.",
        "headrace: one `headrace run` worker process with configs/ccfraud.yaml or heavy.yaml, "
        "model step only (no `fraud` check), `processing.dataset: [out]`. Quix Streams: "
        "benchmarks/quix_app.py, `app.dataframe(topic).apply(infer).to_topic(out)`, "
        "Application defaults (at-least-once, commit every 5 s) with `auto_offset_reset="
        "earliest` and `session.timeout.ms=6000`. Minimal loop: benchmarks/_loop.py, "
        "consume(1000) -> one JSON parse per consumed batch / one Arrow decode per message -> one "
        "session.run per <= 1,000 rows -> produce without callbacks -> flush + commit per consumed "
        "batch (up to 1,000 messages). "
        "Raw: benchmarks/_copy.py, consume -> produce of the same bytes, no model. The loop "
        "and the raw copy use the worker's librdkafka settings. Bare onnxruntime: "
        "session.run on 1,000-row batches of the same rows, in this process, between runs.",
        f"The run took {elapsed / 60:.1f} min; {others}.",
    ]
    if results.latencies:
        notes.append(f"Latency (each repetition): {results.latencies[0].how}")
    if results.latency_notes:
        notes.append("Latency: " + "; ".join(results.latency_notes))
    if results.sigkill is not None and not isinstance(results.sigkill, str):
        notes.append(f"SIGKILL: {results.sigkill.how}")
    return "\n\n".join(notes)


if __name__ == "__main__":
    sys.exit(main())
