"""Loopback HTTP backends in a process of their own, for bench/pipeline.py and the fault tests.

    .venv/bin/python bench/backend.py candidate baseline:faulty ...

Each argument is a role ``NAME[:faulty][:diverge]``; every role listens on its own port on
127.0.0.1 (port 0: chosen by the kernel). Once all listen, one JSON line goes to stdout:
``{"candidate": 41234, "baseline": 41235}``.

Every request is counted by its ``X-Shadow-Replay`` id (the replayer's record id) with the
wall-clock time (ns) of its first arrival; ``GET /__stats`` answers
``{"counts": {id: n}, "first_ns": {id: ns}}`` and is not counted. The answer is JSON echoing
the request's headers and body, so whatever the replayer sent ends up in the results.

``faulty`` roles misbehave by path: ``/hang...`` never answers, ``/reset...`` aborts the
connection, ``/garbage...`` answers bytes that are not HTTP, ``/big...`` answers 10 MB.
``diverge`` roles add ``"who": NAME`` to the body, so a candidate and a baseline differ.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

# Keep bench/ off the import path (bench/replayer.py would shadow the replayer package).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

BIG_BYTES = 10 * 1024 * 1024
HANG_SECONDS = 3600.0


class Role:
    def __init__(self, spec: str) -> None:
        name, *flags = spec.split(":")
        unknown = set(flags) - {"faulty", "diverge"}
        if unknown:
            raise SystemExit(f"backend.py: unknown role flag(s) {sorted(unknown)} in {spec!r}")
        self.name = name
        self.faulty = "faulty" in flags
        self.diverge = "diverge" in flags
        self.counts: dict[str, int] = {}
        self.first_ns: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/__stats":
            return web.Response(
                body=orjson.dumps({"counts": self.counts, "first_ns": self.first_ns}),
                content_type="application/json",
            )
        now = time.time_ns()
        rid = request.headers.get("X-Shadow-Replay", "")
        self.counts[rid] = self.counts.get(rid, 0) + 1
        self.first_ns.setdefault(rid, now)
        body = await request.read()
        if self.faulty:
            fault = await self._fault(request)
            if fault is not None:
                return fault
        answer = {
            "id": rid,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        if self.diverge:
            answer["who"] = self.name
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        path = request.path
        transport = request.transport
        if path.startswith("/hang"):
            await asyncio.sleep(HANG_SECONDS)
        elif path.startswith("/reset") and transport is not None:
            transport.abort()
            raise asyncio.CancelledError
        elif path.startswith("/garbage") and transport is not None:
            transport.write(b"\x00\xffTHIS IS NOT HTTP\r\n\x01\x02garbage\r\n\r\n")
            transport.close()
            raise asyncio.CancelledError
        elif path.startswith("/big"):
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = BIG_BYTES
            await resp.prepare(request)
            block = b"x" * (1024 * 1024)
            try:
                for _ in range(BIG_BYTES // len(block)):
                    await resp.write(block)
            except (ConnectionError, RuntimeError):
                pass  # the client stopped reading at its cap
            return resp
        return None


async def main(specs: list[str]) -> None:
    roles = [Role(s) for s in specs] or [Role("candidate")]
    ports: dict[str, int] = {}
    runners = []
    for role in roles:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", role.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        ports[role.name] = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        runners.append(runner)
    sys.stdout.write(orjson.dumps(ports).decode() + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
