"""The shared schedule anchor, kept on the bus so every replayer of a group agrees.

``shadowreplay replay start …`` publishes an anchor for a group on the control topic
(one partition, key = group); replayers read the latest one for their group when they
start. Latest wins, like a compacted topic: a newer message for the same group replaces
the older, and a ``cleared`` message withdraws it. Synchronous (the bus is); async
callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import time
import uuid

import orjson

from replayer.schedule import Anchor
from shadowreplay.bus.base import Bus, Message
from shadowreplay.errors import ConfigError

log = logging.getLogger(__name__)

KIND = "replay-anchor"


class AnchorStore:
    """Read and write the anchors of ``topic`` (created with one partition on first use)."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self._bus = bus
        self._topic = topic
        bus.ensure_topic(topic, 1)

    def publish(self, group: str, anchor: Anchor | None, *, rate: float = 0.0) -> None:
        """Make ``anchor`` (and the group's total ``rate``) the group's; None clears it."""
        body: dict[str, object] = {"kind": KIND, "group": group, "set_at": time.time_ns()}
        if anchor is None:
            body["cleared"] = True
        else:
            body |= anchor.to_wire() | {"rate": rate}
        producer = self._bus.producer()
        try:
            producer.publish(self._topic, orjson.dumps(body), key=group.encode())
            producer.flush()
        finally:
            producer.close()

    def latest(self, group: str, max_seconds: float = 15.0) -> tuple[Anchor, float] | None:
        """The group's current (anchor, rate), or None (never set, or cleared)."""
        messages = self._read_all(max_seconds)
        current: tuple[Anchor, float] | None = None
        for m in messages:
            if m.key != group.encode():
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
            try:
                current = (Anchor.from_wire(obj), float(obj.get("rate") or 0.0))
            except ConfigError as exc:
                log.warning("control topic %s: %s", self._topic, exc)
        return current

    def _read_all(self, max_seconds: float) -> list[Message]:
        # A throwaway group reads the (small) topic from its beginning; nothing is committed.
        consumer = self._bus.consumer([self._topic], f"shadow-anchor-reader-{uuid.uuid4().hex[:12]}")
        out: list[Message] = []
        deadline = time.monotonic() + max_seconds
        got_any_round = False
        empty = 0
        try:
            while time.monotonic() < deadline:
                batch = consumer.poll(500, 0.3)
                out.extend(batch)
                if batch:
                    got_any_round, empty = True, 0
                    continue
                empty += 1
                # Kafka assigns partitions inside poll: wait for the assignment first.
                if consumer.assignment() and empty >= (2 if got_any_round else 3):
                    break
        finally:
            consumer.close()
        out.sort(key=lambda m: m.offset)
        return out
