"""One ``/metrics`` for ``replay --workers N``: the parent serves its children's metrics.

The parent binds ``--metrics-listen`` itself (the replayer's default port, 9465) and
hands each child an already bound listening socket on a free loopback port (inherited,
``--metrics-fd``), so no child ever competes for a port with anything: not with the
comparer's 9466, not with a second ``--workers`` run. At each scrape the parent reads
every child's ``/metrics`` and answers with all their samples, each labelled
``worker="0"`` … ``"N-1"`` (its own process metrics as ``worker="parent"``). Prometheus
scrapes one target per replayer machine, as for a single replayer; the dashboards sum
over ``worker`` as they sum over instances. ``shadow_replay_workers_expected`` and
``shadow_replay_workers_up`` say how many children there are and how many answered,
and ``/readyz`` is ready when every child is.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

import aiohttp
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from shadowreplay.replayer.metrics import WORKERS
from shadowreplay.app import Checks, MetricsServer

log = logging.getLogger(__name__)

#: A child that has not answered its scrape by then is counted down for that scrape
#: (well inside Prometheus's default 10 s scrape timeout).
CHILD_TIMEOUT_SECONDS = 3.0
STOP_SECONDS = 10.0


class WorkerMetrics:
    """Sockets for ``workers`` children and the parent's aggregating ``/metrics`` on ``listen``.

    ``with WorkerMetrics(listen, n) as wm:`` binds ``listen`` (a ListenError if it
    cannot) and serves it from a thread of its own, while the caller's thread starts and
    waits for the children: ``wm.child_args(i)`` and ``wm.pass_fds()`` go on child i's
    command line and ``Popen``; ``wm.started()`` afterwards lets go of the parent's copies."""

    def __init__(self, listen: str, workers: int, *, child_timeout_seconds: float = CHILD_TIMEOUT_SECONDS) -> None:
        self.listen = listen
        self._timeout = child_timeout_seconds
        self._socks: list[socket.socket] = []
        try:
            for _ in range(workers):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._socks.append(sock)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                sock.set_inheritable(True)
        except BaseException:
            self.started()
            raise
        self.ports = [int(s.getsockname()[1]) for s in self._socks]
        self._own = CollectorRegistry()
        ProcessCollector(registry=self._own)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.server = MetricsServer(listen, self.registry, self.readiness, before_scrape=self.refresh)
        self._families: list[Metric] = []
        self._up = 0
        self._down: set[int] = set()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- what the children get ---------------------------------------------------------

    def child_args(self, i: int) -> list[str]:
        """Flags of child ``i``: serve /metrics on the inherited socket."""
        return ["--metrics-fd", str(self._socks[i].fileno())]

    def pass_fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self._socks)

    def started(self) -> None:
        """The children hold their sockets now: close the parent's copies (so a child that
        exits closes its port, and a scrape of it fails at once)."""
        for sock in self._socks:
            sock.close()

    # -- serving -----------------------------------------------------------------------

    def __enter__(self) -> WorkerMetrics:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="worker-metrics", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException:
            self._shutdown()
            raise
        log.info("replayer workers' metrics on http://%s/metrics (children on 127.0.0.1:%s)",
                 self.listen, ",".join(map(str, self.ports)))
        return self

    def __exit__(self, *exc: object | type[BaseException] | TracebackType | None) -> None:
        self._shutdown()

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        await self.server.start()

    async def _close(self) -> None:
        await self.server.stop()
        if self._session is not None:
            await self._session.close()

    def _shutdown(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(STOP_SECONDS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_SECONDS)
            loop.close()
            self._loop = self._thread = None
            self.started()

    # -- scraping the children -----------------------------------------------------------

    async def _get(self, i: int, path: str) -> tuple[int, str]:
        assert self._session is not None
        async with self._session.get(f"http://127.0.0.1:{self.ports[i]}{path}") as resp:
            return resp.status, await resp.text()

    async def refresh(self) -> None:
        """Read every child's /metrics (concurrently) into the families ``collect`` serves."""
        answers = await asyncio.gather(*(self._get(i, "/metrics") for i in range(len(self.ports))),
                                       return_exceptions=True)
        texts: list[tuple[str, str]] = []
        down: set[int] = set()
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException) or answer[0] != 200:
                down.add(i)
                if i not in self._down:
                    log.warning("replayer worker %d does not answer on 127.0.0.1:%d: %s", i, self.ports[i],
                                answer if isinstance(answer, BaseException) else f"HTTP {answer[0]}")
                continue
            texts.append((str(i), answer[1]))
        for i in self._down - down:
            log.info("replayer worker %d answers again", i)
        self._down = down
        self._up = len(answers) - len(down)
        self._families = merged([("parent", self._own.collect()), *((w, parsed(t)) for w, t in texts)])

    async def readiness(self) -> Checks:
        """Ready when every child's /readyz is (each child's own reasons otherwise)."""
        answers = await asyncio.gather(*(self._get(i, "/readyz") for i in range(len(self.ports))),
                                       return_exceptions=True)
        checks: Checks = {}
        for i, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                checks[f"worker:{i}"] = f"127.0.0.1:{self.ports[i]} unreachable: {answer.__class__.__name__}"
            elif answer[0] != 200:
                checks[f"worker:{i}"] = f"not ready: {answer[1][:300]}"
            else:
                checks[f"worker:{i}"] = None
        return checks

    def describe(self) -> Sequence[Metric]:
        return []  # families come and go with the children's

    def collect(self) -> Iterator[Metric]:
        expected_name, up_name = WORKERS
        yield GaugeMetricFamily(expected_name, "Replayer worker processes this parent runs.", value=len(self.ports))
        yield GaugeMetricFamily(up_name, "Replayer workers whose /metrics answered the last scrape.", value=self._up)
        yield from self._families


def parsed(text: str) -> Iterable[Metric]:
    return text_string_to_metric_families(text)


def merged(sources: Sequence[tuple[str, Iterable[Metric]]]) -> list[Metric]:
    """One family per name, with every source's samples labelled ``worker=<source>``."""
    out: dict[str, Metric] = {}
    for worker, families in sources:
        for family in families:
            into = out.get(family.name)
            if into is None:
                into = out[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    return list(out.values())
