"""What `shadowreplay tail` prints when it stops."""

from __future__ import annotations

from shadowreplay.collector.tail import TailStats


def test_summary_says_what_happened_and_only_that() -> None:
    stats = TailStats(lines=5, chunks=2)
    assert stats.summary() == "5 lines shipped in 2 chunks, 0 rejected"
    stats.reject("bad_json", 2)
    stats.rotations, stats.truncations, stats.unreported_chunks = 1, 0, 1
    assert stats.summary() == (
        "5 lines shipped in 2 chunks, 2 rejected (bad_json: 2); followed 1 rotations, 0 truncations; "
        "1 chunks acknowledged without reject counts (their lines count as shipped, the collector may "
        "have skipped some)"
    )
