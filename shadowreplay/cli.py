"""The ``shadowreplay`` command. The only place that prints errors and chooses exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from shadowreplay.contract import config as configmod
from shadowreplay.contract.config import METRICS_PORTS, STAGES, Config
from shadowreplay.contract.errors import ShadowError
from shadowreplay.runtime import LOG_FORMATS, LOG_LEVELS, configure_logging, tune_gc

log = logging.getLogger("shadowreplay")

EXAMPLE_CONFIG = Path(__file__).with_name("example.toml")
STAGE_COMMANDS = {"run": STAGES, **{stage: (stage,) for stage in STAGES}}


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, for an editable install too)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shadowreplay")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shadowreplay",
        description=(
            "Replay production traffic from access logs against staging and watch divergence.\n"
            "Logs arrive over the Fluentd forward protocol (collector), are kept on a bus\n"
            "(Kafka, or an embedded SQLite log), are re-sent to staging at N× recorded speed\n"
            "(replayer) and the responses are diffed (comparer), with Prometheus metrics."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", metavar="LEVEL",
                   help=f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]} (default INFO; any case)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default): 'time level logger: message' lines; json: one JSON object per line "
                        "(time, level, logger, message, exc), for log shippers")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help_: str, *, collect: bool, replay: bool, compare: bool) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", metavar="FILE", help="TOML config file (see `shadowreplay config example`)")
        sp.add_argument(
            "--bus",
            metavar="URL",
            help="sqlite:///path/to.db (embedded, default sqlite:///shadowreplay.db) or kafka://host:port[,host:port]",
        )
        port = METRICS_PORTS[STAGE_COMMANDS[name][0]]
        sp.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help=f"where /metrics, /healthz and /readyz are served (default metrics.listen, "
                             f"else 127.0.0.1:{port}: each stage has its own port)")
        if collect:
            sp.add_argument("--listen", metavar="HOST:PORT", help="forward-protocol listen address (default 127.0.0.1:24224)")
        if replay:
            sp.add_argument("--candidate", metavar="URL", help="base URL of the release under test (required)")
            sp.add_argument("--baseline", metavar="URL", help="base URL of the current release (optional)")
            sp.add_argument("--speed", type=float, metavar="N", help="replay at N× recorded speed (default 1)")
            sp.add_argument("--group", metavar="NAME", help="replayer consumer group (default shadow-replayer)")
            sp.add_argument(
                "--idle-exit",
                type=float,
                metavar="SECONDS",
                help="exit once caught up and idle this long (default: follow forever)",
            )
        if compare and not replay:
            sp.add_argument("--group", metavar="NAME", help="comparer consumer group (default shadow-comparer)")
        return sp

    stage("run", "run collector, replayer and comparer in one process", collect=True, replay=True, compare=True)
    stage("collect", "run the collector: forward protocol in, request records onto the bus", collect=True, replay=False, compare=False)
    stage("replay", "run the replayer: request records from the bus to staging, results onto the bus", collect=False, replay=True, compare=False)
    stage("compare", "run the comparer: results from the bus, diffs to /metrics", collect=False, replay=False, compare=True)

    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on this machine with a bundled access log and two local backends",
        description=(
            "Start two local backends (the current release, and a candidate with a changed field, "
            "a 500 on one route and a slower route), feed the bundled nginx JSON access log "
            "through the forward protocol into the collector, replay it at 10x speed, print a "
            "per-endpoint divergence table, and keep /metrics up until Ctrl-C."
        ),
    )
    demo.add_argument("--speed", type=float, default=10.0, metavar="N",
                      help="replay speed (default 10; the sample spans 200 s, so --speed 1 takes about 200 s)")
    demo.add_argument("--metrics-listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                      help="where /metrics and the divergence page are served (default 127.0.0.1:9464; "
                           "a free port if that one is taken)")
    demo.add_argument("--no-wait", action="store_true", help="exit after printing the table instead of serving /metrics")

    bus = sub.add_parser("bus", help="inspect the bus", description="Inspect the bus.").add_subparsers(
        dest="bus_command", required=True, metavar="SUBCOMMAND")
    dump = bus.add_parser("dump", help="print a topic's messages as JSON lines, from the beginning to its end "
                                        "as of now (joins no consumer group)",
                          description="Print a topic's messages as JSON lines, from the beginning to its end as "
                                      "of now. It reads the partitions directly: it joins no consumer group and "
                                      "commits nothing.")
    dump.add_argument("--config", metavar="FILE", help="TOML config file (for bus.url and the partitions)")
    dump.add_argument("--bus", metavar="URL", help="bus URL (default from config, else sqlite:///shadowreplay.db)")
    dump.add_argument("--topic", required=True, metavar="T", help="e.g. shadow.requests or shadow.results")
    dump.add_argument("--limit", type=int, default=0, metavar="N", help="stop after N messages (default: all)")
    dump.add_argument("--idle-seconds", type=float, default=10.0, metavar="S",
                      help="give up with an error when the bus answers nothing for S seconds (default 10)")
    dump.add_argument("--meta", action="store_true", help="wrap each message with partition, offset and timestamp")

    # -- collector commands (tail, ...) --
    from shadowreplay.collector.tail import add_arguments as add_tail_arguments

    tail = sub.add_parser(
        "tail",
        help="follow access-log files (like tail -F) and ship their lines to a collector, with acks",
        description=(
            "Follow access-log files across rename and copytruncate rotation, parse each line "
            "(nginx_json, ltsv, combined) and ship the records to a collector as acknowledged "
            "PackedForward chunks. The file position is saved (--state) only after the collector "
            "acknowledged, so restarting either side neither skips nor repeats lines."
        ),
    )
    add_tail_arguments(tail)
    # -- replayer commands --
    from shadowreplay.commands.replay import add_replay_arguments, add_replay_subcommands

    for stage_name in ("run", "replay"):
        add_replay_arguments(sub.choices[stage_name], workers=stage_name == "replay")
    add_replay_subcommands(sub.choices["replay"])
    # set by `replay --workers N` on its children: serve /metrics on this inherited socket
    sub.choices["replay"].add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)
    # -- comparer commands (diffs, report, noise, ...) --
    noise_sp = sub.add_parser("noise", help="noise rules for the comparer").add_subparsers(
        dest="noise_command", required=True, metavar="SUBCOMMAND"
    )
    from shadowreplay.commands import noise_learn

    noise_learn.add_arguments(noise_sp)
    compare_sp = sub.choices["compare"]
    compare_sp.add_argument(
        "--rediff",
        action="store_true",
        help="re-diff the stored divergences with the current config (after changing ignore rules), then exit",
    )
    compare_sp.add_argument("--store", metavar="FILE", help="with --rediff: the divergence store (default: comparer.store.path)")
    from shadowreplay.comparer.commands import REPORT_FORMATS, add_gate_arguments

    diffs_sp = sub.add_parser(
        "diffs",
        help="print stored divergences: endpoints by divergence rate with their diverging fields",
        description="Endpoints by divergence rate, with counts, noise and diverging fields, from the divergence store.",
    )
    report_sp = sub.add_parser(
        "report",
        help="write a self-contained HTML (or Markdown) summary of a replay run",
        description="A self-contained HTML or Markdown summary of the divergence store, for a release ticket.",
    )
    for sp in (diffs_sp, report_sp):
        sp.add_argument("--config", metavar="FILE", help="TOML config file")
        sp.add_argument("--bus", metavar="URL", help="bus URL (the store defaults to <bus file>.diffs.db beside a sqlite bus)")
        sp.add_argument("--store", metavar="FILE", help="divergence store (default: comparer.store.path)")
        sp.add_argument("--since", metavar="T", help="only divergences stored since T: 30m, 2h, 7d, Unix seconds or ISO 8601")
    diffs_sp.add_argument("--endpoint", metavar="E", help='only this endpoint, e.g. "GET /api/products/{id}"')
    diffs_sp.add_argument("--json", action="store_true", help="one JSON object per endpoint (see docs/verdict.md)")
    report_sp.add_argument("--format", choices=REPORT_FORMATS, help="default: from --output's suffix, else html")
    report_sp.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    report_sp.add_argument("--title", default="shadowreplay report", help="heading of the report")
    gate_sp = sub.add_parser(
        "gate",
        help="release gate for CI: exit 1 when an endpoint really diverges or got slower, 2 when there is no verdict",
        description=(
            "Judge the divergence store after a replay: exit 0 when every endpoint passes, 1 when an endpoint's "
            "real divergence rate is above --max-divergence-rate or it is a latency regression (printing the "
            "endpoint, rate, threshold, fields and p50/p95 latency in ms), 2 when there is no verdict (no store, "
            "too few results compared, or too many not compared because a target was not reached). "
            "Defaults come from [comparer.gate]."
        ),
    )
    add_gate_arguments(gate_sp)

    cfg = sub.add_parser("config", help="print an example config or check one",
                         description="Print an example config or check one.").add_subparsers(
        dest="config_command", required=True, metavar="SUBCOMMAND"
    )
    cfg.add_parser("example", help="print a commented example config",
                   description="Print a commented config with every key and its default.")
    check = cfg.add_parser("check", help="validate a config file",
                           description="Validate a config file as `run` would, without binding a port or opening "
                                       "the bus: unknown keys, bad values, log formats and field maps, path patterns, "
                                       "routes, replay rules, stream endpoints, TLS files that do not load, the "
                                       "page's credential files and the secrets' environment variables (read from "
                                       "this environment) are errors naming the key (exit status 2). The candidate "
                                       "URL is not required (it is often given as --candidate).")
    check.add_argument("file", metavar="FILE", help="the TOML config file to check")
    # -- operations commands --
    from shadowreplay.deploy import add_arguments as add_deploy_arguments

    add_deploy_arguments(sub)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = configmod.load(getattr(args, "config", None))
    cfg = configmod.override(cfg, "bus", url=getattr(args, "bus", None))
    cfg = configmod.override(cfg, "metrics", listen=getattr(args, "metrics_listen", None))
    cfg = configmod.override(cfg, "collector", listen=getattr(args, "listen", None))
    if args.command in ("run", "replay"):
        cfg = configmod.override(
            cfg,
            "replayer",
            candidate=args.candidate,
            baseline=args.baseline,
            speed=args.speed,
            group=args.group,
            idle_exit_seconds=args.idle_exit,
        )
        from shadowreplay.commands.replay import replay_overrides

        cfg = replay_overrides(cfg, args)
    elif args.command == "compare":
        cfg = configmod.override(cfg, "comparer", group=args.group)
    configmod.validate(cfg)
    return cfg


async def _run_stages(cfg: Config, stages: tuple[str, ...], args: argparse.Namespace) -> None:
    import socket

    from shadowreplay.app import Pipeline

    fd = getattr(args, "metrics_fd", None)
    pipeline = Pipeline(cfg, stages, metrics_sock=socket.socket(fileno=fd) if fd is not None else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with pipeline:
        from shadowreplay.status import StatusLine  # operations: live line on a terminal, logs otherwise

        status_stop = asyncio.Event()
        # JSON logs stay one object per line: the status goes to the log, never redrawn in place.
        tty = False if args.log_format == "json" else None
        status = asyncio.create_task(StatusLine(pipeline.registry, sys.stderr, stages=stages, tty=tty).run(status_stop))
        waiter = asyncio.create_task(pipeline.wait())
        stopper = asyncio.create_task(stop.wait())
        done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        status_stop.set()
        await status
        if waiter in done:
            waiter.result()
        log.info("stopping")


def _run_workers(cfg: Config, args: argparse.Namespace, argv: list[str]) -> int:
    """``replay --workers N``: the parent serves its children's /metrics on --metrics-listen."""
    from shadowreplay.commands.replay import dispatch as replay_dispatch
    from shadowreplay.app import check, metrics_listen
    from shadowreplay.workermetrics import WorkerMetrics

    check(cfg, ("replay",))  # before any child starts: each would refuse the same way
    with WorkerMetrics(metrics_listen(cfg, ("replay",)), cfg.replayer.workers) as metrics:
        return replay_dispatch(cfg, args, argv, metrics)


def _dump(cfg: Config, topic: str, limit: int, idle_seconds: float, meta: bool) -> int:
    """Print ``topic``'s messages, read without joining a group, up to its end as of now."""
    from shadowreplay.contract.bus import open_bus, read_to_end

    bus = open_bus(cfg.bus.url, cfg.bus.partitions)
    out = sys.stdout.buffer
    count = 0
    try:
        reader = bus.reader([topic])
        try:
            for batch in read_to_end(reader, stall_seconds=max(idle_seconds, 0.5)):
                for m in batch[: (limit - count) if limit else None]:
                    if meta:
                        try:
                            value = orjson.loads(m.value)
                        except orjson.JSONDecodeError:
                            value = m.value.decode("utf-8", "replace")
                        line = orjson.dumps({"partition": m.partition, "offset": m.offset,
                                             "timestamp_ns": m.timestamp_ns, "value": value})
                    else:
                        line = m.value
                    out.write(line + b"\n")
                    count += 1
                out.flush()
                if limit and count >= limit:
                    break
        finally:
            reader.close()
    finally:
        bus.close()
    return count


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from shadowreplay.contract.bus import quiet_client_logs

    quiet_client_logs(logging.getLogger().level)
    try:
        from shadowreplay.commands.replay import use_uvloop_if_asked, wants_dispatch

        use_uvloop_if_asked(args)
        if wants_dispatch(args):  # replayer: `replay start`, `replay --workers N`
            from shadowreplay.commands.replay import dispatch as replay_dispatch

            cfg = config_from_args(args)
            argv_list = list(argv) if argv is not None else sys.argv[1:]
            if args.replay_command:
                return replay_dispatch(cfg, args, argv_list)
            return _run_workers(cfg, args, argv_list)
        if args.command in STAGE_COMMANDS and not getattr(args, "rediff", False):
            cfg = config_from_args(args)
            tune_gc()
            asyncio.run(_run_stages(cfg, STAGE_COMMANDS[args.command], args))
        elif args.command == "demo":
            from shadowreplay.demo.run import run_demo

            tune_gc()
            outcome = asyncio.run(
                run_demo(speed=args.speed, metrics_listen=args.metrics_listen, keep_serving=not args.no_wait)
            )
            if outcome.diverged != outcome.expected_diverged or outcome.compared != outcome.replayable:
                print(
                    f"shadowreplay: demo check failed: {outcome.diverged} diverged "
                    f"(expected {outcome.expected_diverged}), {outcome.compared} compared (expected {outcome.replayable})",
                    file=sys.stderr,
                )
                return 1
        elif args.command == "bus":
            cfg = config_from_args(args)
            n = _dump(cfg, args.topic, args.limit, args.idle_seconds, args.meta)
            print(f"{n} messages", file=sys.stderr)
        # -- collector dispatch --
        elif args.command == "tail":
            from shadowreplay.collector.tail import run_from_args

            stats = run_from_args(args)
            print(stats.summary(), file=sys.stderr)
        # -- replayer dispatch --
        # -- comparer dispatch --
        elif args.command == "noise":
            from shadowreplay.commands import noise_learn

            sys.stdout.write(noise_learn.run(config_from_args(args), args))
        elif args.command == "gate":
            from shadowreplay.comparer import commands as comparer_commands

            cfg = comparer_commands.gate_config(config_from_args(args), args)
            verdict = comparer_commands.gate(cfg, store=args.store)
            sys.stdout.write(verdict.text)
            return verdict.code
        elif args.command in ("diffs", "report") or (args.command == "compare" and args.rediff):
            from shadowreplay.comparer import commands

            cfg = config_from_args(args)
            if args.command == "diffs":
                sys.stdout.write(
                    commands.diffs(cfg, store=args.store, endpoint=args.endpoint, since=args.since, as_json=args.json)
                )
            elif args.command == "compare":
                sys.stdout.write(commands.rediff_store(cfg, store=args.store))
            else:
                text, fmt = commands.report(
                    cfg, store=args.store, fmt=args.format, output=args.output, title=args.title, since=args.since
                )
                if args.output:
                    Path(args.output).write_text(text, encoding="utf-8")
                    print(f"wrote {fmt} report to {args.output}", file=sys.stderr)
                else:
                    sys.stdout.write(text)
        elif args.command == "deploy":
            from shadowreplay.deploy import run_from_args as deploy

            deploy(args)
        elif args.command == "config":
            if args.config_command == "example":
                sys.stdout.write(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
            else:
                from shadowreplay.app import check as check_config

                check_config(configmod.load(args.file))
                print(f"{args.file}: ok")
    except ShadowError as exc:
        print(f"shadowreplay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
