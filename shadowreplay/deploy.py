"""``shadowreplay deploy write DIR``: the operations files that ship with the package.

The repository's ``dashboards/`` folder is installed as the package data
``shadowreplay.dashboards`` (see pyproject.toml): the Grafana dashboard and provisioning,
the Prometheus scrape config, the alert rules and their promtool tests, and the systemd
units. ``deploy write`` copies that tree, as installed, into DIR, so a host that got
shadowreplay from a wheel has them without a source checkout. ``deploy list`` prints
what would be written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from shadowreplay.contract.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGE = "shadowreplay.dashboards"
#: What the tree holds besides its files: Python leftovers of the package machinery.
_SKIPPED = ("__pycache__", "__init__.py")


def _root() -> Traversable:
    try:
        return resources.files(PACKAGE)
    except ModuleNotFoundError:  # a source tree run without installing: the folder itself
        return Path(__file__).resolve().parents[1] / "dashboards"


def shipped_files() -> list[tuple[str, Traversable]]:
    """(relative path with "/", file) of every shipped file, sorted."""
    out: list[tuple[str, Traversable]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name in _SKIPPED or child.name.endswith(".pyc"):
                continue
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            else:
                out.append((f"{prefix}{child.name}", child))

    walk(_root(), "")
    if not out:
        raise ConfigError(f"no deployment files found in the installed package {PACKAGE}")
    return sorted(out, key=lambda item: item[0])


def write(dest: Path, *, force: bool = False) -> list[Path]:
    """Copy every shipped file under ``dest`` (created if missing). Existing files are
    an error naming them unless ``force``; nothing is written then."""
    files = shipped_files()
    targets = [(dest / rel, src) for rel, src in files]
    existing = [str(path) for path, _ in targets if path.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ConfigError(f"deploy write: {existing[0]} exists{more}; use --force to overwrite")
    for path, src in targets:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(src.read_bytes())
        except OSError as exc:
            raise ConfigError(f"deploy write: cannot write {path}: {exc.strerror or exc}") from exc
    return [path for path, _ in targets]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``deploy write DIR [--force]`` and ``deploy list``."""
    p.description = ("The operations files shipped with shadowreplay (installed as package data): "
                     "the Grafana dashboard and provisioning, prometheus.yml, alerts.yml and its "
                     "promtool tests, and one systemd unit per stage.")
    deploy = p.add_subparsers(dest="deploy_command", required=True, metavar="SUBCOMMAND")
    write_sp = deploy.add_parser(
        "write", help="copy them into DIR (keeping their folders: provisioning/, deploy/systemd/)",
        description="Copy the shipped operations files into DIR, keeping their layout. Existing files "
                    "are not overwritten unless --force.",
    )
    write_sp.add_argument("dir", metavar="DIR", help="folder to write into (created if missing)")
    write_sp.add_argument("--force", action="store_true", help="overwrite files that exist")
    deploy.add_parser("list", help="print the shipped files' paths", description="Print the shipped files' paths.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.deploy_command == "list":
        for rel, _ in shipped_files():
            print(rel)
        return 0
    written = write(Path(args.dir), force=args.force)
    print(f"wrote {len(written)} files to {args.dir}", file=sys.stderr)
    return 0
