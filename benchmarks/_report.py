"""The side-by-side table and the targets of SPEC §10, as markdown: medians of the
repetitions with their min-max, and each ratio against its target."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks._harness import Run
from benchmarks._rows import Latency, Sigkill

__all__ = ["TOOL_TITLES", "WORKLOAD_TITLES", "Results", "render"]

_DASH = "\N{EN DASH}"

TOOL_TITLES = {
    "headrace": "headrace",
    "quix": "Quix Streams app",
    "loop": "minimal loop",
    "raw": "raw consume+re-produce",
    "bare": "bare onnxruntime",
}
WORKLOAD_TITLES = {
    "J-small": "J: {n:,} single-row JSON, small MLP (requests/s)",
    "A-small": "A: {n:,} x 1,000-row Arrow, small MLP (rows/s)",
    "J-heavy": "J, compute-bound MLP (requests/s)",
    "A-heavy": "A, compute-bound MLP (rows/s)",
}


@dataclass(slots=True)
class Results:
    """Everything one run of the benchmark measured."""

    requests: dict[str, int]  # workload label -> requests
    runs: list[Run] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    latency_notes: list[str] = field(default_factory=list)
    sigkill: Sigkill | str | None = None

    def rates(self, tool: str, workload: str, *, steady: bool = False) -> dict[int, float]:
        """Repetition -> rate of ``tool`` on ``workload`` (runs that finished); with
        ``steady``, the rate from the first result to the last."""
        found = {}
        for run in self.runs:
            rate = run.steady if steady else run.rate
            if run.tool == tool and run.workload == workload and rate is not None:
                found[run.repetition] = rate
        return found


def render(results: Results, tools: Sequence[str]) -> str:
    """The throughput table, the targets, CPU per row, start-up, and what was checked."""
    return "\n\n".join(
        [
            _throughput(results, tools),
            _targets(results),
            _cpu(results, tools),
            _first(results, tools),
            _checked(results),
        ]
    )


def _throughput(results: Results, tools: Sequence[str]) -> str:
    columns = list(tools)
    lines = [
        "| workload | " + " | ".join(TOOL_TITLES[tool] for tool in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for workload, requests in results.requests.items():
        cells = []
        for tool in columns:
            rates = list(results.rates(tool, workload).values())
            if tool == "raw" and workload.endswith("heavy"):
                cells.append("— (same bytes as above)")
            else:
                cells.append(_spread(rates))
        title = WORKLOAD_TITLES[workload].format(n=requests)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu(results: Results, tools: Sequence[str]) -> str:
    """CPU per 1,000 rows from the assignment to the end: the tool's process and the broker's
    (less sensitive than the rates to what else runs on a shared machine)."""

    def cell(runs: list[Run]) -> str:
        mine, broker = _median(runs, lambda r: r.cpu_ms), _median(runs, lambda r: r.broker_cpu_ms)
        return _two(mine, "{:.1f}".format, broker, " + {:.1f}".format)

    title = (
        "CPU milliseconds per 1,000 rows (J: 1,000 requests; A: one request) from the "
        "assignment to the end, medians: the tool's process + the broker's"
    )
    return _per_tool(results, tools, title, cell)


def _first(results: Results, tools: Sequence[str]) -> str:
    """Start-up apart from the rest: a short drain (A is 0.3 s) is a third start-up."""

    def cell(runs: list[Run]) -> str:
        first, steady = _median(runs, lambda r: r.first_s), _median(runs, lambda r: r.steady)
        return _two(
            first, lambda s: f"{s * 1000:,.0f} ms", steady, lambda r: f", then {_number(r)}/s"
        )

    title = (
        "The drain in two parts, medians: milliseconds from the assignment to the first result, "
        "then the rate from the first result to the last (the minimal loop publishes each "
        "consumed batch at its end, so much of its drain counts as start-up here)"
    )
    return _per_tool(results, tools, title, cell)


def _median(runs: list[Run], pick: Callable[[Run], float | None]) -> float | None:
    """The median of what ``pick`` finds in the runs that have it; None if none has."""
    found = [value for value in map(pick, runs) if value is not None]
    return statistics.median(found) if found else None


def _two(
    main: float | None,
    shown: Callable[[float], str],
    extra: float | None,
    added: Callable[[float], str],
) -> str:
    """A table cell: ``main`` as ``shown``, then ``extra`` as ``added`` where there is one;
    "-" without ``main``."""
    if main is None:
        return "-"
    return shown(main) + ("" if extra is None else added(extra))


def _per_tool(
    results: Results, tools: Sequence[str], title: str, cell: Callable[[list[Run]], str]
) -> str:
    columns = [tool for tool in tools if tool != "bare"]
    lines = [
        title,
        "",
        "| workload | " + " | ".join(TOOL_TITLES[tool] for tool in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for workload in results.requests:
        cells = [
            "—"
            if tool == "raw" and workload.endswith("heavy")
            else cell([r for r in results.runs if r.tool == tool and r.workload == workload])
            for tool in columns
        ]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "failed"
    middle = statistics.median(values)
    if len(values) == 1:
        return _number(middle)
    return f"{_number(middle)} ({_number(min(values))}{_DASH}{_number(max(values))})"


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f} M"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


@dataclass(frozen=True, slots=True)
class _Target:
    what: str
    headrace: str
    loop: str
    target: str
    met: bool | None


def _targets(results: Results) -> str:
    targets = [
        _versus(results, "J-small", "quix", 2.0, "J: requests/s, vs Quix Streams"),
        _versus(results, "A-small", "quix", 1.2, "A: rows/s, vs Quix Streams"),
        _versus(results, "J-heavy", "bare", 0.5, "J, compute-bound: share of bare onnxruntime"),
        _versus(results, "A-heavy", "bare", 0.85, "A, compute-bound: share of bare onnxruntime"),
        _ahead(results),
        *_latency(results),
        _lost(results),
    ]
    lines = [
        "| SPEC §10 target | headrace | minimal loop (the limit) | target | status |",
        "|---|---:|---:|---:|---|",
    ]
    for target in targets:
        status = "-" if target.met is None else ("meets" if target.met else "**MISSES**")
        lines.append(
            f"| {target.what} | {target.headrace} | {target.loop} | {target.target} | {status} |"
        )
    return "\n".join(lines)


def _ratio(
    results: Results, tool: str, workload: str, other: str, *, steady: bool = False
) -> tuple[float, list[float]] | None:
    """median(tool) / median(other), and the ratios within each repetition (``steady``: of
    the rates after the first result)."""
    mine = results.rates(tool, workload, steady=steady)
    theirs = results.rates(other, workload, steady=steady)
    if not mine or not theirs:
        return None
    ratio = statistics.median(mine.values()) / statistics.median(theirs.values())
    return ratio, [mine[rep] / theirs[rep] for rep in mine if rep in theirs]


def _versus(results: Results, workload: str, other: str, goal: float, what: str) -> _Target:
    form = "{:.0%}" if other == "bare" else "{:.2f}x"

    def text(found: tuple[float, list[float]] | None, tool: str) -> str:
        if found is None:
            tried = {run.tool for run in results.runs if run.workload == workload}
            return "failed" if {tool, other} <= tried else "not run"
        ratio, paired = found
        if len(paired) < 2:
            return form.format(ratio)
        low, high = form.format(min(paired)), form.format(max(paired))
        return f"{form.format(ratio)} ({low}{_DASH}{high})"

    mine = _ratio(results, "headrace", workload, other)
    target = ">= " + form.format(goal)
    met = None if mine is None else mine[0] >= goal
    loop = text(_ratio(results, "loop", workload, other), "loop")
    headrace = text(mine, "headrace")
    steady = None if other == "bare" else _ratio(results, "headrace", workload, other, steady=True)
    if mine is not None and steady is not None:  # for the reader: start-up left out
        headrace += f"; {form.format(steady[0])} after the first result"
    return _Target(what, headrace, loop, target, met)


def _ahead(results: Results) -> _Target:
    """Ahead of every peer: of the tools a user would pick instead, Quix Streams (the loop is
    our own limit, the raw copy runs no model)."""
    what = "A, compute-bound: ahead of every peer (vs Quix Streams)"
    found = _versus(results, "A-heavy", "quix", 1.0, what)
    ratio = _ratio(results, "headrace", "A-heavy", "quix")
    return _Target(
        what, found.headrace, found.loop, "> 1.00x", None if ratio is None else ratio[0] > 1.0
    )


def _latency(results: Results) -> list[_Target]:
    if not results.latencies:
        note = "; ".join(results.latency_notes) or "not measured"
        return [_Target("client.infer p99 vs the broker's one-way p99", note, "-", "-", None)]

    def median(pick: Callable[[Latency], tuple[float, float]], at: int) -> float:
        return statistics.median(pick(found)[at] for found in results.latencies)

    broker = median(lambda found: found.broker, 1)
    loaded = median(lambda found: found.broker_paced, 1)
    rows = []
    for what, pick, goal, paced in (
        ("one at a time", lambda found: found.alone, 3.0, False),
        ("at 1,000 requests/s", lambda found: found.paced, 4.0, True),
    ):
        p50, p99 = median(pick, 0), median(pick, 1)
        ratio = p99 / broker
        text = f"{ratio:.1f}x (p99 {p99:.1f} ms, p50 {p50:.1f}; broker p99 {broker:.1f} ms"
        if paced:  # for the reader: the broker's own one-way under the same load
            text += f"; {p99 / loaded:.1f}x the broker's one-way p99 at 1,000/s, {loaded:.1f} ms"
        text += ")"
        rows.append(
            _Target(
                f"client.infer of one row {what}: p99 / broker's one-way p99",
                text,
                "-",
                f"<= {goal:g}x",
                ratio <= goal,
            )
        )
    return rows


def _lost(results: Results) -> _Target:
    what = "worker SIGKILLed mid-stream, restarted: requests lost"
    found = results.sigkill
    if not isinstance(found, Sigkill):
        return _Target(what, found or "not measured", "-", "0", None)
    text = f"{found.lost:,} ({found.duplicates:,} repeated)"
    return _Target(what, text, "-", "0", found.lost == 0)


def _checked(results: Results) -> str:
    runs = [run for run in results.runs if run.tool != "bare"]
    bad = [run for run in runs if run.problems]
    total = sum(results.requests[run.workload] for run in runs)
    if not bad:
        return (
            f"Checked: all {total:,} results of the {len(runs)} Kafka runs — one per "
            "request (by key), `out.*` only, every value within 1e-3 of onnxruntime in-process "
            "(raw copies: one per request)."
        )
    lines = [f"Checked {len(runs)} Kafka runs ({total:,} requests); problems:"]
    lines += [
        f"- {TOOL_TITLES[run.tool]}, {run.workload}, repetition {run.repetition}: "
        + "; ".join(run.problems)
        for run in bad
    ]
    return "\n".join(lines)
