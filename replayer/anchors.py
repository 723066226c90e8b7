"""The group's schedule anchor, kept on the bus so every replayer of a group agrees.

The control topic (one partition, key = group) holds three kinds of message for a group,
read in offset order (one partition: every reader sees the same order):

* a **set** (``replay start``): this anchor is the group's, until replaced or cleared;
* a **clear** (``replay start --clear``): the group has no anchor;
* a **claim** (a replayer that found no anchor in force, or only a stale claim): it
  names the anchor it replaces (``replaces``: that message's offset, or none). A claim
  takes effect only if what it replaces is still in force when it comes; otherwise it
  lost a race to an earlier message and is ignored. So when several replayers claim at
  once, the earliest claim wins, and each of them, reading the topic again after its
  own claim, finds the same winner.

Reads use ``Bus.reader`` (no consumer group is joined) and go to the topic's end, so a
read either sees every message published before it began or fails with a BusError.
Synchronous (the bus is); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson

from shadowreplay.replayer.schedule import Anchor
from shadowreplay.contract.bus import read_to_end
from shadowreplay.contract.bus.base import Bus, Message
from shadowreplay.contract.errors import BusError, ConfigError

log = logging.getLogger(__name__)

KIND = "replay-anchor"
# A claim that lost races this many times in a row (others kept replacing what it
# replaced) gives up with an error rather than loop.
CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class GroupAnchor:
    """The anchor in force for a group, and where it came from."""

    anchor: Anchor
    rate: float
    offset: int  # of the control-topic message that set it
    explicit: bool  # set by `replay start` (in force until replaced or cleared), else a replayer's claim
    set_at_ns: int
    # `replay start --from T`: the group's window starts at T (records before it are
    # skipped); None when the anchor's log time was taken from the records themselves.
    from_ns: int | None = None


class AnchorStore:
    """Read and write the anchors of ``topic`` (created with one partition on first use)."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self._bus = bus
        self._topic = topic
        bus.ensure_topic(topic, 1)

    def publish(self, group: str, anchor: Anchor | None, *, rate: float = 0.0, from_ns: int | None = None) -> None:
        """Make ``anchor`` (and the group's total ``rate``) the group's; None clears it."""
        body: dict[str, object] = {"kind": KIND, "group": group, "set_at": time.time_ns()}
        if anchor is None:
            body["cleared"] = True
        else:
            body |= anchor.to_wire() | {"rate": rate, "from": from_ns}
        self._send(group, body)

    def claim(self, group: str, anchor: Anchor, *, replaces: int | None, rate: float = 0.0) -> GroupAnchor:
        """Claim ``anchor`` for ``group`` in place of the anchor published at offset
        ``replaces`` (None: the group has none) and return the anchor in force after
        the claim: this one, or whichever message came first."""
        for _ in range(CLAIM_ATTEMPTS):
            body: dict[str, object] = {"kind": KIND, "group": group, "set_at": time.time_ns(), "claim": True,
                                       "replaces": replaces} | anchor.to_wire() | {"rate": rate}
            self._send(group, body)
            current = self.current(group)
            if current is not None:
                return current
            replaces = None  # cleared meanwhile: claim again, in place of nothing
        raise ConfigError(f"replay anchor: group {group!r}'s anchor on {self._topic!r} kept being cleared "
                          f"while this replayer claimed one ({CLAIM_ATTEMPTS} tries)")

    def current(self, group: str) -> GroupAnchor | None:
        """The anchor in force for ``group``, or None (never set, or cleared)."""
        key = group.encode()
        current: GroupAnchor | None = None
        for m in self._read_all():
            if m.key != key:
                continue
            try:
                obj = orjson.loads(m.value)
            except orjson.JSONDecodeError:
                log.warning("control topic %s: undecodable message at offset %d", self._topic, m.offset)
                continue
            if not isinstance(obj, dict) or obj.get("kind") != KIND:
                continue
            if obj.get("cleared"):
                current = None
                continue
            claim = bool(obj.get("claim"))
            if claim and obj.get("replaces") != (None if current is None else current.offset):
                continue  # it lost the race: what it meant to replace was no longer in force
            try:
                current = GroupAnchor(
                    anchor=Anchor.from_wire(obj),
                    rate=float(obj.get("rate") or 0.0),
                    offset=m.offset,
                    explicit=not claim,
                    set_at_ns=int(obj.get("set_at") or 0),
                    from_ns=None if obj.get("from") is None else int(obj["from"]),
                )
            except (ConfigError, TypeError, ValueError) as exc:
                log.warning("control topic %s: offset %d: %s", self._topic, m.offset, exc)
        return current

    def _send(self, group: str, body: dict[str, object]) -> None:
        producer = self._bus.producer()
        try:
            producer.publish(self._topic, orjson.dumps(body), key=group.encode())
            producer.flush()
        finally:
            producer.close()

    def _read_all(self) -> list[Message]:
        try:
            reader = self._bus.reader([self._topic])
            try:
                out = [m for batch in read_to_end(reader) for m in batch]
            finally:
                reader.close()
        except BusError as exc:  # never a silent local anchor: say which read failed
            raise BusError(f"cannot read the replay anchors on {self._topic!r}: {exc}", retriable=exc.retriable) from exc
        out.sort(key=lambda m: m.offset)
        return out
