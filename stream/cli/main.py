"""The ``headrace`` command line (SPEC §8). Exit codes: 0 ok, 1 runtime failure, 2 bad usage.

Each command imports what it needs when it runs, so ``headrace --help`` loads neither
onnxruntime nor Kafka.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines.config import Settings
from pipelines.errors import ConfigError, PipelineError
from stream.errors import StreamError

__all__ = ["main", "positive"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from stream.ops.logs import configure_logging

    configure_logging(args.log_level)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"headrace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PipelineError, StreamError) as exc:
        print(f"headrace: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace", description="Streaming model inference on Kafka."
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    _command(commands, _validate, "load a config and its models; print schemas and version")
    run = _command(commands, _run, "serve the pipeline from Kafka until SIGTERM")
    run.add_argument(
        "--replicas",
        type=positive,
        default=None,
        help="worker processes in the consumer group (default: the config's)",
    )
    _command(commands, _reload, "re-read the config in running workers (SIGHUP), swap the pipeline")
    _command(commands, _topics, "create the input, output and dead-letter topics")

    broker = commands.add_parser("broker", help="run the embedded broker in the foreground")
    broker.add_argument("--port", type=positive, default=19092)
    broker.set_defaults(command=_broker)

    infer = _command(commands, _infer, "send the request in a file and print its result")
    infer.add_argument("--file", type=Path, required=True, help=".arrow, .json or .df.json")
    infer.add_argument("--format", choices=("pandas-records", "arrow", "custom-json"))
    infer.add_argument("--dataset", action="append", help="columns or groups (comma-separated)")
    infer.add_argument("--dataset-exclude", action="append", help="columns or groups to drop")
    infer.add_argument("--out", type=Path, help="write the result to a .arrow or .json file")
    infer.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")

    batch = _command(commands, _batch, "run a file's rows through in batched requests")
    batch.add_argument("--file", type=Path, required=True, help=".arrow, .json or .df.json")
    batch.add_argument("--batch-size", type=positive, default=50, help="rows per request")
    batch.add_argument("--executors", type=positive, default=4, help="requests in flight")
    batch.add_argument("--out", type=Path, help="write the rows to a .arrow or .json file")
    batch.add_argument("--timeout", type=float, default=15.0, help="seconds per request")
    batch.add_argument("--fail-fast", action="store_true", help="stop at the first failure")

    from stream.cli.dlq import add_commands as add_dlq_commands

    add_dlq_commands(commands)

    demo = commands.add_parser("demo", help="the main job: sample requests through the pipelines")
    demo.add_argument("config", type=Path, nargs="?", default=None)
    demo.add_argument(
        "--project",
        type=Path,
        default=None,
        metavar="DIR",
        help="the folder with configs/, models/ and data/ (default: the current directory, "
        "else the checkout of an editable install)",
    )
    demo.set_defaults(command=_demo)
    return parser


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    function: Callable[[argparse.Namespace], int],
    help: str,  # argparse's name
) -> argparse.ArgumentParser:
    """A subcommand named after ``function`` (``_run`` -> ``run``) that takes a CONFIG."""
    parser = commands.add_parser(function.__name__.lstrip("_"), help=help)
    parser.add_argument("config", type=Path)
    parser.set_defaults(command=function)
    return parser


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    from pipelines import load_settings
    from stream.kafka.admin import create_topics
    from stream.kafka.broker import connect_kafka
    from stream.worker.replicas import run_replicas
    from stream.worker.runtime import run_worker

    settings = load_settings(args.config)
    replicas = args.replicas or settings.replicas
    with connect_kafka(settings) as connection:
        create_topics(settings, connection.bootstrap)
        if replicas == 1:
            return run_worker(settings, connection.bootstrap)
        return run_replicas(args.config, replicas, connection.bootstrap, settings.metrics.port)


def _reload(args: argparse.Namespace) -> int:
    from pipelines import Pipeline
    from stream.worker.reload import signal_reload

    Pipeline.from_config(args.config)  # refuse here, with the reason, what a worker would refuse
    pids = signal_reload(args.config)
    if not pids:
        print(f"headrace: no running `headrace run {args.config}` found", file=sys.stderr)
        return EXIT_FAILURE
    print(f"asked {len(pids)} worker process(es) to reload: pids {', '.join(map(str, pids))}")
    return EXIT_OK


def _topics(args: argparse.Namespace) -> int:
    from pipelines import load_settings
    from stream.kafka.admin import create_topics
    from stream.kafka.broker import connect_kafka

    settings = load_settings(args.config)
    with connect_kafka(settings) as connection:
        created = create_topics(settings, connection.bootstrap)
        kafka = settings.kafka
        for topic in (kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic):
            state = "created" if topic in created else "exists"
            print(f"{topic}  {state}  ({kafka.partitions} partitions when created)")
        if connection.broker is not None:
            print(
                "note: the embedded broker started for this command stops with it, "
                "and its topics with it; run `headrace broker` first to keep one"
            )
    return EXIT_OK


def _broker(args: argparse.Namespace) -> int:
    from stream.kafka.broker import run_foreground

    return run_foreground(args.port)


def _validate(args: argparse.Namespace) -> int:
    from pipelines import Pipeline

    pipeline = Pipeline.from_config(args.config)
    settings = pipeline.settings
    print(f"pipeline  {pipeline.name}")
    print(f"version   {pipeline.version}")
    print(f"steps     {' -> '.join(pipeline.step_names)}")
    if pipeline.is_custom:
        print("input     custom JSON")
    else:
        print(f"input     {_schema_line(pipeline.input_schema)}")
        print(f"output    {_schema_line(pipeline.output_schema, prefix='out.')}")
    kafka = settings.kafka
    print(
        f"topics    {kafka.input_topic} -> {kafka.output_topic} (dead letters: "
        f"{kafka.dead_letter_topic}), group {kafka.group_id}, {kafka.partitions} partitions"
    )
    print(f"kafka     {kafka.bootstrap_servers}")
    if kafka.properties:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(kafka.redacted_properties().items()))
        print(f"properties {shown}")
    for warning in _security_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _security_warnings(settings: Settings) -> list[str]:
    properties = {
        k.lower(): str(v).upper() for k, v in settings.kafka.redacted_properties().items()
    }
    protocol = properties.get("security.protocol", "PLAINTEXT")
    warnings = []
    if protocol == "SASL_PLAINTEXT":
        warnings.append(
            "security.protocol SASL_PLAINTEXT sends SASL credentials unencrypted "
            "(and PLAIN mechanism passwords in clear text); use SASL_SSL"
        )
    return warnings


def _schema_line(schema: object, prefix: str = "") -> str:
    fields = list(schema) if schema is not None else []  # type: ignore[call-overload]
    if not fields:
        return "any columns"
    return ", ".join(f"{prefix}{field.name}: {field.type}" for field in fields)


def _infer(args: argparse.Namespace) -> int:
    import stream
    from stream.cli.display import render_result
    from stream.client.files import check_output_path, write_result

    try:
        out = None if args.out is None else check_output_path(args.out)
        with stream.connect(args.config) as client:
            result = client.infer_from_file(
                args.file,
                data_format=args.format,
                timeout=args.timeout,
                dataset=_names(args.dataset),
                dataset_exclude=_names(args.dataset_exclude),
            )
    except (ValueError, TypeError, OSError) as exc:  # the file or its format
        print(f"headrace infer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render_result(result))
    if out is not None:
        print(f"wrote {write_result(result, out)}")
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    import stream
    from stream.cli.display import render_result
    from stream.client.files import check_output_path, read_table_file, write_result

    try:
        out = None if args.out is None else check_output_path(args.out)
        table = read_table_file(args.file)
        with stream.BatchInferenceClient(args.config) as batch:
            result = batch.run(
                table,
                batch_size=args.batch_size,
                executors=args.executors,
                timeout=args.timeout,
                fail_fast=args.fail_fast,
            )
    except (ValueError, TypeError, OSError) as exc:  # the file or its format
        print(f"headrace batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(render_result(result))
    errors = result.column("error") if "error" in result.column_names else None
    failed = 0 if errors is None else len(errors) - errors.null_count
    requests = -(-table.num_rows // args.batch_size)
    print(f"{result.num_rows} rows in {requests} requests, {failed} rows failed")
    if out is not None:
        print(f"wrote {write_result(result, out)}")
    return EXIT_FAILURE if failed else EXIT_OK


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated ``--dataset`` values as one list."""
    if values is None:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _demo(args: argparse.Namespace) -> int:
    from stream.cli.demo import run_demo

    configs = [args.config] if args.config else None
    return run_demo(configs, args.project)
