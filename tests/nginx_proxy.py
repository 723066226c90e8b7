"""Debian's nginx as a reverse proxy in front of a test backend, started by the test itself:
its own config, prefix directory, pid file, temp paths and error log in a temp directory,
on a loopback port picked at run time. Never the system service.

``NginxProxy(upstream, workdir, {"/": "proxy_buffering off;"})`` writes one ``location
PREFIX { proxy_pass UPSTREAM; ...; DIRECTIVES }`` per entry: the caller passes the
directives under test (``proxy_buffering off;``, ``gzip on; gzip_types text/plain;`` ...).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's nginx (`apt-get install nginx-light`, or run `make system-deps`)"


def nginx_binary() -> str:
    """The nginx executable (Debian puts it in /usr/sbin, which may be off PATH); the test
    FAILS with an install hint when there is none."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail(f"nginx not found: {INSTALL_HINT}")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxProxy:
    """One nginx master + one worker proxying every path to ``upstream`` (``http://127.0.0.1:P``)."""

    def __init__(self, upstream: str, workdir: Path, locations: dict[str, str]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.error_log = workdir / "error.log"
        temp = " ".join(f"{k}_temp_path {workdir / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        blocks = "".join(
            f"    location {prefix} {{\n"
            f"      proxy_pass {upstream}; proxy_http_version 1.1; proxy_set_header Connection '';\n"
            f"      {directives}\n"
            "    }\n"
            for prefix, directives in locations.items()
        )
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"daemon off; worker_processes 1; pid {workdir / 'nginx.pid'}; error_log {self.error_log} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log off; {temp}\n"
            "  default_type application/octet-stream;\n"
            f"  server {{ listen 127.0.0.1:{self.port};\n"
            f"{blocks}"
            "  }\n"
            "}\n",
            encoding="utf-8",
        )
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(workdir), "-e", str(self.error_log), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_listening(15.0)

    def _wait_listening(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"nginx did not listen on 127.0.0.1:{self.port} within {seconds:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.error_log.read_text(errors="replace")[-2000:] if self.error_log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
