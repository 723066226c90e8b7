"""Real peers for the ingest tests: nginx and Apache writing access logs, a raw-socket HTTP
backend that records the exact bytes it receives, and ``shadowreplay tail`` in a thread.

A peer that cannot start fails the test with how to install it (tests/system-deps.sh)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shadowreplay.collector.tail import Tail, TailOptions
from tests.conftest import free_port
from waiting import DEADLINE_SECONDS

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
START_SECONDS = DEADLINE_SECONDS


def binary(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        pytest.fail(f"{name} is not installed: run tests/system-deps.sh (or apt-get install {package})")
    return path


class ServerProcess:
    """A web server in the foreground on loopback ``port``; ``stop()`` ends it."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{argv[0]} exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"{argv[0]} did not listen on 127.0.0.1:{port}: {log.read_text()[-2000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_nginx(tmp: Path) -> tuple[ServerProcess, Path, Path]:
    """nginx logging docs/ingest.md's LTSV log_format (no ``escape=``: nginx's default escaping)
    and its predefined ``combined``; ``/api`` is proxied (so ``$request_body`` is read
    and logged). Returns the process and the two log files."""
    nginx = binary("nginx", "nginx-light")
    port, upstream = free_port(), free_port()
    ltsv, combined = tmp / "ltsv.log", tmp / "combined.log"
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{}}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    log_format shadow_ltsv 'msec:$msec\\tremote_addr:$remote_addr\\trequest_method:$request_method\\t'
        'request_uri:$request_uri\\thost:$host\\tstatus:$status\\tbody_bytes_sent:$body_bytes_sent\\t'
        'request_time:$request_time\\trequest_body:$request_body\\thttp_user_agent:$http_user_agent';
    server {{
        listen 127.0.0.1:{port};
        access_log {ltsv} shadow_ltsv;
        access_log {combined} combined;
        location / {{ return 200 "ok\\n"; }}
        location /api {{ proxy_pass http://127.0.0.1:{upstream}; }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        access_log off;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    proc = ServerProcess([nginx, "-c", str(conf), "-p", str(tmp)], port, tmp / "nginx.out")
    return proc, ltsv, combined


def start_apache(tmp: Path) -> tuple[ServerProcess, Path]:
    """Apache httpd (Debian's apache2, one process) writing the combined format."""
    apache = binary("apache2", "apache2")
    port = free_port()
    docs = tmp / "htdocs"
    docs.mkdir(exist_ok=True)
    (docs / "index.html").write_text("ok\n")
    tmp.chmod(0o755)
    docs.chmod(0o755)
    log = tmp / "access.log"
    conf = tmp / "httpd.conf"
    modules = "/usr/lib/apache2/modules"
    conf.write_text(
        f"""ServerRoot {tmp}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
Listen 127.0.0.1:{port}
ServerName localhost
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/error.log
User nobody
Group nogroup
DocumentRoot {docs}
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog {log} combined
<Directory {docs}>
    Require all granted
</Directory>
"""
    )
    proc = ServerProcess([apache, "-X", "-f", str(conf)], port, tmp / "apache.out")
    return proc, log


def send_raw(port: int, request: bytes) -> bytes:
    """Send ``request`` (with ``Connection: close``) as is; the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def wait_for_lines(path: Path, n: int, seconds: float = DEADLINE_SECONDS) -> list[bytes]:
    """The lines of ``path`` once it holds ``n`` (the server writes after responding)."""
    deadline = time.monotonic() + seconds
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"{path} holds {len(lines)} lines, expected {n}")
        time.sleep(0.02)


@dataclass
class Received:
    """One request as the raw backend read it off the socket."""

    request_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class RawBackend:
    """An HTTP/1.1 server on loopback that answers 200 and keeps every request's bytes."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
                length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                self.received.append(Received(lines[0], headers, body))  # type: ignore[arg-type]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class TailThread:
    """``shadowreplay tail`` (the real class) following files in a thread."""

    def __init__(self, options: TailOptions) -> None:
        self.tail = Tail(options)
        self.thread = threading.Thread(target=self.tail.run, name="tail", daemon=True)
        self.thread.start()

    async def until(self, done: Callable[[Tail], bool], what: str, seconds: float = DEADLINE_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while not done(self.tail):
            if time.monotonic() > deadline:
                pytest.fail(f"tail: {what} not reached within {seconds}s: {self.tail.stats}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.tail.stop()
        await asyncio.to_thread(self.thread.join, 10)
        assert not self.thread.is_alive()


def tail_options(files: list[Path], port: int, fmt: str, state: Path, **kw: object) -> TailOptions:
    return TailOptions(
        files=tuple(str(f) for f in files),
        port=port,
        tag="ingest.test",
        format=fmt,
        state_path=str(state),
        from_start=True,
        flush_seconds=0.05,
        poll_seconds=0.02,
        ack_timeout_seconds=10.0,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
        report_seconds=0.1,
        **kw,  # type: ignore[arg-type]
    )
