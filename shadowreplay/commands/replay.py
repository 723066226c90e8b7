"""``shadowreplay replay``: the replayer alone; ``replay start``, the group's schedule
anchor; ``replay --workers N``, N replayer processes (shadowreplay/workers.py). Also the
replay flags ``run`` shares."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

import orjson

from shadowreplay.commands.common import config_from_args
from shadowreplay.commands.stage import add_stage_arguments, run_stages
from shadowreplay.contract import config as configmod
from shadowreplay.contract.config import Config
from shadowreplay.contract.errors import ConfigError

STAGES = ("replay",)

log = logging.getLogger(__name__)


def add_replay_arguments(sp: argparse.ArgumentParser, *, workers: bool) -> None:
    """Pacing, window, target and safety flags of a parser that runs the replay stage."""
    g = sp.add_argument_group("replay")
    g.add_argument("--secondary", metavar="URL", help="a second copy of the baseline (noise cancellation)")
    g.add_argument("--rate", type=float, metavar="R",
                   help="pace to R requests/s, none dropped (with --speed as a ceiling; without it, none)")
    g.add_argument("--concurrency", type=int, metavar="C", help="in-flight requests per target (default 64)")
    g.add_argument("--timeout", type=float, metavar="SECONDS", dest="timeout_seconds",
                   help="per-request timeout (default 10)")
    g.add_argument("--from", metavar="TIME", dest="window_from",
                   help="replay from TIME: ISO 8601, epoch seconds or relative (--from=-1h: note the =)")
    g.add_argument("--to", metavar="TIME", dest="window_to",
                   help="stop at TIME (same forms); consecutive windows --from A --to B, --from B --to C "
                        "replay every record once")
    g.add_argument("--lateness", type=float, metavar="SECONDS", dest="lateness_seconds",
                   help="how far out of time order the log may be (default 300): a window reads this far "
                        "before --from and past --to so that no record of it is missed")
    g.add_argument("--follow", action="store_true", default=None,
                   help="after catching up at N×, follow real time (live replay)")
    g.add_argument("--max-gap-seconds", type=float, metavar="S", help="cut idle gaps in the schedule to S seconds")
    g.add_argument("--late-policy", choices=configmod.LATE_POLICIES, help="what to do with late records (default send)")
    g.add_argument("--anchor", choices=configmod.ANCHOR_MODES,
                   help="schedule anchor: auto (default): the group's on the bus, claimed by the first replayer "
                        "if none is in force; bus: wait for the group's (e.g. from `replay start`); local: this "
                        "process's own, shared with nobody")
    g.add_argument("--methods", metavar="M,M", help=f"methods allowed (default {','.join(configmod.SAFE_METHODS)})")
    g.add_argument("--keep-host", action="store_true", default=None, help="send the logged Host header")
    g.add_argument("--insecure", action="store_true", help="do not verify the targets' TLS certificates")
    g.add_argument("--http-client", choices=configmod.HTTP_CLIENTS,
                   help="HTTP client: builtin, the only one (aiohttp's was removed: see docs/http-client.md)")
    g.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=None,
                   help="run on uvloop (the default when it is installed); --no-uvloop: asyncio's loop")
    if workers:
        g.add_argument("--workers", type=int, metavar="N",
                       help="run N replayer processes in one consumer group (metrics on consecutive ports); "
                            "--rate and --concurrency stay totals, split across them")
        g.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)  # set by --workers on its children


def add_replay_subcommands(replay: argparse.ArgumentParser) -> None:
    """``replay start``: set the group's shared schedule anchor on the bus. Optional: plain
    ``replay`` runs the replayer, so the usage line shows both forms, neither required."""
    replay.usage = "%(prog)s [options]\n       %(prog)s start [options]   (see `%(prog)s start --help`)"
    sub = replay.add_subparsers(dest="replay_command", metavar="start", title="optional subcommand")
    start_sp = sub.add_parser(
        "start",
        help="set the group's schedule anchor on the bus (shared by all its replayers)",
        description=(
            "Publish the anchor (log time, wall time, speed) of consumer group GROUP on the control "
            "topic. Every replayer of the group started with --anchor auto or bus schedules from it, "
            "so several processes on several machines keep one schedule."
        ),
    )
    start_sp.add_argument("--config", metavar="FILE", help="TOML config file (bus.url, replayer.group, speed ...)")
    start_sp.add_argument("--bus", metavar="URL", help="bus URL (default from config, else sqlite:///shadowreplay.db)")
    start_sp.add_argument("--group", metavar="NAME", help="replayer consumer group (default shadow-replayer)")
    start_sp.add_argument("--speed", type=float, metavar="N", help="replay speed recorded with the anchor (default 1)")
    start_sp.add_argument("--rate", type=float, metavar="R", help="recorded with the anchor (informational)")
    start_sp.add_argument("--from", metavar="TIME", dest="window_from",
                          help="log time of the anchor (default: the earliest record the group has next)")
    start_sp.add_argument("--at", metavar="TIME", default="",
                          help="wall time the anchor's log time is replayed at (default: now + lead_seconds)")
    start_sp.add_argument("--follow", action="store_true", default=None, help="follow real time once caught up")
    start_sp.add_argument("--clear", action="store_true", help="withdraw the group's anchor instead")
    start_sp.set_defaults(func=start)


def replay_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the replay flags of ``args`` applied."""
    methods = getattr(args, "methods", None)
    cfg = configmod.override(
        cfg,
        "replayer",
        secondary=getattr(args, "secondary", None),
        rate=getattr(args, "rate", None),
        concurrency=getattr(args, "concurrency", None),
        timeout_seconds=getattr(args, "timeout_seconds", None),
        window_from=getattr(args, "window_from", None),
        window_to=getattr(args, "window_to", None),
        lateness_seconds=getattr(args, "lateness_seconds", None),
        follow=getattr(args, "follow", None),
        max_gap_seconds=getattr(args, "max_gap_seconds", None),
        late_policy=getattr(args, "late_policy", None),
        anchor=getattr(args, "anchor", None),
        keep_host=getattr(args, "keep_host", None),
        http_client=getattr(args, "http_client", None),
        workers=getattr(args, "workers", None),
        methods=tuple(m.strip().upper() for m in methods.split(",") if m.strip()) if methods else None,
    )
    if getattr(args, "rate", None) and getattr(args, "speed", None) is None:
        cfg = configmod.override(cfg, "replayer", speed=0.0)  # --rate alone: no speed ceiling
    if getattr(args, "insecure", False):
        t = cfg.replayer.targets
        insecure = {n: dataclasses.replace(getattr(t, n), tls_verify=False) for n in configmod.TARGET_NAMES}
        cfg = configmod.override(cfg, "replayer", targets=dataclasses.replace(t, **insecure))
    worker = getattr(args, "worker", None)
    if worker:
        from shadowreplay.workers import worker_share

        cfg = dataclasses.replace(cfg, replayer=worker_share(cfg.replayer, worker))
    return cfg


def use_uvloop_if_asked(args: argparse.Namespace) -> None:
    """Install uvloop's event loop policy for ``replay`` unless ``--no-uvloop`` (or it is
    not installed, which only ``--uvloop`` makes an error); other commands (``run``) only
    with ``--uvloop``. Children of --workers inherit the flag."""
    asked = getattr(args, "uvloop", None)
    if asked is False or (asked is None and getattr(args, "command", None) != "replay"):
        return
    try:
        import uvloop
    except ImportError as exc:
        if asked:
            raise ConfigError("--uvloop: uvloop is not installed (pip install uvloop)") from exc
        log.debug("uvloop not installed: running on asyncio's event loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_stage_arguments(p, STAGES, replay=True)
    add_replay_arguments(p, workers=True)
    add_replay_subcommands(p)
    # set by `replay --workers N` on its children: serve /metrics on this inherited socket
    p.add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run, configure=replay_config)


def replay_config(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the flags of ``run``/``replay`` (and ``replay start``) applied."""
    cfg = configmod.override(
        cfg,
        "replayer",
        candidate=getattr(args, "candidate", None),
        baseline=getattr(args, "baseline", None),
        speed=getattr(args, "speed", None),
        group=getattr(args, "group", None),
        idle_exit_seconds=getattr(args, "idle_exit", None),
    )
    return replay_overrides(cfg, args)


def run(args: argparse.Namespace) -> int:
    """The replayer in this process, or ``--workers N`` (N > 1) processes."""
    use_uvloop_if_asked(args)
    cfg = config_from_args(args)
    if (args.workers or 1) > 1:
        return run_workers(cfg, args)
    return run_stages(cfg, STAGES, args)


def run_workers(cfg: Config, args: argparse.Namespace) -> int:
    """``replay --workers N``: the parent serves its children's /metrics on --metrics-listen."""
    from shadowreplay.app import check, metrics_listen
    from shadowreplay.workermetrics import WorkerMetrics
    from shadowreplay.workers import run_workers as spawn

    check(cfg, STAGES)  # before any child starts: each would refuse the same way
    with WorkerMetrics(metrics_listen(cfg, STAGES), cfg.replayer.workers) as metrics:
        return spawn(cfg, args.argv, metrics)


def start(args: argparse.Namespace) -> int:
    """``replay start``: publish (or ``--clear``) the group's anchor on the bus."""
    from shadowreplay.contract.bus import open_bus
    from shadowreplay.replayer.control import clear_anchor, start_anchor

    use_uvloop_if_asked(args)
    cfg = config_from_args(args)
    bus = open_bus(cfg.bus.url, cfg.bus.partitions)
    try:
        if args.clear:
            clear_anchor(bus, cfg.replayer)
            print(f"anchor of group {cfg.replayer.group} cleared", file=sys.stderr)
            return 0
        bus.ensure_topic(cfg.bus.requests_topic, cfg.bus.partitions)
        anchor = start_anchor(bus, cfg.bus.requests_topic, cfg.replayer, at=args.at)
    finally:
        bus.close()
    print(orjson.dumps({"group": cfg.replayer.group, **anchor.to_wire()}).decode())
    return 0
