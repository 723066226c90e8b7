"""The forward protocol against the real collector server over TCP (and TLS, and UDP):
hand-built frames for every mode and option, the shared-key handshake, TLS with and
without client certificates, the network allow-list, heartbeats and limits. Records are
read back from the real embedded SQLite bus."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shadowreplay.collector.handshake import password_digest, ping_digest
from collector_harness import StartCollector, collectors
from forward_vectors import CASES, ET_NS, NOW, arr, binary, et_fixext8, mp, pong_refused, record, text
from shadowreplay.contract.config import ForwardSecurity, ForwardTls, ForwardUser
from shadowreplay.contract.errors import ConfigError
from tls_certs import SERVER_EXT, issue, require_openssl
from waiting import DEADLINE_SECONDS, until

pytestmark = pytest.mark.integration

KEY = "s3cret-shared-key"
ENV = {"FWD_KEY": KEY, "FWD_ALICE": "alice-pw", "FWD_BOB": "bob-pw"}
SECURE = ForwardSecurity(shared_key_env="FWD_KEY", self_hostname="collector.test")
WITH_USERS = dataclasses.replace(SECURE, users=(ForwardUser("alice", "FWD_ALICE"), ForwardUser("bob", "FWD_BOB")))


Start = StartCollector


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(**collector config fields)``: a collector on a fresh SQLite bus."""
    async with collectors(tmp_path, partitions=2, environ=ENV) as start_collector:
        yield start_collector


async def open_conn(port: int, ssl_ctx: ssl.SSLContext | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(DEADLINE_SECONDS):
        return await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx)


async def read_obj(reader: asyncio.StreamReader, unpacker: msgpack.Unpacker | None = None) -> Any:
    unpacker = unpacker or msgpack.Unpacker(raw=False, strict_map_key=False)
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            for obj in unpacker:
                return obj
            data = await reader.read(4096)
            assert data, "connection closed"
            unpacker.feed(data)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closes (or resets) the connection within 10 s."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            return await reader.read() == b""
    except ConnectionError:
        return True


def chunk_frame(tag: str, ids: list[str], chunk: str) -> bytes:
    entries = arr(len(ids), "32") + b"".join(arr(2) + et_fixext8(ET_NS // 10**9, i) + record(rid) for i, rid in enumerate(ids))
    return arr(3) + text(tag) + entries + mp(1) + text("chunk") + text(chunk)


async def login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    key: str = KEY,
    hostname: str = "client.test",
    user: str = "",
    password: str = "",
) -> list[Any]:
    """Play a Fluentd client's side of the handshake; the PONG as a list."""
    helo = await read_obj(reader)
    assert helo[0] == "HELO" and set(helo[1]) == {"nonce", "auth", "keepalive"}
    nonce, auth = helo[1]["nonce"], helo[1]["auth"]
    salt = "salt-0123456789a"
    pw = password_digest(auth, user, password) if user else ""
    writer.write(msgpack.packb(["PING", hostname, salt, ping_digest(salt, hostname, nonce, key), user, pw]))
    pong = await read_obj(reader)
    if pong[1]:
        assert pong[3] == "collector.test"
        assert pong[4] == ping_digest(salt, "collector.test", nonce, KEY)
    return list(pong)


# -- every mode and option over TCP ---------------------------------------------------


async def test_every_case_over_tcp_acked_byte_for_byte_and_on_the_bus(start: Start) -> None:
    c = await start()
    t0 = time.time_ns()
    for case in CASES:
        reader, writer = await open_conn(c.port)
        writer.write(case.data)
        if case.ack is not None:
            async with asyncio.timeout(DEADLINE_SECONDS):
                assert await reader.readexactly(len(case.ack)) == case.ack, case.name
        writer.close()
        await writer.wait_closed()
    t1 = time.time_ns()

    expected = [ev for case in CASES for ev in case.events]
    got = await c.records(len(expected))
    assert set(got) == {rid for rid, _ in expected}
    for rid, ts in expected:
        if ts == NOW:  # time 0: "now"
            assert t0 <= got[rid] <= t1 + 10**9, rid
        else:
            assert got[rid] == ts, rid
    assert c.metric("shadow_collector_chunks_acked_total") == sum(case.ack is not None for case in CASES)
    assert c.metric("shadow_collector_rejected_total", reason="not_logs") == 2
    assert c.metric("shadow_collector_decode_errors_total", reason="truncated") == 0
    assert sum(c.metric("shadow_collector_rejected_total", reason=r) for r in ("bad_frame", "bad_entry", "bad_blob")) == 0


async def test_every_case_on_one_connection_in_one_write(start: Start) -> None:
    c = await start()
    reader, writer = await open_conn(c.port)
    writer.write(b"".join(case.data for case in CASES))
    want_acks = b"".join(case.ack for case in CASES if case.ack is not None)
    async with asyncio.timeout(DEADLINE_SECONDS):
        assert await reader.readexactly(len(want_acks)) == want_acks  # in order, exactly
    writer.close()
    expected = {rid for case in CASES for rid, _ in case.events}
    assert set(await c.records(len(expected))) == expected


async def test_empty_heartbeat_connections_and_keepalives_are_quiet(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    c, plain = await start(security=SECURE), await start()
    caplog.set_level(logging.INFO, logger="collector")
    caplog.clear()  # what starting logged (the first collector of a process may warn about its redaction key)
    for _ in range(5):  # Fluentd's transport heartbeat: connect, close
        reader, writer = await open_conn(c.port)
        writer.close()
        await writer.wait_closed()
    for _ in range(5):
        reader, writer = await open_conn(plain.port)
        writer.write(b"\xc0\xc0")
        writer.close()
        await writer.wait_closed()
    # Every connection handled to its end (anything logged about one is logged by then).
    for collector in (c, plain):
        await until(lambda c=collector: c.metric("shadow_collector_connections_total") == 5
                    and c.metric("shadow_collector_connections_active") == 0, "the 5 connections closed")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert c.metric("shadow_collector_auth_failures_total", reason="invalid_ping") == 0
    assert plain.metric("shadow_collector_decode_errors_total", reason="truncated") == 0


# -- shared-key handshake --------------------------------------------------------------


async def test_handshake_then_records_acked(start: Start) -> None:
    c = await start(security=SECURE)
    reader, writer = await open_conn(c.port)
    assert (await login(reader, writer))[:3] == ["PONG", True, ""]
    writer.write(chunk_frame("auth", ["hs-1", "hs-2"], "hs-chunk\n"))
    assert await read_obj(reader) == {"ack": "hs-chunk\n"}
    writer.close()
    assert set(await c.records(2)) == {"hs-1", "hs-2"}
    assert c.metric("shadow_collector_auth_successes_total") == 1


async def test_ping_and_data_in_one_write(start: Start) -> None:
    """A client that sends its first chunk right behind the PING loses nothing."""
    c = await start(security=SECURE)
    reader, writer = await open_conn(c.port)
    helo = await read_obj(reader)
    nonce = helo[1]["nonce"]
    writer.write(
        msgpack.packb(["PING", "h", "salt", ping_digest("salt", "h", nonce, KEY), "", ""])
        + chunk_frame("auth", ["same-write"], "sw")
    )
    unpacker = msgpack.Unpacker(raw=False)
    assert (await read_obj(reader, unpacker))[1] is True
    assert await read_obj(reader, unpacker) == {"ack": "sw"}
    writer.close()
    assert set(await c.records(1)) == {"same-write"}


async def test_no_record_accepted_before_authentication(start: Start) -> None:
    c = await start(security=SECURE)
    reader, writer = await open_conn(c.port)
    await read_obj(reader)  # HELO
    writer.write(chunk_frame("sneaky", ["sneaky-1"], "never"))
    unpacker = msgpack.Unpacker(raw=True)
    async with asyncio.timeout(DEADLINE_SECONDS):
        data = b""
        while True:
            more = await reader.read(4096)
            if not more:
                break
            data += more
    unpacker.feed(data)
    assert data == pong_refused("invalid ping message")  # and nothing else: no ack
    assert await c.records(0) == {}
    assert c.metric("shadow_collector_auth_failures_total", reason="invalid_ping") == 1
    assert c.metric("shadow_collector_records_total") == 0


@pytest.mark.parametrize(
    "kw, reason, label",
    [
        ({"key": "wrong"}, "shared_key mismatch", "shared_key_mismatch"),
        ({"user": "alice", "password": "nope"}, "username/password mismatch", "user_mismatch"),
        ({"user": "carol", "password": "alice-pw"}, "username/password mismatch", "user_mismatch"),
        ({"user": ""}, "username/password mismatch", "user_mismatch"),
        ({"hostname": "collector.test", "user": "bob", "password": "bob-pw"}, "same hostname as the server", "same_hostname"),
    ],
)
async def test_refused_logins_get_a_clear_pong_and_are_closed(
    start: Start, kw: dict[str, str], reason: str, label: str
) -> None:
    c = await start(security=WITH_USERS)
    reader, writer = await open_conn(c.port)
    assert await login(reader, writer, **kw) == ["PONG", False, reason, "", ""]
    assert await closed(reader)
    writer.close()
    assert c.metric("shadow_collector_auth_failures_total", reason=label) == 1
    # A good user still gets in.
    reader, writer = await open_conn(c.port)
    assert (await login(reader, writer, user="alice", password="alice-pw"))[1] is True
    writer.close()


async def test_replayed_ping_is_refused(start: Start) -> None:
    c = await start(security=SECURE)
    reader, writer = await open_conn(c.port)
    helo = await read_obj(reader)
    recorded = msgpack.packb(["PING", "h", "salt", ping_digest("salt", "h", helo[1]["nonce"], KEY), "", ""])
    writer.write(recorded)
    assert (await read_obj(reader))[1] is True
    writer.close()
    # An eavesdropper replays the PING on a new connection: its HELO had a fresh nonce.
    reader, writer = await open_conn(c.port)
    await read_obj(reader)
    writer.write(recorded + chunk_frame("replay", ["replayed"], "r"))
    assert await read_obj(reader) == ["PONG", False, "shared_key mismatch", "", ""]
    assert await closed(reader)
    writer.close()
    assert c.metric("shadow_collector_auth_failures_total", reason="shared_key_mismatch") == 1
    assert c.metric("shadow_collector_records_total") == 0


async def test_silent_client_times_out(start: Start) -> None:
    c = await start(security=dataclasses.replace(SECURE, handshake_timeout_seconds=0.3))
    reader, writer = await open_conn(c.port)
    await read_obj(reader)
    assert await closed(reader)
    writer.close()
    assert c.metric("shadow_collector_auth_failures_total", reason="timeout") == 1


async def test_missing_secret_is_a_config_error(start: Start) -> None:
    with pytest.raises(ConfigError, match=r"collector\.security\.users\[1\]\.password_env"):
        await start(security=WITH_USERS, environ={"FWD_KEY": "k", "FWD_ALICE": "a"})


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one
    from an unrelated CA, made with the openssl command at run time."""
    require_openssl()
    d = tmp_path_factory.mktemp("pki")
    issue(d, "ca", "shadowreplay test CA", None, "")
    issue(d, "server", "127.0.0.1", "ca", SERVER_EXT)
    issue(d, "client", "client.test", "ca", "extendedKeyUsage=clientAuth")
    issue(d, "rogue_ca", "rogue CA", None, "")
    issue(d, "rogue", "rogue.test", "rogue_ca", "extendedKeyUsage=clientAuth")
    return d


def client_ctx(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx


def server_tls(pki: Path, *, ca: bool = False, require: bool = False) -> ForwardTls:
    return ForwardTls(
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        ca_file=str(pki / "ca.pem") if ca else "",
        require_client_cert=require,
    )


async def test_tls_without_client_certificates(start: Start, pki: Path) -> None:
    c = await start(tls=server_tls(pki), security=SECURE)
    reader, writer = await open_conn(c.port, client_ctx(pki))
    assert (await login(reader, writer))[1] is True
    writer.write(chunk_frame("tls", [f"tls-{i}" for i in range(50)], "tls-1\n"))
    assert await read_obj(reader) == {"ack": "tls-1\n"}
    writer.close()
    assert len(await c.records(50)) == 50
    # Plain text against the TLS port: refused, counted, and the server goes on.
    reader, writer = await open_conn(c.port)
    writer.write(chunk_frame("plain", ["plain-1"], "p"))
    assert await closed(reader)
    writer.close()
    assert c.metric("shadow_collector_tls_handshake_failures_total") == 1
    assert "plain-1" not in await c.records(50)


async def test_tls_with_required_client_certificates(start: Start, pki: Path) -> None:
    c = await start(tls=server_tls(pki, ca=True, require=True))
    reader, writer = await open_conn(c.port, client_ctx(pki, "client"))
    writer.write(chunk_frame("mtls", ["mtls-1"], "m1"))
    assert await read_obj(reader) == {"ack": "m1"}
    writer.close()
    for cert in (None, "rogue"):
        try:
            reader, writer = await open_conn(c.port, client_ctx(pki, cert))
        except (ssl.SSLError, ConnectionError):
            continue  # refused during the handshake
        # TLS 1.3: the client learns of the refusal on its first read.
        writer.write(chunk_frame("mtls", [f"refused-{cert}"], "x"))
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            await read_obj(reader)
        writer.close()
    assert set(await c.records(1)) == {"mtls-1"}
    assert c.metric("shadow_collector_tls_handshake_failures_total") == 2


async def test_tls_optional_client_certificate(start: Start, pki: Path) -> None:
    c = await start(tls=server_tls(pki, ca=True, require=False))
    for cert in (None, "client"):
        reader, writer = await open_conn(c.port, client_ctx(pki, cert))
        writer.write(chunk_frame("opt", [f"opt-{cert}"], "o"))
        assert await read_obj(reader) == {"ack": "o"}
        writer.close()
    assert set(await c.records(2)) == {"opt-None", "opt-client"}


# -- allow-list, UDP heartbeat ----------------------------------------------------------


async def udp_ask(port: int, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"ping", ("127.0.0.1", port))
        try:
            return await asyncio.to_thread(s.recv, 16)
        except TimeoutError:
            return None


async def test_allow_list(start: Start) -> None:
    refused = await start(security=ForwardSecurity(allow_networks=("10.0.0.0/8", "::1/128")))
    for _ in range(3):
        reader, writer = await open_conn(refused.port)
        writer.write(chunk_frame("x", ["denied"], "d"))
        assert await closed(reader)
        writer.close()
    assert refused.metric("shadow_collector_connections_refused_total", reason="not_allowed") == 3
    assert refused.metric("shadow_collector_connections_total") == 0
    assert await udp_ask(refused.port, 0.5) is None  # heartbeats from outside are not answered
    allowed = await start(security=ForwardSecurity(allow_networks=("10.0.0.0/8", "127.0.0.0/30")))
    reader, writer = await open_conn(allowed.port)
    writer.write(chunk_frame("x", ["allowed"], "a"))
    assert await read_obj(reader) == {"ack": "a"}
    writer.close()
    assert await udp_ask(allowed.port) == b"\x00"


async def test_udp_heartbeat_on_the_same_port(start: Start) -> None:
    c = await start()
    for _ in range(3):
        assert await udp_ask(c.port) == b"\x00"
    assert c.metric("shadow_collector_udp_heartbeats_total") == 3
    off = await start(udp_heartbeat=False)
    assert await udp_ask(off.port, 0.3) is None


# -- limits ------------------------------------------------------------------------------


async def test_gzip_bomb_refused_once_logged_connection_goes_on(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    c = await start(max_chunk_bytes=1 << 20, max_decompressed_bytes=4 << 20)
    caplog.set_level(logging.WARNING, logger="collector")
    # One entry (a bin32 that says 2 GiB) that never ends: only the inflated size stops it.
    bomb = gzip.compress(b"\xc6\x7f\xff\xff\xff" + b"\x00" * (64 << 20))
    frame = arr(3) + text("bomb") + binary(bomb) + mp(2) + text("compressed") + text("gzip") + text("chunk") + text("boom")
    reader, writer = await open_conn(c.port)
    writer.write(frame + frame + chunk_frame("after", ["after-bomb"], "after"))
    assert await read_obj(reader) == {"ack": "after"}  # the bombs got none
    writer.close()
    assert set(await c.records(1)) == {"after-bomb"}
    assert c.metric("shadow_collector_limit_hits_total", limit="max_decompressed_bytes") == 2
    assert c.metric("shadow_collector_rejected_total", reason="decompressed_too_large") == 2
    logged = [r for r in caplog.records if "max_decompressed_bytes" in r.getMessage()]
    assert len(logged) == 1


async def test_max_chunk_and_max_connections_limits_counted(start: Start) -> None:
    c = await start(max_chunk_bytes=64 * 1024, max_connections=2)
    reader, writer = await open_conn(c.port)
    writer.write(arr(3) + text("big") + binary(b"\x00" * (2 << 20)) + mp(1) + text("chunk") + text("big"))
    assert await closed(reader)
    writer.close()
    assert c.metric("shadow_collector_limit_hits_total", limit="max_chunk_bytes") == 1
    # Both slots held by connections that sent a valid chunk and are inside another
    # frame: nothing to shed, so a third is refused.
    held = [await open_conn(c.port) for _ in range(2)]
    for r, w in held:
        w.write(chunk_frame("held", [f"held-{id(r)}"], "h"))
        assert await read_obj(r) == {"ack": "h"}
    received = c.metric("shadow_collector_received_bytes_total")
    for r, w in held:
        w.write(chunk_frame("held", [f"more-{id(r)}"], "m")[:10])
    await until(lambda: c.metric("shadow_collector_received_bytes_total") == received + 20, "both inside a frame")
    extra = await open_conn(c.port)
    assert await closed(extra[0])
    extra[1].close()
    for r, w in held:
        w.write(chunk_frame("held", [f"more-{id(r)}"], "m")[10:])
        assert await read_obj(r) == {"ack": "m"}
        w.close()
    assert c.metric("shadow_collector_limit_hits_total", limit="max_connections") == 1
    assert c.metric("shadow_collector_connections_refused_total", reason="max_connections") == 1


# -- malformed clients interleaved with good ones ----------------------------------------


async def test_malformed_connections_interleaved_with_authenticated_good_ones(start: Start) -> None:
    c = await start(security=SECURE, max_chunk_bytes=256 * 1024)
    per_client, chunks = 40, 10

    async def good(n: int) -> None:
        reader, writer = await open_conn(c.port)
        assert (await login(reader, writer, hostname=f"good-{n}"))[1] is True
        unpacker = msgpack.Unpacker(raw=False)
        for k in range(chunks):
            ids = [f"g{n}-{k}-{i}" for i in range(per_client)]
            writer.write(chunk_frame(f"good{n}", ids, f"{n}-{k}\n"))
            assert await read_obj(reader, unpacker) == {"ack": f"{n}-{k}\n"}
            await asyncio.sleep(0)
        writer.close()

    async def bad(kind: int, rep: int) -> None:
        reader, writer = await open_conn(c.port)
        if kind == 0:  # heartbeat
            pass
        elif kind == 1:  # garbage instead of a PING
            writer.write(b"\xc1\xc1\xc1 not msgpack")
        elif kind == 2:  # a wrong key
            await login(reader, writer, key="nope")
        else:  # logged in, then a good chunk, then garbage, then a truncated frame
            await login(reader, writer, hostname="bad")
            writer.write(chunk_frame("bad", [f"bad-{kind}-{rep}"], "b"))
            assert await read_obj(reader) == {"ack": "b"}
            writer.write([b"\xc1\xc1", chunk_frame("bad", ["lost"], "l")[:-9]][kind % 2])
            if kind % 2:
                writer.write_eof()  # truncated: the frame never completes
        try:
            await writer.drain()
            await closed(reader) if kind != 0 else None
        except ConnectionError:
            pass
        writer.close()

    async with asyncio.timeout(60):
        await asyncio.gather(*[good(n) for n in range(4)], *[bad(k, r) for k in range(8) for r in range(2)])
    got = await c.records(4 * chunks * per_client + 10)
    want = {f"g{n}-{k}-{i}" for n in range(4) for k in range(chunks) for i in range(per_client)}
    assert want <= set(got)
    assert set(got) - want == {f"bad-{k}-{r}" for k in range(3, 8) for r in range(2)}
    assert c.metric("shadow_collector_records_total") == len(want) + 2 * 5
    assert c.metric("shadow_collector_decode_errors_total", reason="truncated") == 3 * 2
    assert c.metric("shadow_collector_decode_errors_total", reason="msgpack") == 2 * 2
    assert c.metric("shadow_collector_auth_failures_total", reason="shared_key_mismatch") == 2
