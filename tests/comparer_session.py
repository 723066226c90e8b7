"""A real comparer without a bus, feeding a divergence store: what one comparer process
writes. The store's readers judge by the comparer's tallies, so tests that want a store
with endpoints and verdicts fill it through this, not with bare ``store.add`` calls."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from shadowreplay.comparer.loop import Comparer
from shadowreplay.comparer.metrics import ComparerMetrics
from shadowreplay.comparer.store import DivergenceStore
from shadowreplay.comparer.verdict import verdict_rules
from shadowreplay.contract.config import ComparerConfig, StoreConfig
from shadowreplay.contract.record import ReplayResult


class ComparerSession:
    def __init__(
        self,
        path: Path | str,
        config: ComparerConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
        **store: Any,
    ) -> None:
        config = config or ComparerConfig()
        self.store = DivergenceStore(
            str(path), dataclasses.replace(StoreConfig(), **store), rules=verdict_rules(config), clock=clock
        )
        self.comparer = Comparer(config, None, ComparerMetrics(CollectorRegistry()), store=self.store)  # type: ignore[arg-type]
        self.store.set_tallies_source(lambda: self.comparer.tallies)

    def feed(self, *results: ReplayResult) -> None:
        """Compare each result, then flush the store (as the comparer does per batch)."""
        for r in results:
            self.comparer.handle_result(r)
        self.store.flush()

    def close(self) -> None:
        self.store.close()
