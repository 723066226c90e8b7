"""The command line explains itself: --version, help on every option, validated log
levels, JSON logs, and errors that are one line with exit status 2."""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import orjson
import pytest

from shadowreplay.cli import build_parser, main
from shadowreplay.runtime import JsonFormatter, configure_logging


def parsers(parser: argparse.ArgumentParser, path: str = "shadowreplay") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser and sub-parser, with the command line that reaches it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_option_and_command_has_help() -> None:
    missing = []
    seen = 0
    for path, parser in parsers(build_parser()):
        seen += 1
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not (choice.help or "").strip():
                        missing.append(f"{path} {choice.dest}: command without help")
                continue
            if action.help == argparse.SUPPRESS:
                continue  # hidden on purpose (set by the program itself, e.g. --worker)
            if not (action.help or "").strip():
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    assert seen >= 15, "the command tree lost its sub-commands"
    assert not missing, "options without help:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("command", ["config check", "bus dump", "replay start", "deploy write"])
def test_named_commands_document_their_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "options:" in out and "show this help message" in out


def test_replay_help_does_not_look_like_it_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "--help"])
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert "SUBCOMMAND" not in out
    assert usage.startswith("usage: shadowreplay replay [options]\n")
    assert "shadowreplay replay start [options]" in usage
    args = build_parser().parse_args(["replay", "--candidate", "http://127.0.0.1:1"])
    assert args.replay_command is None


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"shadowreplay {version('shadowreplay')}"


def test_log_level_is_validated_and_case_insensitive(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["--log-level", "debug", "config", "example"]).log_level == "DEBUG"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--log-level", "verbose", "config", "example"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--log-level" in err and "VERBOSE" in err
    for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        assert level in err


def test_json_log_lines_are_one_object_each() -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", out)
    try:
        log = logging.getLogger("shadowreplay.test")
        log.info("two\nlines and a \"quote\"")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging("INFO", "text")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["message"] == "two\nlines and a \"quote\"" and first["level"] == "INFO"
    assert first["logger"] == "shadowreplay.test" and first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_json_logs_of_a_real_command_are_json(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowreplay.cli", "--log-format", "json", "--log-level", "debug",
         "replay", "start", "--bus", "sqlite:///" + str(tmp_path) + "/bus.db", "--group", "g",
         "--from", "now", "--at", "now"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    logged = [orjson.loads(line) for line in proc.stderr.splitlines()]
    assert logged and all({"time", "level", "logger", "message"} <= set(entry) for entry in logged)
    assert any(e["logger"] == "shadowreplay.replayer.control" and "anchor for group g set" in e["message"] for e in logged)
    assert orjson.loads(proc.stdout)["group"] == "g"  # the command's own output stays on stdout


def test_a_config_error_is_one_line_with_status_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    bad = f"{tmp_path}/bad.toml"
    with open(bad, "w", encoding="utf-8") as f:
        f.write("[metrics]\nlisten = 'nope'\n")
    assert main(["config", "check", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.listen" in err
