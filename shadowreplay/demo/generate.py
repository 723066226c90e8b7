"""Regenerate the bundled sample access log (deterministic): ``python -m shadowreplay.demo.generate``.

Lines are nginx JSON access-log records (``log_format ... escape=json``) with nginx's
own variable names and ``$msec`` timestamps (millisecond precision), arriving in bursts.
"""

from __future__ import annotations

import random
import sys
from decimal import Decimal
from pathlib import Path

import orjson

START_MSEC = Decimal("1795600800.000")  # 2026-11-24T08:40:00Z
LINES = 2500
SPAN_SECONDS = 200

AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (iPhone)", "shop-app/4.2 (android)"]


def generate(seed: int = 7) -> list[dict[str, str]]:
    rnd = random.Random(seed)
    # Bursty arrivals: quiet stretches and flash sales.
    times: list[int] = []
    t_ms = 0
    while len(times) < LINES:
        rate_per_s = rnd.choice([5, 10, 15, 40])  # per 2-second window
        for _ in range(int(rate_per_s * 2)):
            times.append(t_ms + rnd.randrange(0, 2000))
        t_ms += 2000
    times = sorted(times[:LINES])
    scale = SPAN_SECONDS * 1000 / max(times[-1], 1)
    out = []
    for i, rel in enumerate(times):
        msec = START_MSEC + Decimal(int(rel * scale)) / 1000
        uid = rnd.randrange(1, 400)
        roll = rnd.random()
        method, status, body = "GET", "200", ""
        if roll < 0.40:
            uri = f"/api/products/{rnd.randrange(1, 120)}"
            if rnd.random() < 0.3:
                uri += f"?ref=home&ref=banner&utm={rnd.choice(['a', 'b'])}"
        elif roll < 0.58:
            uri = f"/api/products?page={rnd.randrange(1, 6)}&sort=price"
        elif roll < 0.68:
            uri = f"/api/users/{uid}/cart"
        elif roll < 0.83:
            uri = f"/api/search?q={rnd.choice(['lamp', 'desk', 'chair', 'mug%20blue'])}"
        elif roll < 0.94:
            uri = f"/static/app.{rnd.choice(['css', 'js'])}?v=3"
        else:
            method, status, uri = "POST", "201", "/api/orders"
            body = orjson.dumps({"user": uid, "items": [rnd.randrange(1, 120)]}).decode()
        out.append(
            {
                "msec": f"{msec:.3f}",
                "request_id": f"{i:06x}{rnd.getrandbits(40):010x}",
                "remote_addr": f"10.{uid % 7}.{uid % 200}.{uid % 250 + 1}",
                "request_method": method,
                "request_uri": uri,
                "server_protocol": "HTTP/1.1",
                "host": "shop.example.com",
                "status": status,
                "body_bytes_sent": str(rnd.randrange(120, 2400)),
                "request_time": f"{rnd.randrange(1, 80) / 1000:.3f}",
                "request_body": body,
                "http_user_agent": rnd.choice(AGENTS),
            }
        )
    return out


def main() -> None:
    path = Path(__file__).with_name("sample_access.jsonl")
    lines = generate()
    path.write_bytes(b"".join(orjson.dumps(rec) + b"\n" for rec in lines))
    print(f"wrote {len(lines)} lines, {path.stat().st_size} bytes to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
