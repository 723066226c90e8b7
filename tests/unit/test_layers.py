"""The three layers hold, read from the code itself (issue 20.1, issue 19.4):

* the contract (``shadowreplay.contract``) imports no stage and nothing of the
  composition layer;
* a stage (``shadowreplay.collector``, ``.replayer``, ``.comparer``) imports the contract
  and itself only: never another stage, never the composition layer;
* the composition layer (the rest of ``shadowreplay``) is the only code importing a stage;
* nothing anywhere imports the stages by their old top-level names (``collector``...):
  the wheel installs only ``shadowreplay``;
* a command imports the stages it uses and no other (checked in a fresh interpreter).

Imports are read with ``ast``: every ``import``/``from`` in a module, in functions and
under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("collector", "replayer", "comparer")


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package, with its dotted name: shadowreplay's own files and the
    stages' (each in its own folder, which shadowreplay/<stage> links to)."""
    for path in sorted((ROOT / "shadowreplay").rglob("*.py")):  # rglob does not enter the stage symlinks
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            yield "shadowreplay." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def imports(name: str, source: str, *, package: bool = False) -> set[str]:
    """The modules ``source`` (module ``name``, a package's ``__init__`` if ``package``)
    imports: ``from a import b`` counts as ``a.b`` (b may be a module), relative imports
    resolved."""
    package_name = name if package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package_name.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def old_names(text: str) -> str:
    """``text`` with ``{collector}`` etc. as the old top-level names: the examples of what
    the checks catch are written so, for a rename script run over this file leaves them be."""
    return text.format(**{stage: stage for stage in STAGES})


def layer(module: str) -> str:
    """contract, a stage's name, composition, or outside (the standard library, third parties)."""
    parts = module.split(".")
    if parts[0] in STAGES:
        return f"bare {parts[0]}"
    if parts[0] != "shadowreplay":
        return "outside"
    if len(parts) == 1:
        return "composition"  # shadowreplay/__init__.py, empty
    if parts[1] == "contract":
        return "contract"
    if parts[1] in STAGES:
        return parts[1]
    return "composition"


def violations(name: str, source: str, *, package: bool = False) -> list[str]:
    """What module ``name`` imports against the layering."""
    own = layer(name)
    found = []
    for imported in sorted(imports(name, source, package=package)):
        theirs = layer(imported)
        if theirs == "outside" or theirs == own or imported == "shadowreplay":
            continue
        if theirs.startswith("bare "):
            found.append(f"{name} imports {imported}: the stages are shadowreplay.<stage> now")
        elif own == "contract":
            found.append(f"{name} (contract) imports {imported} ({theirs})")
        elif own in STAGES and theirs != "contract":
            found.append(f"{name} (stage {own}) imports {imported} ({theirs})")
    return found


def test_the_walk_sees_every_layer() -> None:
    names = {name for name, _ in modules()}
    assert {"shadowreplay.contract.record", "shadowreplay.contract.bus.sqlite", "shadowreplay.collector.server",
            "shadowreplay.replayer.loop", "shadowreplay.comparer.diff", "shadowreplay.cli", "shadowreplay.app",
            "shadowreplay.commands.replay", "shadowreplay.workers", "shadowreplay.demo.run"} <= names
    assert len(names) > 70


def test_contract_and_stages_import_only_what_their_layer_may() -> None:
    found = [v for name, path in modules()
             for v in violations(name, path.read_text(encoding="utf-8"), package=path.name == "__init__.py")]
    assert not found, "\n".join(found)


def test_the_composition_layer_is_the_one_that_imports_stages() -> None:
    """Not vacuous: app.py builds all three stages, and the stages do meet the contract."""
    sources = {name: path.read_text(encoding="utf-8") for name, path in modules()}
    app = {layer(m) for m in imports("shadowreplay.app", sources["shadowreplay.app"])}
    assert set(STAGES) <= app
    server = {layer(m) for m in imports("shadowreplay.collector.server", sources["shadowreplay.collector.server"])}
    assert "contract" in server


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("shadowreplay.contract.record", "from shadowreplay.replayer import loop\n", "(contract) imports"),
        ("shadowreplay.contract.config", "def f():\n    from shadowreplay import app\n", "(contract) imports"),
        ("shadowreplay.collector.server", "from shadowreplay.comparer.diff import Differ\n", "(stage collector)"),
        ("shadowreplay.comparer.web", "import shadowreplay.cli as cli\n", "(stage comparer)"),
        ("shadowreplay.replayer.loop", "from ..comparer import diff\n", "(stage replayer)"),
        ("shadowreplay.replayer.loop", "from ..cli import main\n", "(stage replayer)"),
        ("shadowreplay.app", "from {collector}.server import CollectorServer\n", "shadowreplay.<stage> now"),
    ],
)
def test_the_layer_check_catches(name: str, source: str, expected: str) -> None:
    found = violations(name, old_names(source))
    assert found and all(expected in v for v in found), found


# -- the old top-level names -------------------------------------------------------------

#: ``from collector... import``, ``import collector...`` (starting a statement: a line, or
#: after ``;``, a quote or a ``\n`` escape: code in a string) and ``-m`` with one.
BARE_IMPORT = re.compile(r"(?:(?<![\w.])|(?<=\\n))from\s+(?:collector|replayer|comparer)(?:\.\w+)*\s+import\b"
                         r"|(?:^|[;\"']|\\n)\s*import\s+(?:collector|replayer|comparer)\b"
                         r"|-m\s+(?:collector|replayer|comparer)\.")


def tree_files() -> Iterator[Path]:
    """Code and docs of the repository: Python anywhere, Markdown, the Makefile, pyproject."""
    skip = {".venv", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    for path in sorted(ROOT.rglob("*")):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix in (".py", ".md", ".toml", ".yml", ".yaml", ".service") or path.name in ("Makefile", "Dockerfile"):
            yield path


def test_nothing_imports_a_stage_by_its_old_top_level_name() -> None:
    found = []
    for path in tree_files():
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if BARE_IMPORT.search(line):
                found.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not found, "use shadowreplay.<stage>:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "from {collector}.server import CollectorServer", "    import {replayer}.http1 as http1", "import {comparer}",
    '"import sys; from {comparer}.diff import Differ"', "python -m {collector}.pyz out.pyz",
    r'MAIN = "import sys\n\nfrom {collector}.tail import main\n"', r'"x = 1\nimport {replayer}.loop\n"',
])
def test_the_old_name_check_catches(line: str) -> None:
    assert BARE_IMPORT.search(old_names(line))


@pytest.mark.parametrize("line", [
    "from shadowreplay.collector.server import CollectorServer", "from shadowreplay import collector",
    "python -m shadowreplay.collector.pyz", "[collector]", "collector.listen = '0.0.0.0:24224'",
])
def test_the_old_name_check_lets_the_new_names_and_config_keys_be(line: str) -> None:
    assert not BARE_IMPORT.search(line)


# -- what each command imports ------------------------------------------------------------

PROBE = """
import json, sys
from shadowreplay.cli import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit:
    pass
stages = json.loads(sys.argv[3])
found = {parts[1] for parts in (m.split(".") for m in sys.modules) if parts[0] == "shadowreplay" and parts[1:2] and parts[1] in stages}
found |= {"bare " + m for m in sys.modules if m.split(".")[0] in stages}
with open(sys.argv[2], "w") as f:
    json.dump(sorted(found), f)
"""


def stages_imported(argv: list[str], tmp_path: Path) -> list[str]:
    out = tmp_path / "stages.json"
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), str(out), json.dumps(STAGES)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.exists(), run.stderr
    result: list[str] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--version"], []),
        (["config", "example"], []),
        (["bus", "dump", "--bus", "sqlite:///{tmp}/bus.db", "--topic", "shadow.requests", "--idle-seconds", "0.5"], []),
        (["deploy", "list"], []),
        (["tail", "--help"], ["collector"]),
        (["diffs", "--store", "{tmp}/none.db"], ["comparer"]),
        (["replay", "start", "--bus", "sqlite:///{tmp}/bus.db", "--group", "g", "--from", "now", "--at", "now"],
         ["replayer"]),
        (["config", "check", "{example}"], list(STAGES)),
    ],
)
def test_a_command_imports_the_stages_it_uses_and_no_other(argv: list[str], expected: list[str], tmp_path: Path) -> None:
    example = ROOT / "shadowreplay" / "example.toml"
    argv = [a.format(tmp=tmp_path, example=example) for a in argv]
    assert stages_imported(argv, tmp_path) == sorted(expected)
