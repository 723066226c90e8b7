"""The ``shadowreplay`` command. The only place that prints errors and chooses exit codes.

The commands are a table: each names the module of the composition layer
(shadowreplay/commands/) that adds its options and sets ``func``, the function that runs
it (see shadowreplay/commands/__init__.py). A command's module is imported only when that
command runs, so each command imports the stages it uses and no other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shadowreplay.contract.bus import quiet_client_logs
from shadowreplay.contract.errors import ShadowError
from shadowreplay.runtime import LOG_FORMATS, LOG_LEVELS, configure_logging

#: Every command: its name, its line in ``shadowreplay --help``, and its module.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run collector, replayer and comparer in one process", "shadowreplay.commands.run"),
    ("collect", "run the collector: forward protocol in, request records onto the bus", "shadowreplay.commands.collect"),
    ("replay", "run the replayer: request records from the bus to staging, results onto the bus",
     "shadowreplay.commands.replay"),
    ("compare", "run the comparer: results from the bus, diffs to /metrics", "shadowreplay.commands.compare"),
    ("demo", "the whole pipeline on this machine with a bundled access log and two local backends",
     "shadowreplay.commands.demo"),
    ("bus", "inspect the bus", "shadowreplay.commands.bus"),
    ("tail", "follow access-log files (like tail -F) and ship their lines to a collector, with acks",
     "shadowreplay.commands.tail"),
    ("noise", "noise rules for the comparer", "shadowreplay.commands.noise_learn"),
    ("diffs", "print stored divergences: endpoints by divergence rate with their diverging fields",
     "shadowreplay.commands.diffs"),
    ("report", "write a self-contained HTML (or Markdown) summary of a replay run", "shadowreplay.commands.report"),
    ("gate", "release gate for CI: exit 1 when an endpoint really diverges or got slower, 2 when there is no verdict",
     "shadowreplay.commands.gate"),
    ("config", "print an example config or check one", "shadowreplay.commands.config"),
    ("deploy", "write the dashboards, alert rules, Prometheus config and systemd units to a folder",
     "shadowreplay.deploy"),
)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's, for an editable install too)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shadowreplay")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Given ``argv``, only the command it names gets its options
    (its module imported); without, every command does (``--help`` of each, tests)."""
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
    # The first argument that is a command's name is the command: the options before it
    # (--log-level, --log-format) take no value that is one.
    chosen = None if argv is None else next((a for a in argv if a in {c[0] for c in COMMANDS}), "")
    for name, help_, module in COMMANDS:
        sp = sub.add_parser(name, help=help_, description=help_)
        if chosen is None or name == chosen:
            importlib.import_module(module).add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv  # the command line as given: `replay --workers N` hands it on to its children
    configure_logging(args.log_level, args.log_format)
    quiet_client_logs(logging.getLogger().level)
    try:
        code: int = args.func(args)
    except ShadowError as exc:
        print(f"shadowreplay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
