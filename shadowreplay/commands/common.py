"""What several commands share: the config from ``--config`` and flags, and the options
that name the config file, the bus and the divergence store."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from shadowreplay.contract import config as configmod
from shadowreplay.contract.config import Config

#: ``set_defaults(configure=...)``: a command's own flags applied to the config.
Configure = Callable[[Config, argparse.Namespace], Config]


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (``--config``, else the defaults) with the flags of ``args`` applied
    (``--bus``, ``--metrics-listen``, ``--listen``, then the command's own through its
    ``configure`` default), validated."""
    cfg = configmod.load(getattr(args, "config", None))
    cfg = configmod.override(cfg, "bus", url=getattr(args, "bus", None))
    cfg = configmod.override(cfg, "metrics", listen=getattr(args, "metrics_listen", None))
    cfg = configmod.override(cfg, "collector", listen=getattr(args, "listen", None))
    configure: Configure | None = getattr(args, "configure", None)
    if configure is not None:
        cfg = configure(cfg, args)
    configmod.validate(cfg)
    return cfg


def add_config_option(p: argparse.ArgumentParser, help_: str = "TOML config file") -> None:
    p.add_argument("--config", metavar="FILE", help=help_)


def add_bus_option(p: argparse.ArgumentParser,
                   help_: str = "bus URL (default from config, else sqlite:///shadowreplay.db)") -> None:
    p.add_argument("--bus", metavar="URL", help=help_)


def add_store_options(p: argparse.ArgumentParser, config_help: str = "TOML config file") -> None:
    """``--config``, ``--bus`` and ``--store``: where a command over the divergence store finds it."""
    add_config_option(p, config_help)
    add_bus_option(p, "bus URL (the store defaults to <bus file>.diffs.db beside a sqlite bus)")
    p.add_argument("--store", metavar="FILE", help="divergence store (default: comparer.store.path)")
