"""The composition root: the one place that wires bus, collector, replayer and comparer.

``Pipeline`` runs any subset of the three stages in one process, sharing one bus and
one Prometheus registry served on ``/metrics``. ``shadowreplay run`` starts all three;
``collect``/``replay``/``compare`` start one each, for running them as separate
processes (with Kafka as the bus). Each stage has its own default metrics port
(``config.METRICS_PORTS``), so the three run side by side on one machine without flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from shadowreplay.collector.formats import make_format
from shadowreplay.collector.handshake import Secrets
from shadowreplay.collector.metrics import CollectorMetrics
from shadowreplay.collector.server import CollectorServer
from shadowreplay.collector.tls import server_context
from shadowreplay.comparer.diff import Differ
from shadowreplay.comparer.loop import Comparer
from shadowreplay.comparer.metrics import CONSUMER_LAG as COMPARER_LAG
from shadowreplay.comparer.metrics import ComparerMetrics
from shadowreplay.comparer.store import DivergenceStore, resolve_store_path
from shadowreplay.comparer.verdict import verdict_rules
from shadowreplay.comparer.web import DivergencePage, WebAuth
from shadowreplay.replayer.control import GroupSchedule
from shadowreplay.replayer.loop import Replayer, build_targets
from shadowreplay.replayer.metrics import CONSUMER_LAG as REPLAYER_LAG
from shadowreplay.replayer.metrics import ReplayerMetrics, ScheduleCollector
from shadowreplay.replayer.rules import Rules
from shadowreplay.replayer.window import parse_window
from shadowreplay.workers import check_split
from shadowreplay.contract.bus import check_bus, open_bus
from shadowreplay.contract.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.contract.bus.base import Bus
from shadowreplay.contract.config import METRICS_PORTS, STAGES, TARGET_NAMES, Config, parse_hostport, validate
from shadowreplay.contract.errors import ConfigError, ListenError
from shadowreplay.health import probe_bus, probe_url
from shadowreplay.lag import LagMonitor

log = logging.getLogger(__name__)

#: How each listening address is named in errors: the flag, then the config key.
METRICS_FLAG = "--metrics-listen (metrics.listen)"
#: How long a stage may take to finish its in-flight work on stop before it is cancelled.
STAGE_STOP_SECONDS = 30.0
#: On stop, the comparer keeps reading the replayer's last results until it has seen
#: nothing new for this long (at most DRAIN_MAX_SECONDS), so they are counted and stored.
DRAIN_QUIET_SECONDS = 1.5
DRAIN_MAX_SECONDS = 10.0

Checks = dict[str, str | None]


def check(cfg: Config, stages: Iterable[str] = STAGES, *, environ: Mapping[str, str] | None = None) -> None:
    """Build from ``cfg`` what starting ``stages`` builds, without binding a port, opening
    the bus or reading its records: every check a stage makes when it is constructed (log
    format, field map, redaction, TLS files, forward secrets; rules, targets and their
    stream endpoints, window, worker split; path patterns, routes, verdict rules, the
    page's credentials), each a ConfigError naming the key. ``config check`` runs it for
    every stage and ``Pipeline`` before it starts anything. Secrets named in the config are
    read from ``environ`` (default: this process's environment), as start reads them. The
    candidate URL is not asked for here: ``Pipeline`` requires it (often given as a flag)."""
    env = os.environ if environ is None else environ
    validate(cfg)
    check_bus(cfg.bus.url, cfg.bus.partitions)
    stages = tuple(stages)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ConfigError(f"unknown stage(s): {', '.join(sorted(unknown))}")
    if "collect" in stages:
        c = cfg.collector
        make_format(c.format, c.fields, c.redact, escapes=c.escapes)
        server_context(c.tls)
        if c.security.shared_key_env:
            Secrets.from_config(c.security, env, socket.gethostname())
    if "replay" in stages:
        r = cfg.replayer
        Rules(r.methods, r.rules)
        build_targets(r)
        parse_window(r.window_from, r.window_to)
        check_split(r, r.workers)
    if "compare" in stages:
        Differ(cfg.comparer)
        verdict_rules(cfg.comparer)
        if cfg.comparer.web.enabled:
            WebAuth.from_config(cfg.comparer.web, env)


def default_metrics_listen(stages: Iterable[str]) -> str:
    """``127.0.0.1:PORT`` with the first stage's default port (``METRICS_PORTS``)."""
    first = next(iter(stages), "collect")
    return f"127.0.0.1:{METRICS_PORTS.get(first, METRICS_PORTS['collect'])}"


def metrics_listen(cfg: Config, stages: Iterable[str]) -> str:
    """``metrics.listen``, or the stages' default when it is empty."""
    return cfg.metrics.listen or default_metrics_listen(stages)


async def listening(what: str, address: str, start: Callable[[], Awaitable[None]]) -> None:
    """Run ``start`` (which binds ``address``); a bind failure becomes a ListenError naming
    ``what`` (the flag and config key) and the address, for the CLI's one-line error."""
    try:
        await start()
    except OSError as exc:
        raise ListenError(f"{what} {address}: {bind_failure(exc)}", what=what, address=address) from exc


def bind_failure(exc: OSError) -> str:
    """Why a listening socket could not be bound, in words an operator can act on."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there: stop it or choose another port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface of this machine has it)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format), ``/healthz`` (the process is alive)
    and ``/readyz`` (``ready()`` found no problem: 200, else 503 with the reasons).

    ``sock``: an already bound, listening socket to serve on instead of ``listen`` (the
    children of ``replay --workers``, handed one by their parent). ``before_scrape`` is
    awaited before each ``/metrics`` answer (the parent of ``--workers`` gathers its
    children's metrics there)."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        ready: Callable[[], Awaitable[Checks]] | None = None,
        *,
        sock: socket.socket | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.listen = listen
        self._host, self._port = parse_hostport(listen, "metrics.listen")
        self._registry = registry
        self._ready = ready
        self._sock = sock
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.mounts: list[Callable[[web.Application], None]] = []  # more routes, added before start()
        self.port = 0

    async def start(self) -> None:
        """Listen; an address that cannot be bound is a ConfigError naming --metrics-listen."""
        await listening(METRICS_FLAG, self.listen, self._start)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        for mount in self.mounts:
            mount(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if self._sock is not None:
            site = web.SockSite(self._runner, self._sock)
        else:
            site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks: Checks = await self._ready() if self._ready is not None else {}
        failing = {name: reason for name, reason in checks.items() if reason is not None}
        body = {"status": "not ready" if failing else "ready", "checks": {k: v or "ok" for k, v in checks.items()}}
        return web.json_response(body, status=503 if failing else 200)


class Pipeline:
    """Runs the chosen stages over one bus. ``async with Pipeline(cfg): ...``."""

    def __init__(self, cfg: Config, stages: Iterable[str] = STAGES, *, metrics_sock: socket.socket | None = None) -> None:
        """``metrics_sock``: serve /metrics on this bound socket instead of ``metrics.listen``
        (a ``replay --workers`` child)."""
        self.cfg = cfg
        self.stages = tuple(stages)
        check(cfg, self.stages)
        if "replay" in self.stages and not cfg.replayer.candidate:
            raise ConfigError("replayer.candidate: a candidate URL is required to replay (--candidate URL)")
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.metrics_server = MetricsServer(
            metrics_listen(cfg, self.stages), self.registry, self.readiness, sock=metrics_sock
        )
        self.bus: Bus | None = None
        self.collector: CollectorServer | None = None
        self.replayer: Replayer | None = None
        self.comparer: Comparer | None = None
        # The comparer's divergence store and page: on the metrics listener unless comparer.web.listen is set.
        self.store: DivergenceStore | None = None
        self.page: DivergencePage | None = None
        if "compare" in self.stages and cfg.comparer.web.enabled:
            self.page = DivergencePage(resolve_store_path(cfg.comparer.store, cfg.bus.url), cfg.comparer.web)
            if not cfg.comparer.web.listen:
                self.metrics_server.mounts.append(self.page.mount)
        self._producers: list[AsyncProducer] = []
        self._consumers: list[AsyncConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.lag: dict[str, LagMonitor] = {}  # by stage task name (replayer, comparer)
        self._lag_stop = asyncio.Event()
        self._lag_tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._stage_stops: dict[str, asyncio.Event] = {}  # per stage task, set in pipeline order
        self._state = "starting"

    async def start(self) -> None:
        """Open the bus, bind every listener (metrics, forward port, page) before any stage
        runs, then start the comparer, the replayer and let the collector accept."""
        cfg = self.cfg
        self.bus = bus = await asyncio.to_thread(open_bus, cfg.bus.url, cfg.bus.partitions)
        for topic in (cfg.bus.requests_topic, cfg.bus.results_topic):
            await asyncio.to_thread(bus.ensure_topic, topic, cfg.bus.partitions)
        await self.metrics_server.start()
        if "collect" in self.stages:
            producer = await self._producer()
            self.collector = CollectorServer(
                cfg.collector, producer, cfg.bus.requests_topic, CollectorMetrics(self.registry)
            )
            await listening("--listen (collector.listen)", cfg.collector.listen, self.collector.start)
        if "compare" in self.stages:
            consumer = await self._consumer([cfg.bus.results_topic], cfg.comparer.group)
            store_path = resolve_store_path(cfg.comparer.store, cfg.bus.url)
            self.store = await asyncio.to_thread(
                DivergenceStore, store_path, cfg.comparer.store, rules=verdict_rules(cfg.comparer)
            )
            comparer = self.comparer = Comparer(
                cfg.comparer, consumer, ComparerMetrics(self.registry, cfg.comparer.max_endpoints), store=self.store,
                replayer_group=cfg.replayer.group,
            )
            self.store.set_tallies_source(lambda: comparer.tallies)
            if self.page is not None:
                self.page.attach(self.store)
                if cfg.comparer.web.listen:
                    await listening("comparer.web.listen", cfg.comparer.web.listen, self.page.start)
            self._watch_lag("comparer", consumer, cfg.comparer.group, COMPARER_LAG)
            self._tasks.append(asyncio.create_task(self.comparer.run(self._stage_stop("comparer")), name="comparer"))
        if "replay" in self.stages:
            # The group's schedule first (read without joining any group), then the one join.
            schedule = await GroupSchedule.open(bus, cfg.replayer, cfg.bus.requests_topic)
            consumer = await self._consumer([cfg.bus.requests_topic], cfg.replayer.group)
            # Results can be made again (their offsets are committed with them), so their
            # flushes need not survive power loss: see Bus.producer.
            producer = await self._producer(power_safe=False)
            targets = tuple(name for name in TARGET_NAMES if getattr(cfg.replayer, name))
            self.replayer = Replayer(
                cfg.replayer, consumer, producer, cfg.bus.results_topic,
                ReplayerMetrics(self.registry, targets=targets), schedule=schedule,
            )
            ScheduleCollector(self.registry, self.replayer.schedule_position)
            self._watch_lag("replayer", consumer, cfg.replayer.group, REPLAYER_LAG)
            self._tasks.append(asyncio.create_task(self.replayer.run(self._stage_stop("replayer")), name="replayer"))
        self._state = "running"
        log.info(
            "pipeline up: stages=%s bus=%s metrics=http://%s:%d/metrics",
            ",".join(self.stages),
            cfg.bus.url,
            parse_hostport(self.metrics_server.listen, "metrics.listen")[0],
            self.metrics_server.port,
        )

    def _watch_lag(self, name: str, consumer: AsyncConsumer, group: str, names: tuple[str, str]) -> None:
        monitor = self.lag[name] = LagMonitor(consumer, group, names, self.registry)
        self._lag_tasks.append(asyncio.create_task(monitor.run(self._lag_stop), name=f"{name}-lag"))

    def _stage_stop(self, name: str) -> asyncio.Event:
        event = self._stage_stops[name] = asyncio.Event()
        return event

    async def readiness(self) -> Checks:
        """``/readyz``: the pipeline is running, its bus answers and its replay targets accept
        connections (and, with a comparer, the results show every target reached). A
        stopping pipeline is not ready, so load balancers drain it first."""
        checks: Checks = {"pipeline": None if self._state == "running" else self._state}
        if self.comparer is not None:
            for target, outage in sorted(self.comparer.reach.down().items()):
                checks[f"results:{target}"] = (
                    f"not reached ({outage.reason}) for {time.time() - outage.since:.0f} s: "
                    f"{outage.results} results not compared"
                )
        if self.bus is not None:
            checks["bus"] = await probe_bus(self.bus)
        if self._consumers:  # a stage that reads the bus is ready once its group has dealt it partitions
            joining = [c.group for c in self._consumers if not c.joined()]
            checks["bus group"] = f"still joining consumer group {', '.join(joining)}" if joining else None
        if "replay" in self.stages:
            r = self.cfg.replayer
            for name in TARGET_NAMES:
                url = getattr(r, name, "")
                if url:
                    checks[f"target:{name}"] = await probe_url(url)
        return checks

    async def _producer(self, *, power_safe: bool = True) -> AsyncProducer:
        assert self.bus is not None
        bus = self.bus
        producer = await asyncio.to_thread(AsyncProducer, bus, power_safe=power_safe)
        self._producers.append(producer)
        return producer

    async def _consumer(self, topics: list[str], group: str) -> AsyncConsumer:
        assert self.bus is not None
        bus = self.bus
        consumer = await asyncio.to_thread(AsyncConsumer, bus, topics, group)
        self._consumers.append(consumer)
        return consumer

    async def wait(self) -> None:
        """Until a stage task ends (one-shot replays) or ``stop()`` is called."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        else:
            await self._stop.wait()

    async def stop(self) -> None:
        """Stop in pipeline order: the collector stops accepting and acks what it stored;
        the replayer finishes its in-flight requests, publishes their results and commits;
        the comparer reads those last results, then commits and flushes; then the bus
        clients close. ``/readyz`` answers 503 from the first step on. A pipeline whose
        start failed is taken down without these log lines (the error says it all)."""
        was_running = self._state == "running"
        self._state = "stopping"
        say = log.info if was_running else log.debug
        if self.collector is not None:
            await self.collector.stop()
            say("collector stopped")
        self._stop.set()
        by_name = {task.get_name(): task for task in self._tasks}
        for name in ("replayer", "comparer"):
            task = by_name.get(name)
            if task is None:
                continue
            if name == "comparer" and "replayer" in by_name:
                await self._drain_comparer(task)
            self._stage_stops[name].set()
            await self._finish(task)
            if name == "comparer" and was_running:
                await self._say_comparer_left()
            else:
                say("%s stopped", name)
        self._lag_stop.set()
        await asyncio.gather(*self._lag_tasks, return_exceptions=True)
        for consumer in self._consumers:
            await consumer.close()
        for producer in self._producers:
            await producer.close()
        if self.page is not None:
            await self.page.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        await self.metrics_server.stop()
        if self.bus is not None:
            await asyncio.to_thread(self.bus.close)
            self.bus = None

    async def _say_comparer_left(self) -> None:
        """Log the comparer's stop with what it leaves on the bus: results it has not
        compared stay uncommitted for its group's next run (read fresh from the bus)."""
        monitor = self.lag.get("comparer")
        left = monitor.records if monitor is not None and await monitor.sample() else None
        if left is None:
            log.info("comparer stopped")
        elif left:
            log.info("comparer stopped: %d results not compared yet stay on the bus for group %s's next run",
                     left, self.cfg.comparer.group)
        else:
            log.info("comparer stopped: every result on its partitions compared")

    async def _finish(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=STAGE_STOP_SECONDS)
            except TimeoutError:
                log.warning("stage %s did not stop within %.0f s; cancelling", task.get_name(), STAGE_STOP_SECONDS)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except Exception:  # already logged by the stage; stopping goes on
                log.exception("stage %s failed", task.get_name())

    async def _drain_comparer(self, task: asyncio.Task[None]) -> None:
        """Let the comparer read what the replayer published last (bounded in time)."""
        comparer = self.comparer
        assert comparer is not None
        seen = comparer.compared + comparer.skipped
        quiet_since = time.monotonic()
        deadline = quiet_since + DRAIN_MAX_SECONDS
        while not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now_seen = comparer.compared + comparer.skipped
            if now_seen != seen:
                seen, quiet_since = now_seen, time.monotonic()
            elif time.monotonic() - quiet_since >= DRAIN_QUIET_SECONDS:
                return

    async def __aenter__(self) -> Pipeline:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
