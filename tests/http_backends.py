"""Real aiohttp backends on 127.0.0.1:0 for integration tests: ``serve`` runs any handler
on every path; ``start_backend`` runs one that notes each request it gets (a ``Hit``)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Respond = Callable[[web.Request], web.StreamResponse | None]


async def serve(handler: Handler) -> tuple[str, web.AppRunner]:
    """``handler`` for every method and path on a fresh loopback port: (base URL, runner);
    the caller cleans the runner up."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}", runner


@dataclass
class Hit:
    id: str
    arrival_ns: int
    raw_path: str
    headers: dict[str, str]
    forwarded_for: str | None


@dataclass
class Backend:
    name: str
    url: str = ""
    hits: list[Hit] = field(default_factory=list)

    def ids(self) -> Counter[str]:
        return Counter(h.id for h in self.hits)


async def start_backend(name: str, respond: Respond | None = None) -> tuple[Backend, web.AppRunner]:
    """A backend that notes every request, then answers ``respond(request)`` or, when that
    is None (or not given), ``{"backend": name, "path": request.path}`` as JSON."""
    backend = Backend(name)

    async def handle(request: web.Request) -> web.StreamResponse:
        backend.hits.append(
            Hit(
                id=request.headers.get("X-Shadow-Replay", ""),
                arrival_ns=time.time_ns(),
                raw_path=request.raw_path,
                headers=dict(request.headers),
                forwarded_for=request.headers.get("X-Forwarded-For"),
            )
        )
        response = respond(request) if respond is not None else None
        return response if response is not None else web.json_response({"backend": name, "path": request.path})

    backend.url, runner = await serve(handle)
    return backend, runner
