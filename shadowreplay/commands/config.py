"""``shadowreplay config example`` and ``config check FILE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shadowreplay.contract import config as configmod

#: The commented example config, every key with its default (package data).
EXAMPLE_CONFIG = Path(__file__).parent.parent / "example.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Print an example config or check one."
    sub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    example = sub.add_parser("example", help="print a commented example config",
                             description="Print a commented config with every key and its default.")
    example.set_defaults(func=example_config)
    check = sub.add_parser("check", help="validate a config file",
                           description="Validate a config file as `run` would, without binding a port or opening "
                                       "the bus: unknown keys, bad values, log formats and field maps, path patterns, "
                                       "routes, replay rules, stream endpoints, TLS files that do not load, the "
                                       "page's credential files and the secrets' environment variables (read from "
                                       "this environment) are errors naming the key (exit status 2). The candidate "
                                       "URL is not required (it is often given as --candidate).")
    check.add_argument("file", metavar="FILE", help="the TOML config file to check")
    check.set_defaults(func=check_config)


def example_config(args: argparse.Namespace) -> int:
    sys.stdout.write(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    return 0


def check_config(args: argparse.Namespace) -> int:
    """Build what starting every stage builds (``app.check``): this imports every stage."""
    from shadowreplay.app import check

    check(configmod.load(args.file))
    print(f"{args.file}: ok")
    return 0
