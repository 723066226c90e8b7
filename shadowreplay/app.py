"""The composition root: the one place that wires bus, collector, replayer and comparer.

``Pipeline`` runs any subset of the three stages in one process, sharing one bus and
one Prometheus registry served on ``/metrics``. ``shadowreplay run`` starts all three;
``collect``/``replay``/``compare`` start one each, for running them as separate
processes (with Kafka as the bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from collector.metrics import CollectorMetrics
from collector.server import CollectorServer
from comparer.loop import Comparer
from comparer.metrics import ComparerMetrics
from replayer.loop import Replayer
from replayer.metrics import ReplayerMetrics
from shadowreplay.bus import open_bus
from shadowreplay.bus.aio import AsyncConsumer, AsyncProducer
from shadowreplay.bus.base import Bus
from shadowreplay.config import Config, parse_hostport
from shadowreplay.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("collect", "replay", "compare")


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/healthz`` over aiohttp."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self._host, self._port = parse_hostport(listen, "metrics.listen")
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


class Pipeline:
    """Runs the chosen stages over one bus. ``async with Pipeline(cfg): ...``."""

    def __init__(self, cfg: Config, stages: Iterable[str] = STAGES) -> None:
        self.cfg = cfg
        self.stages = tuple(stages)
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"unknown stage(s): {', '.join(sorted(unknown))}")
        if "replay" in self.stages and not cfg.replayer.candidate:
            raise ConfigError("replayer.candidate: a candidate URL is required to replay (--candidate URL)")
        self.registry = CollectorRegistry()
        self.metrics_server = MetricsServer(cfg.metrics.listen, self.registry)
        self.bus: Bus | None = None
        self.collector: CollectorServer | None = None
        self.replayer: Replayer | None = None
        self.comparer: Comparer | None = None
        self._producers: list[AsyncProducer] = []
        self._consumers: list[AsyncConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self) -> None:
        cfg = self.cfg
        self.bus = bus = await asyncio.to_thread(open_bus, cfg.bus.url, cfg.bus.partitions)
        for topic in (cfg.bus.requests_topic, cfg.bus.results_topic):
            await asyncio.to_thread(bus.ensure_topic, topic, cfg.bus.partitions)
        await self.metrics_server.start()
        if "compare" in self.stages:
            consumer = await self._consumer([cfg.bus.results_topic], cfg.comparer.group)
            self.comparer = Comparer(cfg.comparer, consumer, ComparerMetrics(self.registry, cfg.comparer.max_endpoints))
            self._tasks.append(asyncio.create_task(self.comparer.run(self._stop), name="comparer"))
        if "replay" in self.stages:
            consumer = await self._consumer([cfg.bus.requests_topic], cfg.replayer.group)
            producer = await self._producer()
            self.replayer = Replayer(
                cfg.replayer, consumer, producer, cfg.bus.results_topic, ReplayerMetrics(self.registry)
            )
            self._tasks.append(asyncio.create_task(self.replayer.run(self._stop), name="replayer"))
        if "collect" in self.stages:
            producer = await self._producer()
            self.collector = CollectorServer(
                cfg.collector, producer, cfg.bus.requests_topic, CollectorMetrics(self.registry)
            )
            await self.collector.start()
        log.info(
            "pipeline up: stages=%s bus=%s metrics=http://%s:%d/metrics",
            ",".join(self.stages),
            cfg.bus.url,
            parse_hostport(cfg.metrics.listen, "metrics.listen")[0],
            self.metrics_server.port,
        )

    async def _producer(self) -> AsyncProducer:
        assert self.bus is not None
        bus = self.bus
        producer = await asyncio.to_thread(AsyncProducer, bus)
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
        """Stop in pipeline order: collector stops accepting, replayer and comparer finish
        their in-flight work and commit, then the bus clients close."""
        if self.collector is not None:
            await self.collector.stop()
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout=30)
                except TimeoutError:
                    log.warning("stage %s did not stop within 30 s; cancelling", task.get_name())
                    task.cancel()
                except Exception:  # already logged by the stage; stopping goes on
                    log.exception("stage %s failed", task.get_name())
        for consumer in self._consumers:
            await consumer.close()
        for producer in self._producers:
            await producer.close()
        await self.metrics_server.stop()
        if self.bus is not None:
            await asyncio.to_thread(self.bus.close)
            self.bus = None

    async def __aenter__(self) -> Pipeline:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
