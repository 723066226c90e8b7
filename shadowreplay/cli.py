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

from shadowreplay import config as configmod
from shadowreplay.config import Config
from shadowreplay.errors import ShadowError
from shadowreplay.runtime import tune_gc

log = logging.getLogger("shadowreplay")

EXAMPLE_CONFIG = Path(__file__).with_name("example.toml")


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
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, help_: str, *, collect: bool, replay: bool, compare: bool) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", metavar="FILE", help="TOML config file (see `shadowreplay config example`)")
        sp.add_argument(
            "--bus",
            metavar="URL",
            help="sqlite:///path/to.db (embedded, default sqlite:///shadowreplay.db) or kafka://host:port[,host:port]",
        )
        sp.add_argument("--metrics-listen", metavar="HOST:PORT", help="where /metrics is served (default 127.0.0.1:9464)")
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
    demo.add_argument("--speed", type=float, default=10.0, metavar="N", help="replay speed (default 10)")
    demo.add_argument("--metrics-listen", default="127.0.0.1:9464", metavar="HOST:PORT", help="default 127.0.0.1:9464")
    demo.add_argument("--no-wait", action="store_true", help="exit after printing the table instead of serving /metrics")

    bus = sub.add_parser("bus", help="inspect the bus").add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")
    dump = bus.add_parser("dump", help="print a topic's messages as JSON lines, from the beginning to its end "
                                        "as of now (joins no consumer group)")
    dump.add_argument("--config", metavar="FILE")
    dump.add_argument("--bus", metavar="URL", help="bus URL (default from config, else sqlite:///shadowreplay.db)")
    dump.add_argument("--topic", required=True, metavar="T", help="e.g. shadow.requests or shadow.results")
    dump.add_argument("--limit", type=int, default=0, metavar="N", help="stop after N messages (default: all)")
    dump.add_argument("--idle-seconds", type=float, default=10.0, metavar="S",
                      help="give up with an error when the bus answers nothing for S seconds (default 10)")
    dump.add_argument("--meta", action="store_true", help="wrap each message with partition, offset and timestamp")

    # -- collector commands (tail, ...) --
    from collector.tail import add_arguments as add_tail_arguments

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
    from replayer.commands import add_replay_arguments, add_replay_subcommands

    for stage_name in ("run", "replay"):
        add_replay_arguments(sub.choices[stage_name], workers=stage_name == "replay")
    add_replay_subcommands(sub.choices["replay"])
    # -- comparer commands (diffs, report, noise, ...) --
    noise_sp = sub.add_parser("noise", help="noise rules for the comparer").add_subparsers(
        dest="noise_command", required=True, metavar="SUBCOMMAND"
    )
    learn_sp = noise_sp.add_parser(
        "learn",
        help="replay a sample from the bus against the baseline twice and propose ignore rules (TOML)",
        description=(
            "Read a sample of recorded requests from the bus, send each one twice to the baseline, and "
            "print, as TOML to paste into [comparer], ignore rules for every field that differed between "
            "the two answers (timestamps, random ids, ...)."
        ),
    )
    learn_sp.add_argument("--config", metavar="FILE", help="TOML config file")
    learn_sp.add_argument("--bus", metavar="URL", help="bus URL (default from config)")
    learn_sp.add_argument("--baseline", metavar="URL", help="base URL of the current release (default replayer.baseline)")
    learn_sp.add_argument("--sample", type=int, default=200, metavar="N", help="requests to send twice (default 200)")
    learn_sp.add_argument("--concurrency", type=int, default=8, metavar="N", help="pairs in flight (default 8)")
    learn_sp.add_argument(
        "--min-rate", type=float, default=0.0, metavar="F", help="propose only paths differing in more than F of requests"
    )
    compare_sp = sub.choices["compare"]
    compare_sp.add_argument(
        "--rediff",
        action="store_true",
        help="re-diff the stored divergences with the current config (after changing ignore rules), then exit",
    )
    compare_sp.add_argument("--store", metavar="FILE", help="with --rediff: the divergence store (default: comparer.store.path)")
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
    diffs_sp.add_argument("--json", action="store_true", help="one JSON object per endpoint (see README)")
    report_sp.add_argument("--format", choices=("html", "md"), help="default: from --output's suffix, else html")
    report_sp.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    report_sp.add_argument("--title", default="shadowreplay report", help="heading of the report")

    cfg = sub.add_parser("config", help="print an example config or check one").add_subparsers(
        dest="config_command", required=True, metavar="SUBCOMMAND"
    )
    cfg.add_parser("example", help="print a commented example config")
    check = cfg.add_parser("check", help="validate a config file")
    check.add_argument("file")
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
        from replayer.commands import replay_overrides

        cfg = replay_overrides(cfg, args)
    elif args.command == "compare":
        cfg = configmod.override(cfg, "comparer", group=args.group)
    configmod.validate(cfg)
    return cfg


async def _run_stages(cfg: Config, stages: tuple[str, ...]) -> None:
    from shadowreplay.app import Pipeline

    pipeline = Pipeline(cfg, stages)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with pipeline:
        from shadowreplay.status import StatusLine  # operations: live line on a terminal, logs otherwise

        status_stop = asyncio.Event()
        status = asyncio.create_task(StatusLine(pipeline.registry, sys.stderr).run(status_stop))
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


def _dump(cfg: Config, topic: str, limit: int, idle_seconds: float, meta: bool) -> int:
    """Print ``topic``'s messages, read without joining a group, up to its end as of now."""
    from shadowreplay.bus import open_bus, read_to_end

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
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from shadowreplay.bus import quiet_client_logs

    quiet_client_logs(logging.getLogger().level)
    try:
        from replayer.commands import use_uvloop_if_asked, wants_dispatch

        use_uvloop_if_asked(args)
        if wants_dispatch(args):  # replayer: `replay start`, `replay --workers N`
            from replayer.commands import dispatch as replay_dispatch

            return replay_dispatch(config_from_args(args), args, list(argv) if argv is not None else sys.argv[1:])
        if args.command in ("run", "collect", "replay", "compare") and not getattr(args, "rediff", False):
            cfg = config_from_args(args)
            stages = {"run": ("collect", "replay", "compare")}.get(args.command, (args.command,))
            tune_gc()
            asyncio.run(_run_stages(cfg, stages))
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
            from collector.tail import run_from_args

            stats = run_from_args(args)
            print(
                f"{stats.lines} lines shipped in {stats.chunks} chunks, {stats.unparseable_total} unparseable",
                file=sys.stderr,
            )
        # -- replayer dispatch --
        # -- comparer dispatch --
        elif args.command == "noise":
            from comparer import learn

            cfg = config_from_args(args)
            baseline = args.baseline or cfg.replayer.baseline
            records = learn.read_sample(cfg, max(1, args.sample))
            if not records:
                raise ShadowError(f"noise learn: no replayable requests on {cfg.bus.requests_topic} at {cfg.bus.url}")
            sample = asyncio.run(learn.learn(cfg, records, baseline, concurrency=max(1, args.concurrency)))
            sys.stdout.write(learn.propose(sample, min_rate=args.min_rate))
        elif args.command in ("diffs", "report") or (args.command == "compare" and args.rediff):
            from comparer import commands

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
        elif args.command == "config":
            if args.config_command == "example":
                sys.stdout.write(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
            else:
                configmod.load(args.file)
                print(f"{args.file}: ok")
    except ShadowError as exc:
        print(f"shadowreplay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
