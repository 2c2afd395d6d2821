"""The run: generated requests through the decoder, the batcher and the server, micro-batch by
micro-batch, each outcome checked against what its request deserves."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines import formats
from pipelines.formats import Format
from stream.headers import dead_letter_headers
from stream.types import DeadLetter, Envelope, Headers, Outcome, Partition, Result
from stream.worker.batcher import Batcher
from stream.worker.decoding import Decoded
from tests.fuzz.fuzzer import Fuzzer
from tests.fuzz.headers import odd_headers
from tests.fuzz.mutations import MUTATIONS
from tests.fuzz.targets import Target, targets

SPEC_ERROR_TYPES = frozenset(  # SPEC §5, written out: the oracle must not trust the code
    {
        "decode_error",
        "schema_error",
        "step_error",
        "step_timeout",
        "output_error",
        "too_large",
        "expired",
    }
)


@dataclass(frozen=True, slots=True)
class Case:
    """A generated request: what made it, and whether it must be served (``good``)."""

    envelope: Envelope
    kind: str
    good: bool


@dataclass(slots=True)
class Report:
    """What a fuzz run saw; ``problems`` must stay empty."""

    seed: int
    requests: int = 0
    results: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problem(self, case: Case, index: int, what: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"seed {self.seed} request {index} ({case.kind}): {what}")

    def summary(self) -> str:
        by_type = ", ".join(f"{kind} {count}" for kind, count in sorted(self.dead_letters.items()))
        return (
            f"fuzz seed {self.seed}: {self.requests} requests in {self.seconds:.1f} s: "
            f"{self.results} results, {sum(self.dead_letters.values())} dead letters "
            f"({by_type}); {len(self.problems)} problems"
        )


# ------------------------------------------------------------------ the run


def generate(fz: Fuzzer, target: Target, offset: int) -> Case:
    weights = [weight for weight, _ in MUTATIONS]
    mutation = fz.rng.choices([mutation for _, mutation in MUTATIONS], weights)[0]
    payload, headers, served = mutation(fz, target)
    kind = f"{target.name}/{mutation.__name__}"
    if fz.rng.random() < 0.4:
        headers, harmless = odd_headers(fz, headers, target)
        served = served and harmless
        kind += "+headers"
    envelope = Envelope(
        Partition(f"{target.name}-requests", 0), offset, b"key", payload, headers, 1_700_000_000_000
    )
    return Case(envelope, kind, served)


def check(report: Report, case: Case, index: int, outcome: Outcome) -> None:
    """One outcome against what the request deserves."""
    if outcome.envelope is not case.envelope:
        report.problem(case, index, "outcome belongs to another request")
    if isinstance(outcome, DeadLetter):
        report.dead_letters[outcome.error.error_type] += 1
        if outcome.error.error_type not in SPEC_ERROR_TYPES:
            report.problem(case, index, f"error type {outcome.error.error_type!r} is not SPEC's")
        if case.good:
            report.problem(
                case, index, f"a good request was dead-lettered: {outcome.error.message}"
            )
        headers = _encodable(
            dead_letter_headers(case.envelope, outcome.error, group_id="fuzz", failed_at_ms=0)
        )
    else:
        report.results += 1
        headers = _encodable(outcome.headers)
        if case.good and not _rows_match(outcome):
            report.problem(case, index, "a good request's result does not hold its rows")
    if headers:
        report.problem(case, index, headers)


def _encodable(headers: Headers) -> str:
    """What a producer could not send, or ``""``."""
    for key, value in headers:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return f"header name {key!r} is not UTF-8"
        if not isinstance(value, bytes):
            return f"header {key!r} is {type(value).__name__}, not bytes"
    return ""


def _rows_match(result: Result) -> bool:
    """Whether a client reads the result back, with the request's row count."""
    try:
        fmt = formats.format_for_content_type(dict(result.headers)["content-type"].decode())
        served = formats.decode_response(result.value, fmt or Format.CUSTOM)
    except Exception:  # a result a client cannot read is a problem of its own
        return False
    return fmt is Format.CUSTOM or (isinstance(served, pa.Table) and served.num_rows == result.rows)


def run(seed: int, requests: int, pipelines: Sequence[Target] | None = None) -> Report:
    """``requests`` generated requests through decode, batching and serving; a report of it."""
    started = time.perf_counter()
    fz = Fuzzer(seed)
    report = Report(seed)
    chosen = list(pipelines) if pipelines is not None else targets()
    index = 0
    while index < requests:
        target = fz.rng.choices(chosen, [5, 3, 2][: len(chosen)])[0]
        size = min(fz.rng.randint(1, 50), requests - index)
        cases = [generate(fz, target, index + i) for i in range(size)]
        _micro_batch(report, target, cases, index)
        index += size
    report.requests = index
    report.seconds = time.perf_counter() - started
    return report


def _micro_batch(report: Report, target: Target, cases: list[Case], first: int) -> None:
    """Decode each case, batch those that decode as the worker does, serve, check each."""
    outcomes: dict[int, Outcome] = {}
    by_envelope = {id(case.envelope): (first + i, case) for i, case in enumerate(cases)}
    batcher = Batcher(1000, 5, lambda: 0.0)
    batches = []
    for position, case in enumerate(cases):
        try:
            decoded = target.decoder(case.envelope)
            if isinstance(decoded, Decoded):
                batches += batcher.add(decoded)
            else:
                outcomes[id(case.envelope)] = decoded
        except Exception:
            report.problem(
                case, first + position, "escaped the decoder: " + traceback.format_exc(limit=-3)
            )
    for batch in [*batches, *batcher.drain()]:
        try:
            served = target.server.serve(batch.requests)
        except Exception:
            index, case = by_envelope[id(batch.requests[0].envelope)]
            report.problem(case, index, "escaped the server: " + traceback.format_exc(limit=-3))
            continue
        if len(served) != len(batch.requests):
            index, case = by_envelope[id(batch.requests[0].envelope)]
            report.problem(
                case, index, f"{len(served)} outcomes for {len(batch.requests)} requests"
            )
        for outcome in served:
            outcomes[id(outcome.envelope)] = outcome
    for envelope_id, (index, case) in by_envelope.items():
        outcome = outcomes.get(envelope_id)
        if outcome is None:
            report.problem(case, index, "no outcome")
        else:
            check(report, case, index, outcome)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    report = run(args.seed, args.requests)
    print(report.summary())
    for problem in report.problems:
        print(problem, file=sys.stderr)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
