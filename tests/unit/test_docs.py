"""The docs cannot go stale unnoticed: links resolve, config keys exist.

* Every relative link in README.md, docs/*.md and bench/README.md points to a file that
  exists and, when it names an anchor in a Markdown file, to a heading there (GitHub's
  anchor rules).
* docs/configuration.md lists exactly the sections and keys of the config dataclasses
  (``shadowreplay/contract/config.py``), each with its default written as TOML.
* Every config key or section named in inline code on those pages (``comparer.store.path``,
  ``[collector.fields]``) exists.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from shadowreplay.contract.config import Config

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
CONFIG_PAGE = ROOT / "docs" / "configuration.md"

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text without Markdown, lowercased, every
    character that is not a letter, digit, space, '-' or '_' removed, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            where = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest.name
            broken.append(f"{target}: no heading with anchor #{anchor} in {where}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title: `x --y`\n\n## Again\n## Again\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#title-x---y) [ok](a.md#again-1) [ok](#local) [web](https://example.com/x)\n"
        "## Local\n```\n[in a fence](nowhere.md)\n```\n"
        "[gone](c.md) [bad anchor](a.md#nope)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["c.md: no such file", "a.md#nope: no heading with anchor #nope in a.md"]


# -- the configuration reference --------------------------------------------------------


def config_sections() -> dict[str, dict[str, Any]]:
    """Every config section with keys, by its TOML name (``collector.fields``, and
    ``[[replayer.rules]]`` for arrays of tables) → {key: default}."""
    out: dict[str, dict[str, Any]] = {}

    def walk(cls: type, name: str, array: bool) -> None:
        hints = typing.get_type_hints(cls)
        keys: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            sub = f"{name}.{f.name}" if name else f.name
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                walk(hint, sub, False)
                continue
            if typing.get_origin(hint) is tuple:
                (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
                if isinstance(item, type) and dataclasses.is_dataclass(item):
                    walk(item, sub, True)
                    continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            keys[f.name] = list(default) if isinstance(default, tuple) else default
        if keys:
            out[f"[[{name}]]" if array else f"[{name}]"] = keys

    walk(Config, "", False)
    return out


def documented_sections(text: str) -> dict[str, dict[str, str]]:
    """The sections of the reference: each heading names one or more (``[a.b]``,
    ``[[a.c]]`` in backticks); each table row under it is ``| `key` | `default` | … |``."""
    out: dict[str, dict[str, str]] = {}
    current: list[str] = []
    for line in prose_lines(text):
        if line.startswith("#"):
            current = re.findall(r"`(\[\[?[a-z_.]+\]\]?)`", line)
            for name in current:
                assert name not in out, f"{name} is documented twice"
                out[name] = {}
            continue
        row = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]] if line.startswith("|") else []
        if len(row) < 3 or not row[0].startswith("`"):
            continue
        key = row[0].strip("`")
        assert current, f"key {key!r} outside a section"
        for name in current:
            assert key not in out[name], f"{name} {key} is documented twice"
            out[name][key] = row[1]
    return out


def parse_default(cell: str) -> Any:
    m = re.match(r"^`([^`]*)`", cell)
    assert m, f"the default {cell!r} is not a TOML value in backticks"
    return tomllib.loads(f"v = {m.group(1)}")["v"]


def test_configuration_reference_lists_exactly_the_config_keys_with_their_defaults() -> None:
    code = config_sections()
    docs = documented_sections(CONFIG_PAGE.read_text(encoding="utf-8"))
    assert sorted(docs) == sorted(code), "sections documented vs. in shadowreplay/contract/config.py"
    for name, keys in code.items():
        assert sorted(docs[name]) == sorted(keys), f"keys of {name}: documented vs. in shadowreplay/contract/config.py"
        for key, default in keys.items():
            assert parse_default(docs[name][key]) == default, f"{name} {key}: documented default"


def test_the_reference_check_sees_a_missing_an_extra_and_a_wrong_key() -> None:
    text = CONFIG_PAGE.read_text(encoding="utf-8")
    row = "| `partitions` | `4` |"
    assert row in text
    for changed in (text.replace(row, "| `partitionz` | `4` |"), text.replace(row, "| `partitions` | `5` |")):
        with pytest.raises(AssertionError):
            docs = documented_sections(changed)
            code = config_sections()
            assert sorted(docs["[bus]"]) == sorted(code["[bus]"])
            assert parse_default(docs["[bus]"]["partitions"]) == code["[bus]"]["partitions"]


# -- config keys named in the text -------------------------------------------------------

DOTTED = re.compile(r"^\[{0,2}((?:bus|collector|replayer|comparer|metrics)(?:\.[a-z_]+)+)\]{0,2}$")
NOT_KEYS = ("db", "md", "py", "json", "yml", "yaml", "toml", "pyz", "service")


def known_names() -> set[str]:
    names = set()
    for section, keys in config_sections().items():
        name = section.strip("[]")
        parts = name.split(".")
        names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        names.update(f"{name}.{key}" for key in keys)
    return names


def unknown_keys(text: str) -> list[str]:
    known = known_names()
    unknown = []
    for line in prose_lines(text):
        for code in INLINE_CODE.findall(line):
            m = DOTTED.match(code.split(" =")[0].strip())
            if not m:
                continue
            name = m.group(1)
            parts = name.split(".")
            if parts[-1] in NOT_KEYS:
                continue  # a file name (bus.db)
            if ".".join(parts[:2]) not in known and (
                (ROOT / parts[0] / f"{parts[1]}.py").exists() or (ROOT / parts[0] / parts[1]).is_dir()
            ):
                continue  # a Python name (shadowreplay.replayer.client.outgoing_request)
            if name not in known:
                unknown.append(name)
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_keys_named_in_the_docs_exist(page: Path) -> None:
    assert unknown_keys(page.read_text(encoding="utf-8")) == []


def test_the_key_check_catches_a_key_that_does_not_exist() -> None:
    assert unknown_keys("`comparer.store.path`, `[collector.fields]`, `shadowreplay.replayer.client.outgoing_request`") == []
    assert unknown_keys("set `comparer.store.max_size` or `[collector.field]`") == ["comparer.store.max_size",
                                                                                   "collector.field"]
