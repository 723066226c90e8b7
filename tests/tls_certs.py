"""Test certificates made at run time with the openssl command (no keys kept in git)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SERVER_EXT = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"


def require_openssl() -> None:
    """Fail (never skip) with how to install openssl when it is missing."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command: apt-get install openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(d: Path, name: str, cn: str, ca: str | None, ext: str) -> None:
    """``d/name.pem`` and ``d/name.key``: a self-signed CA when ``ca`` is None, else a
    certificate for ``cn`` signed by CA ``ca`` (in ``d``) with the extensions ``ext``."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    if ca is None:
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        return
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
