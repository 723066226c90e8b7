"""Conformance of the pure protocol code with FORWARD_PROTOCOL.md: every mode and option
as hand-built bytes through the decoder, the ack bytes, and the handshake vectors."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from shadowreplay.collector.forward import ForwardDecoder, encode_ack
from shadowreplay.collector.handshake import (
    INVALID_PING,
    KEY_MISMATCH,
    SAME_HOSTNAME,
    USER_MISMATCH,
    Handshake,
    Secrets,
    password_digest,
    ping_digest,
)
from forward_vectors import (
    CASES,
    HS_AUTH,
    HS_CLIENT,
    HS_KEY,
    HS_NONCE,
    HS_PASSWORD_DIGEST,
    HS_PING_DIGEST,
    HS_PONG_DIGEST,
    HS_SALT,
    HS_SERVER,
    NOW,
    Case,
    arr,
    mp,
    ping,
    pong_ok,
    pong_refused,
    text,
)
from shadowreplay.contract.config import ForwardSecurity, ForwardUser
from shadowreplay.contract.errors import ConfigError


def decode(data: bytes, step: int | None = None) -> list:
    d = ForwardDecoder(clock_ns=lambda: NOW)
    frames = []
    if step is None:
        frames += d.feed(data)
    else:
        for i in range(0, len(data), step):
            frames += d.feed(data[i : i + step])
    d.eof()
    return frames


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_decodes_as_specified(case: Case) -> None:
    frames = decode(case.data)
    assert len(frames) == 1
    f = frames[0]
    assert (f.tag, f.mode, f.error) == (case.tag, case.mode, None)
    got = [(ev.record["request_id"], ev.time_ns) for ev in f.events]
    if f.signal != 0:
        # Not log records: each entry counted for the server to skip, none decoded.
        assert got == [] and case.events == [] and f.errors and set(f.errors) == {"not_logs"}
    else:
        assert got == case.events and f.errors == []
    if case.ack is None:
        assert f.chunk is None
    else:
        assert f.chunk is not None and encode_ack(f.chunk) == case.ack


def test_all_cases_as_one_stream_in_odd_pieces() -> None:
    stream = b"".join(c.data for c in CASES)
    for step in (1, 7, 4096):
        frames = decode(stream, step)
        assert [f.tag for f in frames] == [c.tag for c in CASES]
        assert [encode_ack(f.chunk) if f.chunk is not None else None for f in frames] == [c.ack for c in CASES]


def test_ack_vector_from_the_spec() -> None:
    assert encode_ack("p8n9gmxTQVC8/nh2wlKKeQ==") == bytes.fromhex(
        "81 a3 61 63 6b b8 70 38 6e 39 67 6d 78 54 51 56 43 38 2f 6e 68 32 77 6c 4b 4b 65 51 3d 3d"
    )


def test_eventtime_vector() -> None:
    f = decode(arr(3) + text("t") + bytes.fromhex("d7 00 57 4f c5 33 07 5b b2 b8") + mp(0))[0]
    assert f.events[0].time_ns == 1464845619_123450040


# -- handshake ---------------------------------------------------------------------------


def test_digest_vectors() -> None:
    assert ping_digest(HS_SALT, HS_CLIENT, HS_NONCE, HS_KEY) == HS_PING_DIGEST
    assert ping_digest(HS_SALT, HS_SERVER, HS_NONCE, HS_KEY) == HS_PONG_DIGEST
    assert password_digest(HS_AUTH, "alice", "pass") == HS_PASSWORD_DIGEST


def secrets(users: dict[bytes, bytes] | None = None, hostname: str = HS_SERVER) -> Secrets:
    return Secrets(HS_KEY.encode(), users or {}, hostname)


def unpack_as_server(raw: bytes) -> object:
    # As the server unpacks a PING: str kept byte for byte.
    return msgpack.unpackb(raw, raw=False, unicode_errors="surrogateescape", strict_map_key=False)


def test_helo_shape() -> None:
    hs = Handshake(secrets({b"alice": b"pass"}), nonce=HS_NONCE, auth=HS_AUTH)
    assert hs.helo() == (
        arr(2) + text("HELO") + mp(3)
        + text("nonce") + b"\xc4\x10" + HS_NONCE
        + text("auth") + b"\xc4\x10" + HS_AUTH
        + text("keepalive") + b"\xc3"
    )
    # Without users, Fluentd sends an empty auth salt; nonces are fresh per connection.
    a, b = Handshake(secrets()), Handshake(secrets())
    assert a.auth == b"" and len(a.nonce) == 16 and a.nonce != b.nonce


def test_ping_vector_accepted_with_pong_vector() -> None:
    hs = Handshake(secrets(), nonce=HS_NONCE)
    result = hs.check(unpack_as_server(ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST)))
    assert result.ok and result.client_hostname == HS_CLIENT
    assert result.pong == pong_ok(HS_SERVER, HS_PONG_DIGEST)


def test_user_password_vector() -> None:
    hs = Handshake(secrets({b"alice": b"pass"}), nonce=HS_NONCE, auth=HS_AUTH)
    good = ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST, "alice", HS_PASSWORD_DIGEST)
    assert hs.check(unpack_as_server(good)).ok
    wrong_pw = ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST, "alice", password_digest(HS_AUTH, "alice", "nope"))
    unknown = ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST, "mallory", password_digest(HS_AUTH, "mallory", "pass"))
    no_user = ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST)
    for bad in (wrong_pw, unknown, no_user):
        result = hs.check(unpack_as_server(bad))
        assert (result.ok, result.reason, result.pong) == (False, USER_MISMATCH, pong_refused(USER_MISMATCH))


def test_wrong_key_and_replayed_ping_refused() -> None:
    hs = Handshake(secrets(), nonce=HS_NONCE)
    wrong_key = ping(HS_CLIENT, HS_SALT, ping_digest(HS_SALT, HS_CLIENT, HS_NONCE, "guess"))
    assert hs.check(unpack_as_server(wrong_key)).reason == KEY_MISMATCH
    # The vector PING, good for nonce 00..0f, replayed to a connection with a fresh nonce.
    replay = Handshake(secrets())
    result = replay.check(unpack_as_server(ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST)))
    assert (result.ok, result.pong) == (False, pong_refused(KEY_MISMATCH))


def test_raw_byte_salt_in_str_is_hashed_as_received() -> None:
    salt = bytes([0xFF, 0x00, 0x80, 0xC3]) + os.urandom(12)  # not UTF-8, as Fluent Bit sends it
    hs = Handshake(secrets(), nonce=HS_NONCE)
    digest = ping_digest(salt, HS_CLIENT, HS_NONCE, HS_KEY)
    result = hs.check(unpack_as_server(ping(HS_CLIENT, salt, digest)))
    assert result.ok
    assert result.pong == pong_ok(HS_SERVER, ping_digest(salt, HS_SERVER, HS_NONCE, HS_KEY))


@pytest.mark.parametrize(
    "message",
    [
        arr(5) + text("PING") + text("h") + text("s") + text("d") + text(""),
        arr(6) + text("PONG") + text("h") + text("s") + text("d") + text("") + text(""),
        arr(6) + text("PING") + b"\x01" + text("s") + text("d") + text("") + text(""),
        arr(3) + text("conf") + b"\x01" + mp(0),  # a data frame instead of a PING
        mp(0),
        b"\xc0",
    ],
)
def test_invalid_ping_refused(message: bytes) -> None:
    result = Handshake(secrets()).check(unpack_as_server(message))
    assert (result.ok, result.reason, result.pong) == (False, INVALID_PING, pong_refused(INVALID_PING))


def test_client_with_the_servers_hostname_refused() -> None:
    hs = Handshake(secrets(hostname=HS_CLIENT), nonce=HS_NONCE)
    assert hs.check(unpack_as_server(ping(HS_CLIENT, HS_SALT, HS_PING_DIGEST))).reason == SAME_HOSTNAME


def test_secrets_come_from_the_environment() -> None:
    security = ForwardSecurity(
        shared_key_env="FWD_KEY", users=(ForwardUser("alice", "FWD_ALICE"),), self_hostname="me"
    )
    s = Secrets.from_config(security, {"FWD_KEY": "k", "FWD_ALICE": "pw"}, "default")
    assert s == Secrets(b"k", {b"alice": b"pw"}, "me")
    with pytest.raises(ConfigError, match=r"collector\.security\.shared_key_env"):
        Secrets.from_config(security, {"FWD_ALICE": "pw"}, "h")
    with pytest.raises(ConfigError, match=r"collector\.security\.users\[0\]\.password_env"):
        Secrets.from_config(security, {"FWD_KEY": "k", "FWD_ALICE": ""}, "h")


# -- limits -------------------------------------------------------------------------------

_BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from shadowreplay.collector.forward import ForwardDecoder

    def rss_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    frame = open(sys.argv[1], "rb").read()
    d = ForwardDecoder(max_frame_bytes=8 << 20, max_decompressed_bytes=16 << 20)
    d.feed(b"\\x93\\xa1x\\xc0\\x80")  # warm up the decoder's own allocations
    before = rss_mib()
    frames = d.feed(frame)
    after = rss_mib()
    assert len(frames) == 1 and frames[0].error is not None, frames
    print(frames[0].error.reason, round(after - before, 1))
    """
)


def test_gzip_bomb_does_not_grow_memory_past_the_limit(tmp_path: Path) -> None:
    """2 GiB of zeros in a ~2 MiB CompressedPackedForward frame, with a 16 MiB limit:
    the decoder's peak RSS may grow by a few times the limit, never by the bomb. The
    zeros follow a bin32 header that declares 2 GiB, so they are one entry that never
    ends (zeros alone would be refused sooner, as too many records)."""
    member = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)
    blob = gzip.compress(b"\xc6\x7f\xff\xff\xff" + b"\x00" * (1 << 20)) + member * 31
    assert len(blob) < 8 << 20
    frame = (
        arr(3) + text("bomb") + b"\xc6" + len(blob).to_bytes(4, "big") + blob
        + mp(2) + text("compressed") + text("gzip") + text("chunk") + text("boom")
    )
    path = tmp_path / "bomb.bin"
    path.write_bytes(frame)
    del member, blob, frame
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert out.returncode == 0, out.stderr
    reason, growth = out.stdout.split()
    assert reason == "decompressed_too_large"
    assert float(growth) < 64, f"peak RSS grew by {growth} MiB decoding a bomb with a 16 MiB limit"
